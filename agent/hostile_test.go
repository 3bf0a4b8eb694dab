package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// fakeAgent is a hostile target: it speaks the agent protocol far enough
// for the handshake, then answers each stream's request with serve. It
// is the client's side of the trust boundary under attack.
func fakeAgent(t *testing.T, serve func(op string, req *request, st *yamux.Stream)) *Client {
	t.Helper()
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	var wg sync.WaitGroup
	var srv *yamux.Session
	var smu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := io.WriteString(s2cW, Banner+" "+strconv.Itoa(ProtocolVersion)+"\n"); err != nil {
			return
		}
		s, err := yamux.Server(rwc{Reader: c2sR, Writer: s2cW, close: func() error { c2sR.Close(); return s2cW.Close() }}, YamuxConfig())
		if err != nil {
			return
		}
		smu.Lock()
		srv = s
		smu.Unlock()
		for {
			st, err := s.AcceptStream()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				typ, p, err := readFrame(st)
				if err != nil || typ != frameRequest {
					return
				}
				req, err := decodeRequest(p)
				if err != nil {
					return
				}
				if req.Op == "hello" {
					writeJSON(st, frameOK, Info{ProtocolVersion: ProtocolVersion, User: "u", Home: "/home/u"})
					return
				}
				serve(req.Op, req, st)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, s2cR, c2sW)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	c.SetReplyTimeout(300 * time.Millisecond)
	t.Cleanup(func() {
		c.Close()
		smu.Lock()
		if srv != nil {
			srv.Close()
		}
		smu.Unlock()
		c2sR.Close()
		s2cW.Close()
		wg.Wait()
	})
	return c
}

// openThen accepts an open and hands the file stream to fn.
func openThen(fn func(st *yamux.Stream)) func(string, *request, *yamux.Stream) {
	return func(op string, _ *request, st *yamux.Stream) {
		if op != "open" {
			writeJSON(st, frameError, &RemoteError{Op: op, Msg: "unsupported"})
			return
		}
		writeFrame(st, frameOK, nil)
		fn(st)
	}
}

// stall waits until the client gives up on the stream.
func stall(st *yamux.Stream) { io.Copy(io.Discard, st) }

func TestHostileReadReplyLongerThanAsked(t *testing.T) {
	c := fakeAgent(t, openThen(func(st *yamux.Stream) {
		typ, p, err := readFrame(st)
		if err != nil || typ != frameRead {
			return
		}
		r, _ := decodeReadReq(p)
		out := make([]byte, 5+int(r.N)+4096)
		binary.BigEndian.PutUint32(out, r.ID)
		writeFrame(st, frameData, out)
		stall(st)
	}))
	f, err := c.Open(ctxT(t), "x", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	n, err := f.ReadAt(buf, 0)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("ReadAt = %d, %v; want ErrProtocol", n, err)
	}
	if n > len(buf) {
		t.Fatalf("ReadAt reported %d bytes into a buffer of %d", n, len(buf))
	}
	if _, err := f.ReadAt(buf, 0); err == nil {
		t.Fatal("a file stream that broke the protocol is still used")
	}
	f.Close()
}

func TestHostileGarbageReplies(t *testing.T) {
	for name, reply := range map[string][]byte{
		"unknown frame type": {99, 0, 0, 0, 2, '{', '}'},
		"bad json":           {frameOK, 0, 0, 0, 3, '{', '"', 'x'},
		"huge length":        {frameOK, 0x7f, 0xff, 0xff, 0xff},
		"cut short":          {frameOK, 0, 0, 0, 100, '{'},
		"bad error frame":    {frameError, 0, 0, 0, 1, 0},
		"empty":              {},
	} {
		t.Run(name, func(t *testing.T) {
			c := fakeAgent(t, func(op string, _ *request, st *yamux.Stream) {
				st.Write(reply)
			})
			if _, err := c.Stat(ctxT(t), "x"); err == nil {
				t.Fatal("garbage reply accepted")
			} else {
				t.Log(err)
			}
		})
	}
}

func TestHostileGarbageOnFileStream(t *testing.T) {
	for name, frame := range map[string][]byte{
		"short data frame":   {frameData, 0, 0, 0, 2, 0, 1},
		"short io error":     {frameIOError, 0, 0, 0, 1, 0},
		"unexpected exit":    {frameExit, 0, 0, 0, 2, '{', '}'},
		"oversize frame":     {frameData, 0x01, 0, 0, 0},
		"garbage io error":   {frameIOError, 0, 0, 0, 6, 0, 0, 0, 1, '{', 'x'},
		"reply to no read":   append([]byte{frameData, 0, 0, 0, 6, 0, 0, 0x12, 0x34, 0}, 'x'),
		"control bad json":   {frameOK, 0, 0, 0, 1, '{'},
		"error bad json":     {frameError, 0, 0, 0, 1, '['},
		"nothing, then EOF":  nil,
		"eof flag, too long": append([]byte{frameData, 0, 0, 0, 5 + 200, 0, 0, 0, 1, 1}, make([]byte, 200)...),
	} {
		t.Run(name, func(t *testing.T) {
			c := fakeAgent(t, openThen(func(st *yamux.Stream) {
				readFrame(st) // the read request
				st.Write(frame)
				if name == "reply to no read" {
					stall(st)
				}
			}))
			f, err := c.Open(ctxT(t), "x", 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 100)
			n, err := f.ReadAt(buf, 0)
			if err == nil || n > len(buf) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			t.Log(err)
			f.Close()
		})
	}
}

func TestHostileStalledReplies(t *testing.T) {
	c := fakeAgent(t, func(op string, _ *request, st *yamux.Stream) {
		switch op {
		case "open":
			writeFrame(st, frameOK, nil)
		}
		stall(st)
	})
	ctx := ctxT(t)
	if _, err := c.Stat(ctx, "x"); !errors.Is(err, ErrReplyTimeout) {
		t.Fatalf("stalled stat: %v, want ErrReplyTimeout", err)
	}
	if _, err := c.Exec(ctx, ExecRequest{Command: "true"}); !errors.Is(err, ErrReplyTimeout) {
		t.Fatalf("stalled exec: %v, want ErrReplyTimeout", err)
	}
	if _, err := c.Batch(ctx, []PrepOp{{Op: "mkdir", Path: "d"}}, nil); !errors.Is(err, ErrReplyTimeout) {
		t.Fatalf("stalled batch: %v, want ErrReplyTimeout", err)
	}
	f, err := c.Open(ctx, "x", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrReplyTimeout) {
		t.Fatalf("stalled read: %v, want ErrReplyTimeout", err)
	}
	if err := f.Close(); !errors.Is(err, ErrReplyTimeout) {
		t.Fatalf("close after stall: %v, want ErrReplyTimeout", err)
	}
	f, err = c.Open(ctx, "y", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(); !errors.Is(err, ErrReplyTimeout) {
		t.Fatalf("stalled fstat: %v, want ErrReplyTimeout", err)
	}
	f.Close()
}

func TestHostileAgentStopsReading(t *testing.T) {
	block := make(chan struct{})
	c := fakeAgent(t, openThen(func(st *yamux.Stream) { <-block }))
	defer close(block)
	f, err := c.Open(ctxT(t), "x", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Far more than a yamux window: the writes must give up, not block.
	data := bytes.Repeat([]byte{1}, 8<<20)
	if _, err := f.WriteAt(data, 0); !errors.Is(err, ErrReplyTimeout) {
		t.Fatalf("write to a stalled agent: %v, want ErrReplyTimeout", err)
	}
	f.Close()
}

// TestHostileUnrequestedControlReplies: while a read waits, the agent
// sends OK frames nobody asked for. The stream fails at once instead of
// the reader blocking behind them, and the pending read returns an error.
func TestHostileUnrequestedControlReplies(t *testing.T) {
	c := fakeAgent(t, openThen(func(st *yamux.Stream) {
		if typ, _, err := readFrame(st); err != nil || typ != frameRead {
			return
		}
		for range 3 {
			writeFrame(st, frameOK, nil)
		}
		stall(st)
	}))
	f, err := c.Open(context.Background(), "/x", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.ReadAt(make([]byte, 10), 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read succeeded on a stream full of unrequested replies")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read hung behind unrequested control replies")
	}
	f.Close()
}
