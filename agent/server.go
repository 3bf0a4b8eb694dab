package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/gomux/gomux/internal/gogroup"
)

// Server is the agent's side: it runs processes and file operations for
// the streams gomux opens. The zero value is ready to use.
type Server struct {
	// Version is reported in Info; set at build time.
	Version string
	// Log receives diagnostic events (they go to stderr, which gomux
	// logs); nil discards them. log/slog keeps the package free of
	// third-party logging.
	Log *slog.Logger
	// Liveness, when set, is how often the agent pings gomux over the
	// session; a ping unanswered for four times that ends the session and
	// every process it started. A gomux that vanished without closing the
	// connection (a crash of its host, a black-holed network) then leaves
	// nothing running on the target beyond a minute or so, where sshd
	// alone would keep it until TCP gives up, hours later.
	Liveness time.Duration

	mu     sync.Mutex
	closed bool             // Serve is ending: children started now are killed at once
	groups map[int]struct{} // process groups of running children
	tasks  gogroup.Group    // a session's stream handlers and liveness watcher
}

// rwc joins a reader and a writer into the io.ReadWriteCloser yamux wants.
type rwc struct {
	io.Reader
	io.Writer
	close func() error
}

// Close closes whatever the owner said closes the connection.
func (c rwc) Close() error { return c.close() }

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Serve writes the banner to w, then serves yamux streams read from r until
// r ends or ctx is done. On return every process group it started that is
// still running has been killed and every goroutine it started has ended.
// Serve closes r and w if they are io.Closers.
func (s *Server) Serve(ctx context.Context, r io.Reader, w io.Writer) error {
	s.mu.Lock()
	s.closed = false
	s.mu.Unlock()
	if _, err := fmt.Fprintf(w, "%s %d\n", Banner, MinProtocolVersion); err != nil {
		return fmt.Errorf("agent: write banner: %w", err)
	}
	conn := rwc{Reader: r, Writer: newFrameWriter(w), close: func() error {
		if c, ok := r.(io.Closer); ok {
			c.Close()
		}
		if c, ok := w.(io.Closer); ok {
			c.Close()
		}
		return nil
	}}
	sess, err := yamux.Server(conn, YamuxConfig())
	if err != nil {
		return fmt.Errorf("agent: start yamux: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	// sctx ends with the session, releasing streams blocked on something
	// other than yamux (a dialed TCP connection).
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	info := s.info()
	s.log().Info("serving", "protocol", ProtocolVersion, "version", s.Version, "user", info.User)
	if s.Liveness > 0 {
		s.tasks.Go(func() { s.watchPeer(sess) })
	}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		s.tasks.Go(func() { s.serveStream(sctx, st, info) })
	}
	sess.Close()
	cancel()
	s.killAll()
	s.tasks.Wait()
	s.log().Info("session ended")
	return nil
}

// watchPeer pings gomux every Liveness and closes the session when a
// ping goes unanswered for four times that; Serve then kills what runs.
func (s *Server) watchPeer(sess *yamux.Session) {
	t := time.NewTicker(s.Liveness)
	defer t.Stop()
	for {
		select {
		case <-sess.CloseChan():
			return
		case <-t.C:
		}
		pong := make(chan error, 1)
		go func() {
			_, err := sess.Ping()
			pong <- err
		}()
		select {
		case err := <-pong:
			if err != nil {
				return // the session ended
			}
		case <-time.After(4 * s.Liveness):
			s.log().Warn("gomux stopped answering; ending the session", "after", 4*s.Liveness)
			sess.Close()
			<-pong // Ping returns once the session is closed
			return
		}
	}
}

// killAll kills every running group and makes track kill later ones, so
// a child started while the session ends cannot escape.
func (s *Server) killAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for pg := range s.groups {
		killGroup(pg)
	}
}

// track records a started (add) or reaped process group. It reports false
// when the session is ending; the group has then been killed.
func (s *Server) track(pg int, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups == nil {
		s.groups = map[int]struct{}{}
	}
	if !add {
		delete(s.groups, pg)
		return true
	}
	s.groups[pg] = struct{}{}
	if s.closed {
		killGroup(pg)
		return false
	}
	return true
}

// info describes the account, preferring what sshd put in the
// environment and falling back to the passwd database.
func (s *Server) info() Info {
	in := Info{ProtocolVersion: ProtocolVersion, AgentVersion: s.Version, UID: os.Getuid(), GID: os.Getgid(), Arch: runtime.GOARCH}
	in.Hostname, _ = os.Hostname()
	pw := lookupPasswd("/etc/passwd", in.UID)
	in.User = pw.name
	if in.User == "" {
		in.User = os.Getenv("USER")
	}
	in.Home = os.Getenv("HOME")
	if in.Home == "" {
		in.Home = pw.home
	}
	if in.Home == "" {
		in.Home = "/"
	}
	in.Shell = os.Getenv("SHELL")
	if in.Shell == "" {
		in.Shell = pw.shell
	}
	if in.Shell == "" {
		in.Shell = "/bin/sh"
	}
	in.RealHome = in.Home
	if r, err := filepath.EvalSymlinks(in.Home); err == nil {
		in.RealHome = r
	}
	if exe, err := os.Executable(); err == nil {
		in.Executable = exe
	}
	in.PID = os.Getpid()
	in.StartTime = procStartTime(in.PID)
	return in
}

type passwdEntry struct{ name, home, shell string }

// lookupPasswd reads the passwd file directly: the agent is built without
// cgo, and os/user does not report the login shell.
func lookupPasswd(file string, uid int) passwdEntry {
	b, err := os.ReadFile(file)
	if err != nil {
		return passwdEntry{}
	}
	want := strconv.Itoa(uid)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 7 && f[2] == want {
			return passwdEntry{name: f[0], home: f[5], shell: f[6]}
		}
	}
	return passwdEntry{}
}

// serveStream reads a stream's request and hands it to the handler for
// its op. Each handler owns the stream until it returns.
func (s *Server) serveStream(ctx context.Context, st net.Conn, info Info) {
	defer st.Close()
	typ, p, err := readFrame(st)
	if err != nil || typ != frameRequest {
		s.log().Warn("bad stream start", "err", err, "type", typ)
		return
	}
	req, err := decodeRequest(p)
	if err != nil {
		writeJSON(st, frameError, &RemoteError{Op: "request", Msg: err.Error()})
		return
	}
	fo := fileOps{home: info.Home}
	switch req.Op {
	case "hello":
		hello(st, req, info)
	case "batch":
		s.batch(ctx, st, req, info)
	case "exec":
		if req.Exec == nil {
			writeJSON(st, frameError, toRemoteError(req.Op, "", errors.New("exec without arguments")))
			return
		}
		s.exec(ctx, st, req.Exec, info)
	case "open":
		s.serveFile(st, fo.abs(req.Path), req.Flags, os.FileMode(req.Mode))
	case "dial":
		s.dial(ctx, st, req)
	default:
		v, path, err := fo.do(req)
		reply(st, req.Op, path, v, err)
	}
}

// reply answers a one-reply request: v as ok, or err as an error naming
// op and path.
func reply(st net.Conn, op, path string, v any, err error) {
	if err != nil {
		writeJSON(st, frameError, toRemoteError(op, path, err))
		return
	}
	writeJSON(st, frameOK, v)
}

// hello answers the handshake: the agent's Info, when the client speaks a
// protocol version this agent serves.
func hello(st net.Conn, req *request, info Info) {
	if req.Version < MinProtocolVersion || req.Version > ProtocolVersion {
		reply(st, req.Op, "", nil, fmt.Errorf("protocol version %d not supported, agent speaks %d to %d", req.Version, MinProtocolVersion, ProtocolVersion))
		return
	}
	reply(st, req.Op, "", info, nil)
}

// removeFile removes a non-directory, as SFTP REMOVE must.
func removeFile(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return &os.PathError{Op: "remove", Path: p, Err: errIsDir}
	}
	return os.Remove(p)
}

func removeDir(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &os.PathError{Op: "rmdir", Path: p, Err: errNotDir}
	}
	return os.Remove(p)
}

func (s *Server) dial(ctx context.Context, st net.Conn, req *request) {
	timeout := time.Duration(req.Timeout) * time.Millisecond
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	network := req.Network
	if !strings.HasPrefix(network, "tcp") {
		writeJSON(st, frameError, &RemoteError{Op: "dial", Msg: "only tcp is supported"})
		return
	}
	c, err := d.DialContext(dctx, network, req.Address)
	if err != nil {
		writeJSON(st, frameError, toRemoteError("dial", req.Address, err))
		return
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := writeJSON(st, frameOK, struct{}{}); err != nil {
		return
	}
	var toTarget gogroup.Group
	toTarget.Go(func() {
		if _, err := io.Copy(c, st); err != nil {
			c.Close() // the stream broke: nobody will read the rest
			return
		}
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	})
	// Peer EOF half-closes the stream; the TCP conn stays open for the
	// client's remaining bytes until the client closes too (bounded by
	// yamux's StreamCloseTimeout and by the session's end).
	io.Copy(st, c)
	st.Close()
	toTarget.Wait()
}

// serveFile serves one open file: pread, pwrite, fstat, close. Requests are
// served in order; the client pipelines them, so throughput does not pay a
// round trip per chunk. A failed write is reported at once (frameIOError
// with its id) and again, sticky, by the next fstat and by close.
func (s *Server) serveFile(st net.Conn, path string, flag int, perm os.FileMode) {
	f, err := os.OpenFile(path, flag, perm)
	if err != nil {
		writeJSON(st, frameError, toRemoteError("open", path, err))
		return
	}
	defer f.Close()
	if err := writeJSON(st, frameOK, struct{}{}); err != nil {
		return
	}
	of := &openFile{s: s, st: st, f: f, path: path, buf: make([]byte, 5+maxChunk)}
	for {
		typ, p, err := readFrame(st)
		if err != nil {
			return
		}
		var more bool
		switch typ {
		case frameRead:
			more = of.read(p)
		case frameWrite:
			more = of.write(p)
		case frameFstat:
			more = of.fstat()
		case frameClose:
			of.close()
			return
		default:
			s.log().Warn("unexpected frame on file stream", "type", typ)
			return
		}
		if !more {
			return
		}
	}
}

// openFile is the state of one file stream. Each handler serves one
// frame and reports whether the stream goes on.
type openFile struct {
	s      *Server
	st     net.Conn
	f      *os.File
	path   string
	buf    []byte // a data frame: id(4) eof(1) data
	sticky error  // the first failed write, reported until close
}

// read answers one read request with a data frame or an io-error.
func (o *openFile) read(p []byte) bool {
	rr, err := decodeReadReq(p)
	if err != nil {
		o.s.log().Warn("bad read request", "err", err)
		return false
	}
	n := min(int(rr.N), maxChunk)
	m, rerr := o.f.ReadAt(o.buf[5:5+n], rr.Off)
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		return writeFrame(o.st, frameIOError, ioErrorPayload(rr.ID, toRemoteError("read", o.path, rerr))) == nil
	}
	binary.BigEndian.PutUint32(o.buf[:4], rr.ID)
	o.buf[4] = 0
	if rerr != nil {
		o.buf[4] = 1
	}
	return writeFrame(o.st, frameData, o.buf[:5+m]) == nil
}

// write performs one write; only its failure is answered, and once a
// write has failed the later ones are dropped.
func (o *openFile) write(p []byte) bool {
	if len(p) < 12 {
		o.s.log().Warn("short write frame", "len", len(p))
		return false
	}
	id := binary.BigEndian.Uint32(p)
	off := int64(binary.BigEndian.Uint64(p[4:12]))
	if o.sticky != nil {
		return true
	}
	if off < 0 {
		o.sticky = syscall.EINVAL
	} else if _, err := o.f.WriteAt(p[12:], off); err != nil {
		o.sticky = err
	}
	if o.sticky != nil {
		return writeFrame(o.st, frameIOError, ioErrorPayload(id, toRemoteError("write", o.path, o.sticky))) == nil
	}
	return true
}

// fstat answers the file's metadata, or the sticky write error.
func (o *openFile) fstat() bool {
	if o.sticky != nil {
		writeJSON(o.st, frameError, toRemoteError("write", o.path, o.sticky))
		return true
	}
	fi, err := o.f.Stat()
	if err != nil {
		writeJSON(o.st, frameError, toRemoteError("fstat", o.path, err))
		return true
	}
	writeJSON(o.st, frameOK, infoFrom(filepath.Base(o.path), fi))
	return true
}

// close closes the file and answers ok, or the sticky write error, or
// the close's own.
func (o *openFile) close() {
	cerr := o.f.Close()
	if o.sticky != nil {
		cerr = o.sticky
	}
	if cerr != nil {
		writeJSON(o.st, frameError, toRemoteError("close", o.path, cerr))
	} else {
		writeJSON(o.st, frameOK, struct{}{})
	}
}
