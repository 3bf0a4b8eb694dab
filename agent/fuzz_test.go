package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
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
