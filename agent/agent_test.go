package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// harness is a real Server and a real Client joined by in-memory pipes.
type harness struct {
	c      *Client
	served chan error
}

// startAgent runs a Server whose output starts with noise, as a login
// shell's would, and connects a Client to it.
func startAgent(t testing.TB, noise string) *harness {
	t.Helper()
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	srv := &Server{Version: "test", Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	h := &harness{served: make(chan error, 1)}
	go func() {
		if noise != "" {
			s2cW.Write([]byte(noise))
		}
		h.served <- srv.Serve(context.Background(), c2sR, s2cW)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, s2cR, c2sW)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	h.c = c
	t.Cleanup(func() {
		c.Close()
		select {
		case err := <-h.served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after the client closed")
		}
	})
	return h
}

// testWriter sends the server's log lines to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// run executes req and collects everything.
func run(t *testing.T, c *Client, req ExecRequest, stdin string) (string, string, ExitStatus) {
	t.Helper()
	p, err := c.Exec(ctxT(t), req)
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	defer p.Close()
	go func() {
		io.WriteString(p.Stdin(), stdin)
		p.Stdin().Close()
	}()
	var out, errb bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(&out, p.Stdout()) }()
	go func() { defer wg.Done(); io.Copy(&errb, p.Stderr()) }()
	wg.Wait()
	st, err := p.Wait()
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return out.String(), errb.String(), st
}

func TestBannerNoiseAndInfo(t *testing.T) {
	h := startAgent(t, "Welcome to the host\r\nLast login: yesterday\nGOMUX-AGOMUX-AGENTX partial line without newline GOMUX-AGE")
	in := h.c.Info()
	if in.ProtocolVersion != ProtocolVersion || in.AgentVersion != "test" || in.UID != os.Getuid() || in.Home == "" || in.Shell == "" || in.Arch == "" {
		t.Fatalf("info %+v", in)
	}
}

func TestNoBanner(t *testing.T) {
	r := io.NopCloser(strings.NewReader(strings.Repeat("noise\n", 20000)))
	_, w := io.Pipe()
	_, err := NewClient(ctxT(t), r, w)
	if err == nil || !strings.Contains(err.Error(), "64 KiB") {
		t.Fatalf("err = %v", err)
	}
}

func TestBannerVersionMismatch(t *testing.T) {
	_, w := io.Pipe()
	_, err := NewClient(ctxT(t), strings.NewReader("motd\n"+Banner+" 99\n"), w)
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("err = %v, want ErrVersion", err)
	}
}

func TestHelloVersionMismatch(t *testing.T) {
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	srv := &Server{}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(context.Background(), c2sR, s2cW) }()
	br := bufio.NewReader(s2cR)
	if _, err := readBanner(br); err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(rwc{Reader: br, Writer: c2sW, close: c2sW.Close}, YamuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{sess: sess}
	err = c.call(ctxT(t), &request{Op: "hello", Version: ProtocolVersion + 1}, nil)
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Msg, "not supported") {
		t.Fatalf("err = %v", err)
	}
	sess.Close()
	<-done
}

func TestExecExitCodes(t *testing.T) {
	h := startAgent(t, "")
	for _, code := range []int{0, 1, 42} {
		out, errs, st := run(t, h.c, ExecRequest{Command: fmt.Sprintf("echo out; echo err >&2; exit %d", code)}, "")
		if out != "out\n" || errs != "err\n" || st != (ExitStatus{Code: code}) {
			t.Errorf("code %d: out %q err %q status %+v", code, out, errs, st)
		}
	}
}

func TestExecKilledBySignal(t *testing.T) {
	h := startAgent(t, "")
	for _, sig := range []string{"KILL", "TERM"} {
		_, _, st := run(t, h.c, ExecRequest{Command: "kill -" + sig + " $$"}, "")
		if st.Signal != sig {
			t.Errorf("status %+v, want signal %s", st, sig)
		}
	}
}

func TestExecStdinLarge(t *testing.T) {
	h := startAgent(t, "")
	size := 20 << 20
	if mb, err := strconv.Atoi(os.Getenv("GOMUX_TEST_STDIN_MB")); err == nil {
		size = mb << 20 // e.g. 100 for the full-size check
	}
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	p, err := h.c.Exec(ctxT(t), ExecRequest{Command: "cat"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		p.Stdin().Write(data)
		p.Stdin().Close()
	}()
	hash := sha256.New()
	n, err := io.Copy(hash, p.Stdout())
	if err != nil || n != int64(len(data)) {
		t.Fatalf("copied %d, %v", n, err)
	}
	io.Copy(io.Discard, p.Stderr())
	if st, err := p.Wait(); err != nil || st.Code != 0 {
		t.Fatalf("wait %+v %v", st, err)
	}
	if !bytes.Equal(hash.Sum(nil), want[:]) {
		t.Fatal("checksum mismatch")
	}
}

func TestExecEnvAndDir(t *testing.T) {
	t.Setenv("GOMUX_SECRET", "leak")
	dir := t.TempDir()
	h := startAgent(t, "")
	out, _, _ := run(t, h.c, ExecRequest{Command: `echo "$FOO ${GOMUX_SECRET:-unset} $(pwd)"`, Env: []string{"FOO=bar baz"}, Dir: dir}, "")
	if want := "bar baz unset " + dir + "\n"; out != want {
		t.Fatalf("out %q, want %q", out, want)
	}
}

func TestExecArgv(t *testing.T) {
	h := startAgent(t, "")
	out, _, st := run(t, h.c, ExecRequest{Argv: []string{"printf", "[%s]", "a b", "$HOME"}}, "")
	if out != "[a b][$HOME]" || st.Code != 0 {
		t.Fatalf("out %q status %+v", out, st)
	}
}

func TestExecStartError(t *testing.T) {
	h := startAgent(t, "")
	_, err := h.c.Exec(ctxT(t), ExecRequest{Argv: []string{"/nonexistent/binary"}})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want ErrNotExist", err)
	}
}

func TestExecPty(t *testing.T) {
	h := startAgent(t, "")
	// ECHO off through the encoded modes, so the output is just the script's.
	modes := []byte{53, 0, 0, 0, 0, 0}
	p, err := h.c.Exec(ctxT(t), ExecRequest{
		Command: `echo "T=$TERM"; test -n "$SSH_TTY" && echo hastty; stty size; read x; stty size; stty -a | grep -q -- '-echo ' && echo noecho`,
		Pty:     &Pty{Term: "xterm-test", Cols: 80, Rows: 24, Modes: modes},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	br := bufio.NewReader(p.Stdout())
	var got []string
	readLine := func() string {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v (so far %q)", err, got)
		}
		got = append(got, l)
		return l
	}
	for _, want := range []string{"T=xterm-test\r\n", "hastty\r\n", "24 80\r\n"} {
		if l := readLine(); l != want {
			t.Fatalf("line %q, want %q", l, want)
		}
	}
	if err := p.Resize(100, 40, 0, 0); err != nil {
		t.Fatal(err)
	}
	io.WriteString(p.Stdin(), "go\n")
	if l := readLine(); l != "40 100\r\n" {
		t.Fatalf("after resize %q", l)
	}
	if l := readLine(); l != "noecho\r\n" {
		t.Fatalf("modes: %q", l)
	}
	rest, _ := io.ReadAll(br)
	if n, _ := io.Copy(io.Discard, p.Stderr()); n != 0 {
		t.Fatalf("stderr with a pty carried %d bytes", n)
	}
	st, err := p.Wait()
	if err != nil || st.Code != 0 {
		t.Fatalf("wait %+v %v (rest %q)", st, err, rest)
	}
}

func TestExecPtyBackgroundJobDoesNotHang(t *testing.T) {
	h := startAgent(t, "")
	start := time.Now()
	out, _, st := run(t, h.c, ExecRequest{Command: "sleep 3 & echo hi", Pty: &Pty{Term: "vt100", Cols: 80, Rows: 24}}, "")
	if !strings.Contains(out, "hi") || st.Code != 0 {
		t.Fatalf("out %q status %+v", out, st)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v: waited for the background job", d)
	}
}

func TestExecSignalRequest(t *testing.T) {
	h := startAgent(t, "")
	p, err := h.c.Exec(ctxT(t), ExecRequest{Command: "echo ready; exec sleep 30"})
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(p.Stdout())
	if l, _ := br.ReadString('\n'); l != "ready\n" {
		t.Fatalf("got %q", l)
	}
	if err := p.Signal("NOSUCHSIG"); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal("TERM"); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, p.Stderr())
	io.Copy(io.Discard, br)
	st, err := p.Wait()
	if err != nil || st.Signal != "TERM" {
		t.Fatalf("status %+v %v", st, err)
	}
}

// startSleeper runs a command that prints its pid and sleeps.
func startSleeper(t *testing.T, c *Client) (*Process, int) {
	t.Helper()
	p, err := c.Exec(ctxT(t), ExecRequest{Command: "echo $$; exec sleep 30"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := bufio.NewReader(p.Stdout()).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(l))
	if err != nil {
		t.Fatal(err)
	}
	return p, pid
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pid %d still exists", pid)
}

func TestStreamCloseKillsChild(t *testing.T) {
	h := startAgent(t, "")
	p, pid := startSleeper(t, h.c)
	p.Close()
	waitGone(t, pid)
	// The agent may still report the kill; anything else is wrong.
	if st, err := p.Wait(); err == nil && st.Signal != "KILL" {
		t.Fatalf("Wait after Close: %+v", st)
	}
}

func TestSessionCloseKillsChildren(t *testing.T) {
	h := startAgent(t, "")
	p1, pid1 := startSleeper(t, h.c)
	_, pid2 := startSleeper(t, h.c)
	// An idle forwarded connection must not hold the agent up either.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	if _, err := h.c.Dial(ctxT(t), "tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	h.c.Close()
	select {
	case <-h.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	select {
	case <-h.served:
		h.served <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	waitGone(t, pid1)
	waitGone(t, pid2)
	if _, err := p1.Wait(); !errors.Is(err, ErrSessionLost) {
		t.Fatalf("Wait err = %v, want ErrSessionLost", err)
	}
}

func TestServeContextCancelKillsChildren(t *testing.T) {
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{}).Serve(ctx, c2sR, s2cW) }()
	c, err := NewClient(ctxT(t), s2cR, c2sW)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, pid := startSleeper(t, c)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	waitGone(t, pid)
	<-c.Done()
}

func TestFileOps(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	h := startAgent(t, "")
	c, ctx := h.c, ctxT(t)
	check := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if _, err := c.Stat(ctx, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat missing: %v", err)
	}
	check("mkdir", c.Mkdir(ctx, "d", 0o750))
	if err := c.Mkdir(ctx, "d", 0o750); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("mkdir again: %v", err)
	}
	fi, err := c.Stat(ctx, filepath.Join(home, "d"))
	check("stat dir", err)
	if !fi.IsDir() || fi.Mode().Perm() != 0o750 || fi.Name() != "d" || fi.Sys().(*FileInfo) != fi {
		t.Fatalf("dir info %v %v", fi.Mode(), fi.Name())
	}

	f, err := c.Open(ctx, "d/a.txt", os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o640)
	check("create", err)
	_, err = f.WriteAt([]byte("hello world"), 0)
	check("write", err)
	st, err := f.Stat()
	check("fstat", err)
	if st.Size() != 11 {
		t.Fatalf("size %d", st.Size())
	}
	check("close", f.Close())
	check("close twice", f.Close())
	if b, _ := os.ReadFile(filepath.Join(home, "d/a.txt")); string(b) != "hello world" {
		t.Fatalf("content %q", b)
	}

	check("symlink", c.Symlink(ctx, "a.txt", "d/l"))
	target, err := c.Readlink(ctx, "d/l")
	check("readlink", err)
	if target != "a.txt" {
		t.Fatalf("readlink %q", target)
	}
	lfi, err := c.Lstat(ctx, "d/l")
	check("lstat", err)
	if lfi.Mode()&fs.ModeSymlink == 0 || lfi.Link() != "a.txt" {
		t.Fatalf("lstat %v %q", lfi.Mode(), lfi.Link())
	}
	sfi, err := c.Stat(ctx, "d/l")
	check("stat link", err)
	if !sfi.Mode().IsRegular() || sfi.Size() != 11 || sfi.UID() != uint32(os.Getuid()) {
		t.Fatalf("stat through link %v", sfi.Mode())
	}
	rp, err := c.RealPath(ctx, "d/./x/../l")
	check("realpath", err)
	if want, _ := filepath.EvalSymlinks(filepath.Join(home, "d/a.txt")); rp != want {
		t.Fatalf("realpath %q, want %q", rp, want)
	}
	if rp, _ := c.RealPath(ctx, "nope/../nope2"); rp != filepath.Join(home, "nope2") {
		t.Fatalf("realpath of missing %q", rp)
	}
	if rp, _ := c.RealPath(ctx, "."); rp != home {
		if r2, _ := filepath.EvalSymlinks(home); rp != r2 {
			t.Fatalf("realpath . = %q", rp)
		}
	}

	check("link", c.Link(ctx, "d/a.txt", "d/hard"))
	os.WriteFile(filepath.Join(home, "d/b.txt"), []byte("b"), 0o600)
	if err := c.Rename(ctx, "d/b.txt", "d/a.txt", false); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("rename onto existing: %v", err)
	}
	check("rename overwrite", c.Rename(ctx, "d/b.txt", "d/a.txt", true))
	check("rename", c.Rename(ctx, "d/hard", "d/hard2", false))

	ents, err := c.ReadDir(ctx, "d")
	check("readdir", err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "a.txt,hard2,l" {
		t.Fatalf("readdir %v", names)
	}

	mode := fs.FileMode(0o600)
	size := int64(5)
	mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	check("setstat", c.Setstat(ctx, "d/hard2", SetAttr{Mode: &mode, Size: &size, Mtime: &mt, Atime: &mt, UID: &uid, GID: &gid}))
	fi, err = c.Stat(ctx, "d/hard2")
	check("stat after setstat", err)
	if fi.Mode().Perm() != 0o600 || fi.Size() != 5 || !fi.ModTime().Equal(mt) || !fi.AccessTime().Equal(mt) {
		t.Fatalf("after setstat: %v %d %v %v", fi.Mode(), fi.Size(), fi.ModTime(), fi.AccessTime())
	}

	if err := c.Remove(ctx, "d"); err == nil {
		t.Fatal("remove of a directory succeeded")
	}
	if err := c.Rmdir(ctx, "d/a.txt"); err == nil {
		t.Fatal("rmdir of a file succeeded")
	}
	if err := c.Rmdir(ctx, "d"); err == nil {
		t.Fatal("rmdir of a non-empty directory succeeded")
	}
	for _, n := range []string{"d/a.txt", "d/hard2", "d/l"} {
		check("remove "+n, c.Remove(ctx, n))
	}
	check("rmdir", c.Rmdir(ctx, "d"))
	if _, err := c.Lstat(ctx, "d"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after rmdir: %v", err)
	}
	if _, err := c.Open(ctx, "nodir/f", os.O_RDONLY, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("open missing: %v", err)
	}
	var re *RemoteError
	if _, err := c.Readlink(ctx, "missing"); !errors.As(err, &re) || re.Errno != syscall.ENOENT || re.Op != "readlink" {
		t.Fatalf("readlink missing: %#v", err)
	}
}

func TestFileConcurrentReadWrite(t *testing.T) {
	dir := t.TempDir()
	h := startAgent(t, "")
	ctx := ctxT(t)
	data := make([]byte, 6<<20+123)
	rand.Read(data)
	path := filepath.Join(dir, "big")
	f, err := h.c.Open(ctx, path, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 100 << 10
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := w * chunk; off < len(data); off += 8 * chunk {
				end := min(off+chunk, len(data))
				if n, err := f.WriteAt(data[off:end], int64(off)); err != nil || n != end-off {
					t.Errorf("WriteAt %d: %d %v", off, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	fi, err := f.Stat()
	if err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("stat %v %v", fi, err)
	}
	got := make([]byte, len(data))
	for r := 0; r < 8; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := r * chunk; off < len(data); off += 8 * chunk {
				end := min(off+chunk, len(data))
				n, err := f.ReadAt(got[off:end], int64(off))
				if n != end-off || (err != nil && !(err == io.EOF && end == len(data))) {
					t.Errorf("ReadAt %d: %d %v", off, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatal("checksum mismatch (concurrent)")
	}
	// One big read spans many pipelined chunks and ends in io.EOF.
	all := make([]byte, len(data)+10)
	n, err := f.ReadAt(all, 0)
	if n != len(data) || err != io.EOF || !bytes.Equal(all[:n], data) {
		t.Fatalf("big ReadAt: %d %v", n, err)
	}
	if n, err := f.ReadAt(make([]byte, 10), int64(len(data))); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt at end: %d %v", n, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, _ := os.ReadFile(path)
	if sha256.Sum256(onDisk) != sha256.Sum256(data) {
		t.Fatal("checksum mismatch on disk")
	}
	if h.c.NumStreams() != 0 {
		t.Fatalf("%d streams left open", h.c.NumStreams())
	}
}

func TestFileWriteErrorIsSticky(t *testing.T) {
	dir := t.TempDir()
	h := startAgent(t, "")
	path := filepath.Join(dir, "ro")
	os.WriteFile(path, []byte("x"), 0o644)
	f, err := h.c.Open(ctxT(t), path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("abc"), 0); err != nil {
		t.Fatalf("first WriteAt is asynchronous, got %v", err)
	}
	if _, err := f.Stat(); err == nil {
		t.Fatal("Stat did not report the failed write")
	}
	if _, err := f.WriteAt([]byte("abc"), 0); err == nil {
		t.Fatal("write error is not sticky")
	}
	var re *RemoteError
	if err := f.Close(); !errors.As(err, &re) || re.Errno != syscall.EBADF {
		t.Fatalf("Close: %v", err)
	}
}

func TestDial(t *testing.T) {
	h := startAgent(t, "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // until the agent half-closes
		c.Write(bytes.ToUpper(b))
	}()
	conn, err := h.c.Dial(ctxT(t), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "ping over the target")
	conn.Close() // half-close: the reply still arrives
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "PING OVER THE TARGET" {
		t.Fatalf("got %q %v", b, err)
	}

	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln2.Addr().String()
	ln2.Close()
	if _, err := h.c.Dial(ctxT(t), "tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial closed port: %v", err)
	}
	if _, err := h.c.Dial(ctxT(t), "udp", addr); err == nil {
		t.Fatal("udp dial succeeded")
	}
}

func TestContextCancelsCall(t *testing.T) {
	// An agent that never answers: the call must still return on ctx.
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	go func() {
		s2cW.Write([]byte(Banner + " 1\n"))
		sess, err := yamux.Server(rwc{Reader: c2sR, Writer: s2cW, close: s2cW.Close}, YamuxConfig())
		if err != nil {
			return
		}
		defer sess.Close()
		for {
			if _, err := sess.Accept(); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := NewClient(ctx, s2cR, c2sW)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

// TestRequestOnEndedSessionIsNotSent: a request on a session that has
// ended says so with ErrNotSent, which callers may retry elsewhere.
func TestRequestOnEndedSessionIsNotSent(t *testing.T) {
	h := startAgent(t, "")
	h.c.Close()
	<-h.c.Done()
	_, err := h.c.Batch(ctxT(t), nil, &ExecRequest{Command: "true"})
	if !errors.Is(err, ErrNotSent) {
		t.Fatalf("Batch on an ended session: %v, want ErrNotSent", err)
	}
}

// gate passes bytes on until it is shut, then swallows them: a network
// path that went silent without closing.
type gate struct {
	w    io.WriteCloser
	shut atomic.Bool
}

func (g *gate) Write(p []byte) (int, error) {
	if g.shut.Load() {
		return len(p), nil
	}
	return g.w.Write(p)
}

// TestLivenessEndsSessionWhenGomuxGoesSilent: when nothing comes back
// from gomux (its host died, the network black-holed), the agent ends the
// session after four unanswered ping intervals and kills what it runs.
func TestLivenessEndsSessionWhenGomuxGoesSilent(t *testing.T) {
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	g := &gate{w: s2cW}
	srv := &Server{Version: "test", Liveness: 100 * time.Millisecond}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), c2sR, g) }()
	c, err := NewClient(ctxT(t), s2cR, c2sW)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, pid := startSleeper(t, c)
	// Answered pings keep it alive well past four intervals.
	time.Sleep(600 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the session ended while gomux answered: %v", err)
	}
	g.shut.Store(true) // nothing the agent sends reaches gomux any more
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not end its session")
	}
	waitGone(t, pid)
	s2cW.Close()
}

// TestExecPtyNotControlling: a command on a pty is in a session whose
// controlling terminal it is, as sshd starts it; with NotControlling the
// session has none, and a process of it that starts a session of its own
// (a warm Python run) can take the terminal.
func TestExecPtyNotControlling(t *testing.T) {
	h := startAgent(t, "")
	probe := `ps -o tty= -p $$; (exec </dev/tty) 2>/dev/null && echo ctty || echo no-ctty`
	out, _, st := run(t, h.c, ExecRequest{Command: probe, Pty: &Pty{Term: "vt100", Cols: 80, Rows: 24}}, "")
	if st.Code != 0 || !strings.Contains(out, "pts/") || !strings.Contains(out, "\nctty") {
		t.Fatalf("pty: %q %+v", out, st)
	}
	out, _, st = run(t, h.c, ExecRequest{Command: probe, Pty: &Pty{Term: "vt100", Cols: 80, Rows: 24, NotControlling: true}}, "")
	if st.Code != 0 || strings.Contains(out, "pts/") || !strings.Contains(out, "no-ctty") {
		t.Fatalf("pty, not controlling: %q %+v", out, st)
	}
	take := `exec setsid -c sh -c '` + probe + `'`
	out, _, st = run(t, h.c, ExecRequest{Command: take, Pty: &Pty{Term: "vt100", Cols: 80, Rows: 24, NotControlling: true}}, "")
	if st.Code != 0 || !strings.Contains(out, "pts/") || !strings.Contains(out, "\nctty") {
		t.Fatalf("a new session takes the free terminal: %q %+v", out, st)
	}
}
