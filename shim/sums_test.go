package shim

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestSumsOnlyForTheSameBytes(t *testing.T) {
	want := func(b []byte) string {
		h := sha256.Sum256(b)
		return hex.EncodeToString(h[:])
	}
	s := NewSums(10 << 10)
	a := bytes.Repeat([]byte("a"), 4<<10)
	b := bytes.Clone(a)
	b[len(b)-1] = 'b' // same length, one byte apart
	for i, tc := range []struct {
		data []byte
	}{{a}, {b}, {bytes.Clone(a)}, {b}, {bytes.Repeat([]byte("c"), 4<<10)}, {a}, {nil}} {
		if got := s.Of(tc.data); got != want(tc.data) {
			t.Fatalf("case %d: sum %s, want %s", i, got, want(tc.data))
		}
		if s.size > s.max {
			t.Fatalf("case %d: holds %d bytes, max %d", i, s.size, s.max)
		}
	}
	// The third piece did not fit: it started over, so b is gone.
	if _, ok := s.m[string(b)]; ok || s.size != 8<<10 {
		t.Errorf("after starting over: b kept %v, %d bytes held", ok, s.size)
	}
	// Content larger than the memo is hashed, not kept.
	big := bytes.Repeat([]byte("d"), 11<<10)
	if got := s.Of(big); got != want(big) || s.size > s.max {
		t.Errorf("big content: %s, size %d", got, s.size)
	}
	var none *Sums
	if got := none.Of(a); got != want(a) {
		t.Errorf("nil Sums: %s", got)
	}
}

func TestSplitModuleSumsTheArchive(t *testing.T) {
	wrapper := []byte("#!/usr/bin/python\ndef _ansiballz_main():\n    ZIPDATA = \"\"\"UEsDBBQ...\"\"\"\n    ANSIBALLZ_PARAMS = '{\"a\": 1}'\n    run()\n")
	parts := ModuleParts(wrapper, NewSums(0))
	var n int
	for _, p := range parts {
		if isZipdata(p.Data) {
			n++
			h := sha256.Sum256(p.Data)
			if p.SHA256 != hex.EncodeToString(h[:]) {
				t.Errorf("archive sum %q", p.SHA256)
			}
		} else if p.SHA256 != "" {
			t.Errorf("piece %q has a sum; only the archive is memoized", p.Data)
		}
	}
	if n != 1 {
		t.Fatalf("%d archive pieces in %d parts", n, len(parts))
	}
}
