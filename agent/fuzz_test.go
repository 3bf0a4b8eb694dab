package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"testing"
)

func FuzzReadFrame(f *testing.F) {
	var b bytes.Buffer
	writeFrame(&b, frameStdout, []byte("hello"))
	f.Add(b.Bytes())
	f.Add([]byte{frameStdinEOF, 0, 0, 0, 0})
	f.Add([]byte{frameData, 0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{frameRead, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		for i := 0; i < 64; i++ {
			typ, p, err := readFrame(r)
			if err != nil {
				return
			}
			if len(p) > MaxFrame {
				t.Fatalf("payload of %d bytes", len(p))
			}
			// A frame that decodes must encode back to the same bytes.
			var out bytes.Buffer
			if err := writeFrame(&out, typ, p); err != nil {
				t.Fatal(err)
			}
			if n := binary.BigEndian.Uint32(out.Bytes()[1:5]); int(n) != len(p) {
				t.Fatalf("length %d for %d bytes", n, len(p))
			}
			switch typ {
			case frameRead:
				decodeReadReq(p)
			case frameIOError:
				decodeIOError(p)
			}
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	for _, r := range []request{
		{Op: "hello", Version: 1},
		{Op: "exec", Exec: &ExecRequest{Command: "echo hi", Env: []string{"A=b"}, Pty: &Pty{Term: "xterm", Cols: 80, Modes: []byte{53, 0, 0, 0, 1, 0}}}},
		{Op: "setstat", Path: "x"},
		{Op: "dial", Network: "tcp", Address: "localhost:22", Timeout: 1000},
	} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"op":"open","flag":-1,"mode":4294967295}`))
	f.Add([]byte(`{"op":"rename","path":"a","path2":"b","bool":true,"new_path":"c"}`))
	f.Add([]byte(`{"op":"symlink","path":"t","link":"l","path2":"m"}`))
	f.Add([]byte(`{"op":1}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := decodeRequest(in)
		if err != nil {
			return
		}
		if req.Op == "" {
			t.Fatal("request without op accepted")
		}
		if req.Exec != nil && req.Exec.Pty != nil {
			parseModes(req.Exec.Pty.Modes, func(byte, uint32) {})
		}
	})
}

func FuzzParseModes(f *testing.F) {
	f.Add([]byte{53, 0, 0, 0, 0, 128, 0, 0, 0x96, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		n := 0
		parseModes(in, func(op byte, v uint32) {
			if op == 0 || op >= 160 {
				t.Fatalf("opcode %d passed on", op)
			}
			n++
		})
		if n > len(in)/5 {
			t.Fatalf("%d modes from %d bytes", n, len(in))
		}
	})
}

// FuzzFileStream feeds a target's bytes to a file stream's reply loop
// with reads pending: it must never hand a read more than it asked for,
// and must answer every pending read once the stream ends.
func FuzzFileStream(f *testing.F) {
	var b bytes.Buffer
	data := make([]byte, 5+10)
	binary.BigEndian.PutUint32(data, 1)
	writeFrame(&b, frameData, data)
	writeFrame(&b, frameIOError, ioErrorPayload(2, &RemoteError{Op: "read", Msg: "x", Errno: 5}))
	writeFrame(&b, frameOK, []byte(`{"name":"x"}`))
	f.Add(b.Bytes())
	long := make([]byte, 5+4096)
	binary.BigEndian.PutUint32(long, 3)
	b.Reset()
	writeFrame(&b, frameData, long)
	f.Add(b.Bytes())
	f.Add([]byte{frameData, 0, 0, 0, 2, 0, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		fl := &File{path: "x", reads: map[uint32]chan readResult{}, sizes: map[uint32]int{},
			control: make(chan controlResult, 1), loop: make(chan struct{})}
		var chs []chan readResult
		for id := uint32(1); id <= 3; id++ {
			ch := make(chan readResult, 1)
			fl.reads[id], fl.sizes[id] = ch, 10
			chs = append(chs, ch)
		}
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			for r := range fl.control {
				var w wireInfo
				json.Unmarshal(r.b, &w)
			}
		}()
		fl.readLoop(bytes.NewReader(in))
		<-drained
		for i, ch := range chs {
			select {
			case r := <-ch:
				if len(r.data) > 10 {
					t.Fatalf("read %d got %d bytes for 10 asked", i+1, len(r.data))
				}
			default:
				t.Fatalf("read %d not answered after the stream ended", i+1)
			}
		}
	})
}

// FuzzResult decodes a target's reply to a request into each kind of
// answer the client expects.
func FuzzResult(f *testing.F) {
	var b bytes.Buffer
	writeJSON(&b, frameOK, Info{ProtocolVersion: 1, Home: "/h"})
	f.Add(b.Bytes())
	b.Reset()
	writeJSON(&b, frameError, &RemoteError{Op: "stat", Msg: "no", Errno: 2})
	f.Add(b.Bytes())
	b.Reset()
	writeJSON(&b, frameOK, []wireInfo{{Name: "a", Size: -1}})
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		var info Info
		result(bytes.NewReader(in), &info)
		var ws []wireInfo
		result(bytes.NewReader(in), &ws)
		for _, w := range ws {
			fi := &FileInfo{w}
			fi.Mode()
			fi.IsDir()
		}
		var s string
		result(bytes.NewReader(in), &s)
		var st ExitStatus
		result(bytes.NewReader(in), &st)
		if err := result(bytes.NewReader(in), nil); err != nil {
			var re *RemoteError
			if errors.As(err, &re) {
				_ = re.Error()
				_ = errors.Is(err, fs.ErrNotExist)
			}
		}
	})
}
