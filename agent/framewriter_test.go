package agent

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/hashicorp/yamux"
)

// recordingWriter keeps every write it is given, as separate slices.
type recordingWriter struct {
	mu     sync.Mutex
	w      io.Writer
	writes [][]byte
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, append([]byte(nil), p...))
	r.mu.Unlock()
	return r.w.Write(p)
}

func TestFrameWriterCoalescesDataFrames(t *testing.T) {
	var out bytes.Buffer
	rec := &recordingWriter{w: &out}
	f := newFrameWriter(rec)
	hdr := func(typ byte, length uint32) []byte {
		h := make([]byte, frameHeaderSize)
		h[1] = typ
		binary.BigEndian.PutUint32(h[4:], 7)
		binary.BigEndian.PutUint32(h[8:], length)
		return h
	}
	big := bytes.Repeat([]byte("x"), maxCoalesce+1)
	for _, p := range [][]byte{
		hdr(frameTypeData, 5), []byte("hello"), // one write
		hdr(1, 65536),                             // a window update: no body follows
		hdr(frameTypeData, 0),                     // a data frame without a body (flags only)
		hdr(frameTypeData, uint32(len(big))), big, // too big to copy: two writes
	} {
		if n, err := f.Write(p); err != nil || n != len(p) {
			t.Fatalf("Write(%d bytes) = %d, %v", len(p), n, err)
		}
	}
	want := []int{frameHeaderSize + 5, frameHeaderSize, frameHeaderSize, frameHeaderSize, len(big)}
	if len(rec.writes) != len(want) {
		t.Fatalf("%d writes, want %d", len(rec.writes), len(want))
	}
	for i, w := range rec.writes {
		if len(w) != want[i] {
			t.Errorf("write %d: %d bytes, want %d", i, len(w), want[i])
		}
	}
	if !bytes.Equal(rec.writes[0][frameHeaderSize:], []byte("hello")) {
		t.Errorf("first write %q does not end with the body", rec.writes[0])
	}
}

// TestFrameWriterUnderYamux runs a real yamux session through frameWriter
// on both ends: a small message costs one write, and every byte arrives.
func TestFrameWriterUnderYamux(t *testing.T) {
	a, b := net.Pipe()
	recA := &recordingWriter{w: a}
	ca := rwc{Reader: a, Writer: newFrameWriter(recA), close: a.Close}
	cb := rwc{Reader: b, Writer: newFrameWriter(b), close: b.Close}
	client, err := yamux.Client(ca, YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := yamux.Server(cb, YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	got := make(chan []byte, 1)
	go func() {
		s, err := server.Accept()
		if err != nil {
			got <- nil
			return
		}
		data, _ := io.ReadAll(s)
		got <- data
	}()
	st, err := client.Open()
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("0123456789"), 10000) // several frames, some large
	if _, err := st.Write([]byte("small")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(payload); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if data := <-got; !bytes.Equal(data, append([]byte("small"), payload...)) {
		t.Fatalf("received %d bytes, want %d", len(data), 5+len(payload))
	}
	recA.mu.Lock()
	defer recA.mu.Unlock()
	found := false
	for _, w := range recA.writes {
		if len(w) == frameHeaderSize+5 && string(w[frameHeaderSize:]) == "small" {
			found = true
		}
		if len(w) == frameHeaderSize && w[1] == frameTypeData && binary.BigEndian.Uint32(w[8:]) > 0 &&
			binary.BigEndian.Uint32(w[8:]) <= maxCoalesce {
			t.Errorf("a small data frame's header went alone: % x", w)
		}
	}
	if !found {
		t.Errorf("the 5-byte write did not go with its header in one write")
	}
}
