package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/pkg/sftp"
	"github.com/rs/zerolog"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/shim"
)

// Agent frame types, as PROTOCOL.md writes them down; the fake agent
// below speaks the wire format itself, as a hostile target would.
const (
	fRequest byte = 1
	fOK      byte = 2
	fError   byte = 3
	fRead    byte = 13
	fData    byte = 14
	fWrite   byte = 15
	fClose   byte = 17
)

func frame(w io.Writer, typ byte, p []byte) error {
	b := make([]byte, 5+len(p))
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], uint32(len(p)))
	copy(b[5:], p)
	_, err := w.Write(b)
	return err
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	p := make([]byte, binary.BigEndian.Uint32(h[1:]))
	_, err := io.ReadFull(r, p)
	return h[0], p, err
}

// hostileAgent serves the agent protocol's handshake, then hands each
// stream's request to serve. It returns a real agent.Client connected to
// it.
func hostileAgent(t testing.TB, serve func(op, path string, st *yamux.Stream)) *agent.Client {
	t.Helper()
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.WriteString(s2cW, agent.Banner+" 1\n")
		sess, err := yamux.Server(pipeConn{c2sR, s2cW}, agent.YamuxConfig())
		if err != nil {
			return
		}
		defer sess.Close()
		for {
			st, err := sess.AcceptStream()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				typ, p, err := readFrame(st)
				if err != nil || typ != fRequest {
					return
				}
				var req struct{ Op, Path string }
				json.Unmarshal(p, &req)
				if req.Op == "hello" {
					b, _ := json.Marshal(agent.Info{ProtocolVersion: agent.ProtocolVersion, User: "u", Home: "/home/u"})
					frame(st, fOK, b)
					return
				}
				serve(req.Op, req.Path, st)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, s2cR, c2sW)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReplyTimeout(300 * time.Millisecond)
	t.Cleanup(func() {
		c.Close()
		c2sR.Close()
		s2cW.Close()
		wg.Wait()
	})
	return c
}

type pipeConn struct {
	*io.PipeReader
	*io.PipeWriter
}

func (p pipeConn) Close() error {
	p.PipeReader.Close()
	return p.PipeWriter.Close()
}

// sftpOver serves the sftp front from a and returns a pkg/sftp client to
// it, and the front's log.
func sftpOver(t *testing.T, a *agent.Client, host *shim.Host, lim sftpLimits) (*sftp.Client, *bytes.Buffer) {
	t.Helper()
	cs, ss := net.Pipe()
	var logBuf syncBuf
	srv := newSFTPServer(context.Background(), a, host, ss, lim, zerolog.New(&logBuf))
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve()
	}()
	c, err := sftp.NewClientPipe(cs, cs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cs.Close()
		<-done
		srv.Close()
	})
	return c, &logBuf.b
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// okFiles is a well-behaved agent for opens, writes and closes, that
// answers stat with ENOENT.
func okFiles(op, _ string, st *yamux.Stream) {
	switch op {
	case "open":
		frame(st, fOK, nil)
		for {
			typ, _, err := readFrame(st)
			if err != nil {
				return
			}
			if typ == fClose {
				frame(st, fOK, nil)
				return
			}
		}
	case "stat", "lstat":
		frame(st, fError, []byte(`{"op":"stat","msg":"no such file or directory","errno":2}`))
	case "realpath":
		frame(st, fOK, []byte(`"/home/u"`))
	default:
		frame(st, fOK, nil)
	}
}

// planTempDir has host keep ~/.ansible/tmp/ansible-tmp-1-2-3 virtual, as
// in a real run: a first temp dir step in the base ran on the target and
// succeeded, so the next one is answered locally.
func planTempDir(t testing.TB, host *shim.Host) shim.Plan {
	t.Helper()
	first := host.Exec(strings.ReplaceAll(tempDirCmd, "ansible-tmp-1-2-3", "ansible-tmp-1-2-0"), shim.ExecOptions{})
	if first.Reply {
		t.Fatalf("first temp dir step answered locally: %+v", first)
	}
	first.Done(0)
	return host.Exec(tempDirCmd, shim.ExecOptions{}).Plan
}

const tempDirCmd = `/bin/sh -c '( umask 77 && mkdir -p "` + "` echo ~/.ansible/tmp `" + `"&& mkdir "` + "` echo ~/.ansible/tmp/ansible-tmp-1-2-3 `" + `" && echo ansible-tmp-1-2-3="` + "` echo ~/.ansible/tmp/ansible-tmp-1-2-3 `" + `" ) && sleep 0'`

// TestHostileSFTPOffsets writes at offsets pkg/sftp turns negative, into a
// shim temp dir (staged) and elsewhere (sent to the agent): each write
// fails with a status, and the session goes on serving.
func TestHostileSFTPOffsets(t *testing.T) {
	a := hostileAgent(t, okFiles)
	host := shim.NewHost("u", "/home/u", "")
	if p := planTempDir(t, host); !p.Reply {
		t.Fatalf("mkdir step not answered locally: %+v", p)
	}
	c, log := sftpOver(t, a, host, sftpLimits{handles: 8, budget: shim.NewBudget(64 << 20)})
	for _, p := range []string{"/home/u/.ansible/tmp/ansible-tmp-1-2-3/AnsiballZ_x.py", "/home/u/other"} {
		for _, off := range []int64{math.MinInt64, -1, math.MaxInt64 - 1} {
			f, err := c.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("hello"), off); err == nil {
				t.Fatalf("write to %s at offset %d accepted", p, uint64(off))
			} else if !strings.Contains(err.Error(), "out of range") {
				t.Fatalf("write at %d: %v", uint64(off), err)
			}
			f.Close()
		}
	}
	if _, err := c.Stat("/home/u/x"); err == nil || !strings.Contains(err.Error(), "not exist") {
		t.Fatalf("session no longer serving: %v", err)
	}
	if !strings.Contains(log.String(), EventSFTPBadRequest) {
		t.Errorf("no log line for the refused write:\n%s", log)
	}
}

// TestHostileSFTPReadReply has the agent answer a read with more bytes
// than asked, and garbage: the read fails, gomux does not panic.
func TestHostileSFTPReadReply(t *testing.T) {
	for name, reply := range map[string]func(id uint32, n uint32) (byte, []byte){
		"longer than asked": func(id, n uint32) (byte, []byte) {
			b := make([]byte, 5+n+1000)
			binary.BigEndian.PutUint32(b, id)
			return fData, b
		},
		"short data frame": func(id, n uint32) (byte, []byte) { return fData, []byte{1, 2} },
		"unknown frame":    func(id, n uint32) (byte, []byte) { return 99, nil },
		"write frame back": func(id, n uint32) (byte, []byte) { return fWrite, make([]byte, 20) },
	} {
		t.Run(name, func(t *testing.T) {
			a := hostileAgent(t, func(op, p string, st *yamux.Stream) {
				if op != "open" {
					okFiles(op, p, st)
					return
				}
				frame(st, fOK, nil)
				for {
					typ, b, err := readFrame(st)
					if err != nil {
						return
					}
					switch typ {
					case fRead:
						typ, p := reply(binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[12:]))
						frame(st, typ, p)
					case fClose:
						frame(st, fOK, nil)
						return
					}
				}
			})
			c, _ := sftpOver(t, a, nil, sftpLimits{handles: 8})
			f, err := c.Open("/home/u/f")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			if _, err := f.ReadAt(buf, 0); err == nil {
				t.Fatal("hostile read reply accepted")
			} else {
				t.Log(err)
			}
			f.Close()
			if _, err := c.Stat("/home/u/x"); err == nil || !strings.Contains(err.Error(), "not exist") {
				t.Fatalf("session no longer serving: %v", err)
			}
		})
	}
}

// TestHostileSFTPStalledAgent has the agent never answer: each request
// fails once the reply timeout passes.
func TestHostileSFTPStalledAgent(t *testing.T) {
	a := hostileAgent(t, func(op, p string, st *yamux.Stream) {
		if op == "open" {
			frame(st, fOK, nil)
		}
		io.Copy(io.Discard, st)
	})
	c, _ := sftpOver(t, a, nil, sftpLimits{handles: 8})
	if _, err := c.Stat("/home/u/x"); err == nil || !strings.Contains(err.Error(), "no reply") {
		t.Fatalf("stalled stat: %v", err)
	}
	f, err := c.Open("/home/u/f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 100), 0); err == nil || !strings.Contains(err.Error(), "no reply") {
		t.Fatalf("stalled read: %v", err)
	}
	f.Close()
}

// TestSFTPHandleCap opens files past the cap: the extra opens fail, and a
// closed handle frees its slot.
func TestSFTPHandleCap(t *testing.T) {
	a := hostileAgent(t, okFiles)
	c, log := sftpOver(t, a, nil, sftpLimits{handles: 3})
	var open []*sftp.File
	for i := 0; i < 3; i++ {
		f, err := c.Create("/home/u/f")
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		open = append(open, f)
	}
	if _, err := c.Create("/home/u/f"); err == nil || !strings.Contains(err.Error(), "max_sftp_handles") {
		t.Fatalf("open past the cap: %v", err)
	}
	open[0].Close()
	f, err := c.Create("/home/u/f")
	if err != nil {
		t.Fatalf("open after a close: %v", err)
	}
	f.Close()
	if !strings.Contains(log.String(), `"event":"`+EventLimit+`"`) {
		t.Errorf("no log line for the refused open:\n%s", log)
	}
}

// TestStagingCountsAgainstBudget checks an upload being staged holds
// budget while it arrives, spills to the target once the budget is spent,
// and gives it all back at close.
func TestStagingCountsAgainstBudget(t *testing.T) {
	var written sync.Map
	a := hostileAgent(t, func(op, p string, st *yamux.Stream) {
		if op != "open" {
			okFiles(op, p, st)
			return
		}
		frame(st, fOK, nil)
		for {
			typ, b, err := readFrame(st)
			if err != nil {
				return
			}
			switch typ {
			case fWrite:
				written.Store(p, len(b)-12)
			case fClose:
				frame(st, fOK, nil)
				return
			}
		}
	})
	budget := shim.NewBudget(1 << 20)
	host := shim.NewHostLimits("u", "/home/u", "", shim.HostLimits{Budget: budget})
	planTempDir(t, host)
	c, _ := sftpOver(t, a, host, sftpLimits{handles: 8, budget: budget})
	dir := "/home/u/.ansible/tmp/ansible-tmp-1-2-3/"
	f1, err := c.OpenFile(dir+"a", os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f1.Write(make([]byte, 600<<10)); err != nil {
		t.Fatal(err)
	}
	if u := budget.Used(); u < 600<<10 {
		t.Fatalf("an upload being staged holds %d bytes of the budget, want >= %d", u, 600<<10)
	}
	f2, err := c.OpenFile(dir+"b", os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f2.Write(make([]byte, 600<<10)); err != nil {
		t.Fatal(err)
	}
	if _, ok := written.Load(dir + "b"); !ok {
		t.Fatal("an upload beyond the budget was not sent to the target")
	}
	f2.Close()
	f1.Close()
	if u := budget.Used(); u != 600<<10 {
		t.Fatalf("budget holds %d after close, want the staged file's %d", u, 600<<10)
	}
	host.Flush()
	if u := budget.Used(); u != 0 {
		t.Fatalf("budget holds %d after flush, want 0", u)
	}
}
