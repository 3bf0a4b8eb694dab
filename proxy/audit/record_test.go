package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestRecorder(t *testing.T) {
	dir := t.TempDir()
	r, err := newRecorder(dir, Header{Width: 80, Height: 24, Env: map[string]string{"TERM": "xterm"},
		User: "alice", Target: "web1:22", Command: "top"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	// "é" is two bytes; split across two writes it must still arrive whole.
	r.Write([]byte("caf\xc3"))
	r.Write([]byte("\xa9 ok\n"))
	r.Resize(100, 30)
	r.Write([]byte("\xe2\x82"))
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(r.path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("recording mode: %v %v", fi, err)
	}
	f, _ := os.Open(r.path)
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	var h map[string]any
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil || h["version"] != float64(2) || h["width"] != float64(80) ||
		h["height"] != float64(24) || h["timestamp"] == nil || h["env"].(map[string]any)["TERM"] != "xterm" || h["gomux_user"] != "alice" {
		t.Fatalf("header %s: %v", sc.Bytes(), err)
	}
	var events [][]any
	for sc.Scan() {
		var e []any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || len(e) != 3 {
			t.Fatalf("event %s: %v", sc.Bytes(), err)
		}
		events = append(events, e)
	}
	want := [][2]string{{"o", "caf"}, {"o", "é ok\n"}, {"r", "100x30"}, {"o", "\ufffd\ufffd"}}
	if len(events) != len(want) {
		t.Fatalf("events %v", events)
	}
	for i, w := range want {
		if events[i][1] != w[0] || events[i][2] != w[1] {
			t.Errorf("event %d: %v, want %v", i, events[i], w)
		}
	}
}

func TestRecorderStopsAtLimit(t *testing.T) {
	dir := t.TempDir()
	const limit = 64 << 10
	r, err := newRecorder(dir, Header{Width: 80, Height: 24, Env: map[string]string{"TERM": "xterm"}, User: "alice", Target: "web1:22"}, limit)
	if err != nil {
		t.Fatal(err)
	}
	full := 0
	r.onFull = func() { full++ }
	chunk := make([]byte, 1000)
	for i := range chunk {
		chunk[i] = 'x'
	}
	for range 200 {
		if n, err := r.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v: a full recording must not fail the session", n, err)
		}
	}
	r.Resize(100, 30)
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v (the limit is not an error of the recording)", err)
	}
	if full != 1 {
		t.Errorf("onFull called %d times, want 1", full)
	}
	b, err := os.ReadFile(r.path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > limit {
		t.Errorf("recording is %d bytes, limit %d", len(b), limit)
	}
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	var last []any
	if err := json.Unmarshal(lines[len(lines)-1], &last); err != nil || len(last) != 3 || last[1] != "m" {
		t.Fatalf("last event %s: %v, want the limit marker", lines[len(lines)-1], err)
	}
	// Every event before the marker is whole output.
	for _, l := range lines[1 : len(lines)-1] {
		var e []any
		if err := json.Unmarshal(l, &e); err != nil || e[1] != "o" || e[2] != string(chunk) {
			t.Fatalf("event %s: %v", l, err)
		}
	}
	if len(lines) < 50 {
		t.Errorf("only %d events before the limit", len(lines)-2)
	}
}

// TestRecordingsStopTogetherAtTheQuota: recordings running at once stop
// at the directory's quota together, not each at what was left when it
// started.
func TestRecordingsStopTogetherAtTheQuota(t *testing.T) {
	dir := t.TempDir()
	var rs Recordings
	o := RecordOptions{Dir: dir, MaxMiB: 64, QuotaMiB: 1}
	var recs []*Recorder
	for i := range 3 {
		r, err := rs.Open(o, Header{User: fmt.Sprint("p", i), Target: "t"})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	chunk := strings.Repeat("x", 4096)
	for range 300 { // 3.6 MiB offered in all
		for _, r := range recs {
			r.Write([]byte(chunk))
		}
	}
	var total int64
	for _, r := range recs {
		r.Close()
		fi, err := os.Stat(r.path)
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	if total > 1<<20+3*(fullMarkerRoom+8192) {
		t.Errorf("three recordings hold %d bytes past a 1 MiB quota", total)
	}
	if _, err := rs.Open(o, Header{User: "late", Target: "t"}); !errors.Is(err, ErrRecordQuota) {
		t.Errorf("a recording after the quota was reached: %v", err)
	}
}
