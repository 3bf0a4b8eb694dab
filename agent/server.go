package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Server is the agent's side: it runs processes and file operations for
// the streams gomux opens. The zero value needs only Version set.
type Server struct {
	// Version is reported in Info; set at build time.
	Version string
	// Log receives diagnostic events; nil discards them.
	Log *slog.Logger

	mu     sync.Mutex
	groups map[int]struct{} // process groups of running children
	wg     sync.WaitGroup
}

type rwc struct {
	io.Reader
	io.Writer
	close func() error
}

func (c rwc) Close() error { return c.close() }

// Serve writes the banner to w, then serves yamux streams read from r until
// r ends or ctx is done. On return every process group it started that is
// still running has been killed.
func (s *Server) Serve(ctx context.Context, r io.Reader, w io.Writer) error {
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if _, err := fmt.Fprintf(w, "%s %d\n", Banner, ProtocolVersion); err != nil {
		return fmt.Errorf("write banner: %w", err)
	}
	conn := rwc{Reader: r, Writer: w, close: func() error {
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
		return fmt.Errorf("yamux: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	info := s.info()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			break
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveStream(ctx, st, info)
		}()
	}
	sess.Close()
	s.killAll()
	s.wg.Wait()
	return nil
}

func (s *Server) killAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for pg := range s.groups {
		killGroup(pg)
	}
}

func (s *Server) track(pg int, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.groups == nil {
		s.groups = map[int]struct{}{}
	}
	if add {
		s.groups[pg] = struct{}{}
	} else {
		delete(s.groups, pg)
	}
}

func (s *Server) info() Info {
	in := Info{ProtocolVersion: ProtocolVersion, AgentVersion: s.Version, UID: os.Getuid(), GID: os.Getgid(), Arch: runtime.GOARCH}
	in.Hostname, _ = os.Hostname()
	in.Home = os.Getenv("HOME")
	in.Shell = os.Getenv("SHELL")
	if u, err := user.Current(); err == nil {
		in.User = u.Username
		if in.Home == "" {
			in.Home = u.HomeDir
		}
	}
	if in.User == "" {
		in.User = os.Getenv("USER")
	}
	if in.Home == "" {
		in.Home = "/"
	}
	if in.Shell == "" {
		in.Shell = "/bin/sh"
	}
	return in
}

func (s *Server) serveStream(ctx context.Context, st net.Conn, info Info) {
	defer st.Close()
	typ, p, err := readFrame(st)
	if err != nil || typ != frameRequest {
		s.Log.Warn("bad stream start", "err", err, "type", typ)
		return
	}
	req, err := decodeRequest(p)
	if err != nil {
		writeJSON(st, frameError, &RemoteError{Op: "request", Msg: err.Error()})
		return
	}
	fo := fileOps{home: info.Home}
	reply := func(v any, err error, path string) {
		if err != nil {
			writeJSON(st, frameError, toRemoteError(req.Op, path, err))
			return
		}
		writeJSON(st, frameOK, v)
	}
	switch req.Op {
	case "hello":
		if req.Version != ProtocolVersion {
			reply(nil, fmt.Errorf("protocol version %d not supported, agent speaks %d", req.Version, ProtocolVersion), "")
			return
		}
		reply(info, nil, "")
	case "exec":
		if req.Exec == nil {
			reply(nil, errors.New("exec without arguments"), "")
			return
		}
		s.exec(ctx, st, req.Exec, info)
	case "stat", "lstat":
		fi, err := fo.stat(req.Path, req.Op == "stat")
		reply(fi, err, req.Path)
	case "readdir":
		ents, err := fo.readDir(req.Path)
		reply(ents, err, req.Path)
	case "mkdir":
		reply(struct{}{}, os.Mkdir(fo.abs(req.Path), os.FileMode(req.Mode)), req.Path)
	case "remove":
		reply(struct{}{}, removeFile(fo.abs(req.Path)), req.Path)
	case "rmdir":
		reply(struct{}{}, removeDir(fo.abs(req.Path)), req.Path)
	case "rename":
		reply(struct{}{}, fo.rename(req.Path, req.Path2, req.Bool), req.Path)
	case "symlink":
		reply(struct{}{}, os.Symlink(req.Path, fo.abs(req.Path2)), req.Path2)
	case "link":
		reply(struct{}{}, os.Link(fo.abs(req.Path), fo.abs(req.Path2)), req.Path2)
	case "readlink":
		t, err := os.Readlink(fo.abs(req.Path))
		reply(t, err, req.Path)
	case "realpath":
		rp, err := fo.realPath(req.Path)
		reply(rp, err, req.Path)
	case "setstat":
		reply(struct{}{}, fo.setstat(req.Path, req.Attr), req.Path)
	case "open":
		s.serveFile(st, fo.abs(req.Path), req.Flag, os.FileMode(req.Mode))
	case "dial":
		s.dial(ctx, st, req)
	default:
		reply(nil, fmt.Errorf("unknown op %q", req.Op), "")
	}
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
	if err := writeJSON(st, frameOK, struct{}{}); err != nil {
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(c, st)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	io.Copy(st, c)
	st.Close()
	c.Close()
	wg.Wait()
}

// serveFile serves one open file: pread, pwrite, fstat, close. Requests are
// served in order; the client pipelines them, so throughput does not pay a
// round trip per chunk.
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
	var sticky error // first write error, reported on the next fstat/close
	buf := make([]byte, 256<<10)
	for {
		typ, p, err := readFrame(st)
		if err != nil {
			return
		}
		switch typ {
		case frameRead:
			var rr readReq
			if json.Unmarshal(p, &rr) != nil {
				return
			}
			n := min(max(rr.N, 0), len(buf)-5)
			m, rerr := f.ReadAt(buf[5:5+n], rr.Off)
			binary.BigEndian.PutUint32(buf[:4], rr.ID)
			buf[4] = 0
			if errors.Is(rerr, io.EOF) {
				buf[4] = 1
			} else if rerr != nil {
				b, _ := json.Marshal(struct {
					ID  uint32       `json:"id"`
					Err *RemoteError `json:"err"`
				}{rr.ID, toRemoteError("read", path, rerr)})
				if writeFrame(st, frameError, b) != nil {
					return
				}
				continue
			}
			if writeFrame(st, frameData, buf[:5+m]) != nil {
				return
			}
		case frameWrite:
			if len(p) < 12 {
				return
			}
			off := int64(binary.BigEndian.Uint64(p[4:12]))
			if sticky == nil {
				if _, err := f.WriteAt(p[12:], off); err != nil {
					sticky = err
				}
			}
		case frameFstat:
			if sticky != nil {
				writeJSON(st, frameError, toRemoteError("write", path, sticky))
				continue
			}
			fi, err := f.Stat()
			if err != nil {
				writeJSON(st, frameError, toRemoteError("fstat", path, err))
				continue
			}
			info := infoFrom(fi.Name(), fi)
			writeJSON(st, frameOK, info)
		case frameClose:
			cerr := f.Close()
			if sticky != nil {
				cerr = sticky
			}
			if cerr != nil {
				writeJSON(st, frameError, toRemoteError("close", path, cerr))
			} else {
				writeJSON(st, frameOK, struct{}{})
			}
			return
		default:
			return
		}
	}
}
