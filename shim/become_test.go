package shim

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// chunked returns the pieces of s cut at each position in cuts, as a
// reader that hands them out one Read at a time.
type chunked struct {
	parts [][]byte
	err   error // returned after the last part (io.EOF when nil)
}

func chunks(s string, cuts ...int) *chunked {
	c := &chunked{}
	prev := 0
	for _, at := range cuts {
		c.parts = append(c.parts, []byte(s[prev:at]))
		prev = at
	}
	c.parts = append(c.parts, []byte(s[prev:]))
	return c
}

func (c *chunked) Read(p []byte) (int, error) {
	for len(c.parts) > 0 && len(c.parts[0]) == 0 {
		c.parts = c.parts[1:]
	}
	if len(c.parts) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		return 0, io.EOF
	}
	n := copy(p, c.parts[0])
	c.parts[0] = c.parts[0][n:]
	return n, nil
}

func TestMarkerReader(t *testing.T) {
	b := &Become{Key: key}
	marker := b.Marker()
	body := `{"changed": true, "rc": 0}` + "\n"
	for _, tc := range []struct {
		name   string
		in     string
		strip  bool
		want   string
		seen   bool
		cutsAt []int
	}{
		{name: "marker then output, stripped", in: marker + body, strip: true, want: body, seen: true},
		{name: "marker then output, watched", in: marker + body, strip: false, want: marker + body, seen: true},
		{name: "marker alone", in: marker, strip: true, want: "", seen: true},
		{name: "no output", in: "", strip: true, want: "", seen: false},
		{name: "other output", in: body, strip: true, want: body, seen: false},
		{name: "wrong key", in: "BECOME-SUCCESS-" + strings.Repeat("z", 32) + "\n" + body, strip: true,
			want: "BECOME-SUCCESS-" + strings.Repeat("z", 32) + "\n" + body, seen: false},
		{name: "marker without newline", in: strings.TrimSuffix(marker, "\n"), strip: true, want: strings.TrimSuffix(marker, "\n"), seen: false},
		{name: "marker with CR", in: strings.TrimSuffix(marker, "\n") + "\r\n" + body, strip: true,
			want: strings.TrimSuffix(marker, "\n") + "\r\n" + body, seen: false},
		{name: "output before marker", in: "warning\n" + marker + body, strip: true, want: "warning\n" + marker + body, seen: false},
		{name: "marker twice: only the first goes", in: marker + marker + body, strip: true, want: marker + body, seen: true},
	} {
		// Every way of cutting the first 60 bytes into two or three reads.
		cuts := [][]int{nil}
		for i := 1; i < min(len(tc.in), 60); i++ {
			cuts = append(cuts, []int{i})
			for j := i + 1; j < min(len(tc.in), 60); j += 7 {
				cuts = append(cuts, []int{i, j})
			}
		}
		for _, cut := range cuts {
			var got []bool
			m := &markerReader{R: chunks(tc.in, cut...), Marker: marker, Strip: tc.strip, Seen: func(s bool) { got = append(got, s) }}
			out, err := io.ReadAll(m)
			if err != nil {
				t.Fatalf("%s, cut %v: %v", tc.name, cut, err)
			}
			if string(out) != tc.want {
				t.Fatalf("%s, cut %v: got %q, want %q", tc.name, cut, out, tc.want)
			}
			if len(got) != 1 || got[0] != tc.seen {
				t.Fatalf("%s, cut %v: Seen calls %v, want one with %v", tc.name, cut, got, tc.seen)
			}
		}
		// One byte at a time, through the standard test reader.
		m := &markerReader{R: iotest.OneByteReader(strings.NewReader(tc.in)), Marker: marker, Strip: tc.strip}
		if err := iotest.TestReader(m, []byte(tc.want)); err != nil && tc.want != "" {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
}

// TestMarkerReaderError: a stream that breaks while the marker is being
// read passes on what it had and the error; one that breaks after it
// passes on the error after the marker is gone.
func TestMarkerReaderError(t *testing.T) {
	marker := (&Become{Key: key}).Marker()
	boom := errors.New("boom")
	c := chunks(marker[:10])
	c.err = boom
	var seen []bool
	m := &markerReader{R: c, Marker: marker, Strip: true, Seen: func(s bool) { seen = append(seen, s) }}
	out, err := io.ReadAll(m)
	if !errors.Is(err, boom) || string(out) != marker[:10] || len(seen) != 1 || seen[0] {
		t.Fatalf("broken in the marker: out %q err %v seen %v", out, err, seen)
	}
	c = chunks(marker + "partial")
	c.err = boom
	m = &markerReader{R: c, Marker: marker, Strip: true}
	out, err = io.ReadAll(m)
	if !errors.Is(err, boom) || string(out) != "partial" {
		t.Fatalf("broken after the marker: out %q err %v", out, err)
	}
	// Large output after the marker is read through, not held.
	big := bytes.Repeat([]byte("x"), 1<<20)
	m = &markerReader{R: strings.NewReader(marker + string(big)), Marker: marker, Strip: true}
	n, err := io.Copy(io.Discard, m)
	if err != nil || n != int64(len(big)) {
		t.Fatalf("large output: %d bytes, %v", n, err)
	}
}

// TestSpeculateBecome: only sudo -n without a prompt is ever sent ahead,
// only after the same wrapper worked, and a failure forgets it.
func TestSpeculateBecome(t *testing.T) {
	h := NewHost("u", "/home/u", "")
	parse := func(cmd string) *Become {
		r, ok := Parse(wrap(cmd)).(Run)
		if !ok || r.Become == nil {
			t.Fatalf("not a become run: %s", cmd)
		}
		return r.Become
	}
	root := parse("sudo -H -S -n  -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'")
	root2 := parse("sudo -H -S -n  -u root /bin/sh -c 'echo BECOME-SUCCESS-" + strings.Repeat("q", 32) + " ; /usr/bin/python3'")
	other := parse("sudo -H -S -n  -u other /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'")
	grouped := parse("sudo -HSn -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'")
	noN := parse("sudo -H -S -u root /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'")
	userN := parse("sudo -H -S -u -n /bin/sh -c 'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'")
	prompt := parse(`sudo -H -S -p "[sudo via ansible, key=` + key + `] password:" -u root /bin/sh -c 'echo BECOME-SUCCESS-` + key + ` ; /usr/bin/python3'`)
	su := parse("su  root -c '/bin/sh -c '\"'\"'echo BECOME-SUCCESS-" + key + " ; /usr/bin/python3'\"'\"''")

	if h.speculateBecome(root) {
		t.Fatal("sent ahead before it was seen to work")
	}
	h.observeBecome(root, true)
	if !h.speculateBecome(root) || !h.speculateBecome(root2) {
		t.Fatal("not sent ahead after it worked (the key is random per task)")
	}
	if h.speculateBecome(other) || h.speculateBecome(grouped) {
		t.Fatal("another become user or other flags must be learned on their own")
	}
	h.observeBecome(grouped, true)
	if !grouped.NonInteractive || !h.speculateBecome(grouped) {
		t.Fatal("-HSn is non-interactive")
	}
	for name, b := range map[string]*Become{"no -n": noN, "-u -n": userN, "prompt": prompt, "su": su} {
		h.observeBecome(b, true)
		if h.speculateBecome(b) {
			t.Fatalf("%s: sent ahead, but it may read a password from stdin", name)
		}
	}
	h.observeBecome(root, false)
	if h.speculateBecome(root2) {
		t.Fatal("still sent ahead after it failed")
	}
	if NewHost("u", "/home/u", "").speculateBecome(root) {
		t.Fatal("learned state shared between hosts")
	}
}
