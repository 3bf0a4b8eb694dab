package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/proxy/audit"
)

// The admin socket answers `gomux sessions` and `gomux kill`: who is on
// now, and ending it. It is a unix socket in the state directory (or
// admin_socket), mode 0600, so only gomux's own user and root reach it,
// and each caller's credentials are checked again from the kernel
// (SO_PEERCRED). The protocol is one JSON request line and one JSON
// response line, each carrying the protocol version.

// AdminVersion is the admin socket protocol's version: a request or
// response of another version is refused, so an older client and a newer
// gomux (or the reverse) fail plainly instead of misreading each other.
const AdminVersion = 1

// AdminRequest is one request on the admin socket.
type AdminRequest struct {
	// V is AdminVersion.
	V int `json:"v"`
	// Op is "sessions" (list the open front connections) or "kill".
	Op string `json:"op"`
	// ID (kill) names one connection, as sessions lists it.
	ID string `json:"id,omitempty"`
	// Person (kill) names a person: all of their connections close.
	Person string `json:"person,omitempty"`
}

// AdminResponse is the admin socket's answer.
type AdminResponse struct {
	// V is AdminVersion.
	V int `json:"v"`
	// Error says why the request failed; empty on success.
	Error string `json:"error,omitempty"`
	// Connections are the open front connections (sessions), or the
	// ones just closed (kill), as they were when closed.
	Connections []ConnInfo `json:"connections"`
}

// ConnInfo is one open front connection, as gomux sessions shows it.
type ConnInfo struct {
	// ID is short and stays the same for the connection's life: what
	// gomux kill takes.
	ID string `json:"id"`
	// Person is who logged in: the front login name.
	Person string `json:"person"`
	// Source is the client's address (the real one behind a PROXY
	// protocol balancer).
	Source string `json:"source"`
	// Since is when the login was accepted.
	Since time.Time `json:"since"`
	// Holds is what the connection holds open through gomux.
	Holds []HeldInfo `json:"holds"`
}

// HeldInfo is one thing a front connection holds open: an accelerated
// inner session, a splice, or a forward inside a session.
type HeldInfo struct {
	// What is "inner session", "splice" or "forward".
	What string `json:"what"`
	// Via is where it was asked for: "front", or "inner" (a hop inside
	// an accelerated session).
	Via string `json:"via"`
	// Target is the destination as host:port.
	Target string `json:"target"`
	// RemoteUser is the login on the target ("" where there is none).
	RemoteUser string `json:"remote_user"`
	// Mode is the rule's mode: accelerate, splice or forward.
	Mode string `json:"mode"`
	// Running are the session channels running in it now: the redacted
	// command, "shell" or "sftp".
	Running []string `json:"running"`
	// BytesIn and BytesOut are the bytes from and to the client so far.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
}

// running is one session channel running in an inner session.
type running struct{ what string }

// run records what a session channel runs until the returned function
// drops it. A nil held (a session made without a front hop) records
// nothing.
func (h *held) run(what string) (drop func()) {
	if h == nil {
		return func() {}
	}
	r := &running{what: what}
	h.runsMu.Lock()
	if h.runs == nil {
		h.runs = map[*running]struct{}{}
	}
	h.runs[r] = struct{}{}
	h.runsMu.Unlock()
	return func() {
		h.runsMu.Lock()
		delete(h.runs, r)
		h.runsMu.Unlock()
	}
}

// runName is what gomux sessions shows for a session channel of kind
// (exec, shell, subsystem) running cmd: never a NAME=value's value.
func runName(kind, cmd string) string {
	switch kind {
	case "exec":
		return audit.RedactCommand(cmd)
	case "subsystem":
		return cmd
	}
	return kind
}

// info is h as gomux sessions shows it.
func (h *held) info() HeldInfo {
	h.runsMu.Lock()
	runs := make([]string, 0, len(h.runs))
	for r := range h.runs {
		runs = append(runs, r.what)
	}
	h.runsMu.Unlock()
	slices.Sort(runs)
	return HeldInfo{What: h.what, Via: h.via, Target: h.d.HostPort(), RemoteUser: h.user(), Mode: string(h.d.Mode),
		Running: runs, BytesIn: h.in.Load(), BytesOut: h.out.Load()}
}

// countedChannel counts the bytes of a held channel for gomux sessions:
// in is what the client sent, out what it was sent.
type countedChannel struct {
	gossh.Channel
	h *held
}

func (c countedChannel) Read(p []byte) (int, error) {
	n, err := c.Channel.Read(p)
	c.h.in.Add(int64(n))
	return n, err
}

func (c countedChannel) Write(p []byte) (int, error) {
	n, err := c.Channel.Write(p)
	c.h.out.Add(int64(n))
	return n, err
}

// liveConn is one logged-in front connection, from its login until its
// context ends.
type liveConn struct {
	id     string
	person string
	source string
	since  time.Time
	hs     *holdings
	// close ends the front connection, and with it every channel on it.
	close func()
}

func (c *liveConn) info() ConnInfo {
	ci := ConnInfo{ID: c.id, Person: c.person, Source: c.source, Since: c.since, Holds: []HeldInfo{}}
	for _, h := range c.hs.list() {
		ci.Holds = append(ci.Holds, h.info())
	}
	slices.SortFunc(ci.Holds, func(a, b HeldInfo) int {
		return strings.Compare(a.Target+a.What+a.Via, b.Target+b.What+b.Via)
	})
	return ci
}

// liveConns is the server's registry of logged-in front connections,
// for gomux sessions and gomux kill. The zero value is empty.
type liveConns struct {
	mu sync.Mutex
	m  map[string]*liveConn
}

// add registers c under a new id until the returned function drops it.
func (lc *liveConns) add(c *liveConn) (drop func()) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if lc.m == nil {
		lc.m = map[string]*liveConn{}
	}
	for {
		c.id = newConnID()
		if _, taken := lc.m[c.id]; !taken {
			break
		}
	}
	lc.m[c.id] = c
	return func() {
		lc.mu.Lock()
		delete(lc.m, c.id)
		lc.mu.Unlock()
	}
}

// newConnID is 8 hex digits, random so that an id from before a restart
// names no connection of this process.
func newConnID() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// matching returns the connections with id, or of person, oldest first;
// with both empty, all of them.
func (lc *liveConns) matching(id, person string) []*liveConn {
	lc.mu.Lock()
	var out []*liveConn
	for _, c := range lc.m {
		if (id == "" || c.id == id) && (person == "" || c.person == person) {
			out = append(out, c)
		}
	}
	lc.mu.Unlock()
	slices.SortFunc(out, func(a, b *liveConn) int {
		if d := a.since.Compare(b.since); d != 0 {
			return d
		}
		return strings.Compare(a.id, b.id)
	})
	return out
}

// snapshot lists the open front connections, oldest first.
func (lc *liveConns) snapshot() []ConnInfo {
	out := []ConnInfo{}
	for _, c := range lc.matching("", "") {
		out = append(out, c.info())
	}
	return out
}

// kill closes the connection with id, or every connection of person
// (exactly one of them is set), with what each held open, and returns
// them as they were just before.
func (lc *liveConns) kill(id, person string) []ConnInfo {
	out := []ConnInfo{}
	for _, c := range lc.matching(id, person) {
		out = append(out, c.info())
		c.close()
		for _, h := range c.hs.list() {
			h.cut()
		}
	}
	return out
}

// register makes a logged-in front connection visible to gomux sessions
// and gomux kill until ctx (the connection's) ends.
func (s *Server) register(ctx context.Context, id *Identity, hs *holdings, conn net.Conn) {
	drop := s.conns.add(&liveConn{person: id.User, source: id.Source.String(), since: time.Now(), hs: hs,
		close: func() {
			if conn != nil {
				conn.Close()
			}
		}})
	context.AfterFunc(ctx, drop)
}

// AdminListener is the bound admin socket.
type AdminListener struct {
	ln   *net.UnixListener
	path string
	// file is the socket as bound: at close it is removed only if it is
	// still this one, not one a newer gomux bound in its place.
	file os.FileInfo
}

// Path is where the socket is.
func (al *AdminListener) Path() string { return al.path }

// Close stops accepting and removes the socket file.
func (al *AdminListener) Close() error {
	err := al.ln.Close()
	if fi, serr := os.Lstat(al.path); serr == nil && os.SameFile(fi, al.file) {
		os.Remove(al.path)
	}
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// ListenAdmin binds the admin socket (Config.AdminSocketPath), mode 0600.
// A socket left there by a gomux that crashed is replaced; one a running
// gomux still answers on is taken over, with a warning: the newest gomux
// on a state directory (a restart while the old one drains) is the one
// administered. Anything else at the path is an error.
func (s *Server) ListenAdmin(ctx context.Context) (*AdminListener, error) {
	path := s.start.AdminSocketPath()
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("admin_socket %s: %d bytes, longer than a unix socket path may be (%d): set a shorter admin_socket", path, len(path), maxSocketPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("admin_socket %s: exists and is not a socket", path)
		}
		d := net.Dialer{Timeout: time.Second}
		if c, err := d.DialContext(ctx, "unix", path); err == nil {
			c.Close()
			s.log.Warn().Str("event", EventAdmin).Str("admin_socket", path).
				Msg("another gomux answers on the admin socket: taking it over (give each gomux its own admin_socket)")
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin_socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin_socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fi, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("admin_socket: %w", err)
	}
	s.log.Info().Str("event", EventListen).Str("admin_socket", path).Msg("admin socket listening (gomux sessions, gomux kill)")
	return &AdminListener{ln: ln, path: path, file: fi}, nil
}

// maxSocketPath is the longest unix socket path Linux binds (sun_path,
// 108 bytes with its NUL).
const maxSocketPath = 107

// ServeAdmin answers on the admin socket until ctx ends, then closes it
// and removes the file. It waits for the requests it started.
func (s *Server) ServeAdmin(ctx context.Context, al *AdminListener) {
	var conns gogroup.Group
	stop := context.AfterFunc(ctx, func() { al.ln.Close() })
	defer stop()
	for {
		c, err := al.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				break
			}
			// Out of file descriptors, say: try again shortly.
			s.log.Warn().Str("event", EventAdmin).Err(err).Msg("admin socket accept failed")
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
			continue
		}
		if !conns.Go(func() { s.serveAdminConn(ctx, c) }) {
			c.Close()
		}
	}
	conns.CloseWait()
	al.Close()
}

// adminTimeout bounds one admin request, so a caller that stops reading
// or writing cannot hold its goroutine.
const adminTimeout = 10 * time.Second

// maxAdminRequest is the longest request line accepted.
const maxAdminRequest = 64 << 10

// serveAdminConn answers one request from a caller that is gomux's own
// user or root.
func (s *Server) serveAdminConn(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(time.Now().Add(adminTimeout))
	cred, err := peerCred(c)
	if err == nil {
		err = allowedCaller(cred.UID, uint32(os.Geteuid()))
	}
	if err != nil {
		s.log.Warn().Str("event", EventAdmin).Err(err).Msg("admin socket caller refused")
		writeAdmin(c, AdminResponse{Error: "not allowed"})
		return
	}
	line, err := bufio.NewReader(io.LimitReader(c, maxAdminRequest)).ReadBytes('\n')
	if errors.Is(err, io.EOF) && len(line) == 0 {
		return // a probe: a newer gomux checking the socket is live
	}
	if err != nil {
		s.log.Warn().Str("event", EventAdmin).Uint32("by_uid", cred.UID).Err(err).Msg("admin request unreadable")
		return
	}
	writeAdmin(c, s.adminAnswer(line, cred))
}

// allowedCaller admits gomux's own user (self) and root to the admin
// socket. The socket's mode says the same; this holds even when the file
// was reachable for a moment between bind and chmod.
func allowedCaller(uid, self uint32) error {
	if uid != self && uid != 0 {
		return fmt.Errorf("uid %d is neither gomux's user (uid %d) nor root", uid, self)
	}
	return nil
}

// adminAnswer decodes and carries out one request.
func (s *Server) adminAnswer(line []byte, cred peer) AdminResponse {
	var req AdminRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return AdminResponse{Error: "malformed request: " + err.Error()}
	}
	if req.V != AdminVersion {
		return AdminResponse{Error: fmt.Sprintf("protocol version %d not supported: this gomux speaks %d", req.V, AdminVersion)}
	}
	switch req.Op {
	case "sessions":
		return AdminResponse{Connections: s.conns.snapshot()}
	case "kill":
		if (req.ID == "") == (req.Person == "") {
			return AdminResponse{Error: "kill: name a connection id or a person, not both"}
		}
		closed := s.conns.kill(req.ID, req.Person)
		for _, ci := range closed {
			s.logKill(ci, cred)
		}
		if len(closed) == 0 {
			return AdminResponse{Error: "no open connection matches", Connections: closed}
		}
		return AdminResponse{Connections: closed}
	}
	return AdminResponse{Error: fmt.Sprintf("unknown op %q", req.Op)}
}

// logKill is the audit line of one connection gomux kill closed.
func (s *Server) logKill(ci ConnInfo, cred peer) {
	closed := make([]string, 0, len(ci.Holds))
	for _, h := range ci.Holds {
		what := h.What + " " + h.Target
		if h.RemoteUser != "" {
			what += " as " + h.RemoteUser
		}
		closed = append(closed, what)
	}
	s.log.Warn().Str("event", EventAdminKill).Str("user", ci.Person).Str("source", ci.Source).Str("id", ci.ID).
		Time("since", ci.Since).Strs("closed", closed).Uint32("by_uid", cred.UID).Int32("by_pid", cred.PID).
		Str("by_user", cred.userName()).Msg("connection closed by gomux kill")
}

// writeAdmin writes one response line.
func writeAdmin(w io.Writer, resp AdminResponse) {
	resp.V = AdminVersion
	if resp.Connections == nil {
		resp.Connections = []ConnInfo{}
	}
	b, _ := json.Marshal(resp)
	w.Write(append(b, '\n'))
}

// peer is an admin socket caller, as the kernel saw it connect.
type peer struct {
	UID uint32
	PID int32
}

// userName is the caller's user name, or its uid where it has none.
func (p peer) userName() string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(p.UID), 10)); err == nil {
		return u.Username
	}
	return strconv.FormatUint(uint64(p.UID), 10)
}

// AdminCall sends req to the admin socket at path and returns the answer;
// an answer with an error is returned with it.
func AdminCall(ctx context.Context, path string, req AdminRequest) (*AdminResponse, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	req.V = AdminVersion
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	var resp AdminResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("admin socket: no answer: %w", err)
	}
	if resp.V != AdminVersion {
		return nil, fmt.Errorf("admin socket: gomux answered protocol version %d, this client speaks %d", resp.V, AdminVersion)
	}
	if resp.Error != "" {
		return &resp, fmt.Errorf("gomux: %s", resp.Error)
	}
	return &resp, nil
}
