package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"github.com/gomux/gomux/internal/gogroup"
)

// syncBuffer is a log sink the admin goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) lines() []map[string]any {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.b.String()), "\n") {
		m := map[string]any{}
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// adminServer is a Server answering on its admin socket until the test
// ends; the log goes to the returned buffer.
func adminServer(t *testing.T) (*Server, string, *syncBuffer) {
	t.Helper()
	s, _ := opsServer(t, "targets:\n  - hosts: [a.example.com]\n    remote_users: [deploy]\n")
	logs := &syncBuffer{}
	s.log = zerolog.New(logs)
	if err := os.MkdirAll(s.start.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	al, err := s.ListenAdmin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var g gogroup.Group
	g.Go(func() { s.ServeAdmin(ctx, al) })
	t.Cleanup(func() { cancel(); g.Wait() })
	return s, al.Path(), logs
}

// fakeConn registers a logged-in connection for person holding one
// accelerated inner session to target, running cmd; closed counts the
// closes of the connection and the cuts of what it holds.
func fakeConn(s *Server, person, source, target, cmd string, closed *atomic.Int32) {
	hs := &holdings{m: map[*held]struct{}{}}
	h := &held{what: "inner session", via: "front", d: Decision{Mode: ModeAccelerate, Host: target, Port: 22},
		cut: func() { closed.Add(1) }}
	h.setRemoteUser("deploy")
	h.run(runName("exec", cmd))
	h.in.Add(100)
	h.out.Add(2048)
	hs.add(h)
	s.conns.add(&liveConn{person: person, source: source, hs: hs, close: func() { closed.Add(1) }})
}

// TestAdminSessionsListsWhoHoldsWhat: gomux sessions' answer names each
// connection's person and source and, per thing held, the target, remote
// user, mode, the running command (redacted) and the bytes.
func TestAdminSessionsListsWhoHoldsWhat(t *testing.T) {
	s, path, _ := adminServer(t)
	var closed atomic.Int32
	fakeConn(s, "alice", "192.0.2.7:5555", "a.example.com", "TOKEN=s3cret sleep 300", &closed)
	resp, err := AdminCall(context.Background(), path, AdminRequest{Op: "sessions"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Connections) != 1 {
		t.Fatalf("connections %+v", resp.Connections)
	}
	c := resp.Connections[0]
	if c.Person != "alice" || c.Source != "192.0.2.7:5555" || len(c.ID) != 8 || len(c.Holds) != 1 {
		t.Fatalf("connection %+v", c)
	}
	h := c.Holds[0]
	if h.Target != "a.example.com:22" || h.RemoteUser != "deploy" || h.Mode != "accelerate" ||
		h.BytesIn != 100 || h.BytesOut != 2048 || len(h.Running) != 1 {
		t.Fatalf("held %+v", h)
	}
	if strings.Contains(h.Running[0], "s3cret") || !strings.Contains(h.Running[0], "sleep 300") {
		t.Fatalf("running %q: not the redacted command", h.Running[0])
	}
}

// TestAdminKillPersonClosesOnlyTheirsAndAudits: gomux kill -person
// closes that person's connections and what they hold, leaves another
// person's alone, and logs admin_kill with the caller's uid and pid.
func TestAdminKillPersonClosesOnlyTheirsAndAudits(t *testing.T) {
	s, path, logs := adminServer(t)
	var alice, bob atomic.Int32
	fakeConn(s, "alice", "192.0.2.7:5555", "a.example.com", "sleep 300", &alice)
	fakeConn(s, "alice", "192.0.2.7:5556", "a.example.com", "sleep 301", &alice)
	fakeConn(s, "bob", "192.0.2.8:5555", "a.example.com", "sleep 302", &bob)
	resp, err := AdminCall(context.Background(), path, AdminRequest{Op: "kill", Person: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Connections) != 2 || alice.Load() != 4 || bob.Load() != 0 {
		t.Fatalf("closed %d connections; alice's closes and cuts %d, bob's %d", len(resp.Connections), alice.Load(), bob.Load())
	}
	var kills []map[string]any
	for _, l := range logs.lines() {
		if l["event"] == EventAdminKill {
			kills = append(kills, l)
		}
	}
	if len(kills) != 2 {
		t.Fatalf("admin_kill lines: %v", kills)
	}
	fields, _ := AuditFields(EventAdminKill)
	for _, k := range kills {
		for _, f := range fields {
			if _, ok := k[f]; !ok {
				t.Errorf("admin_kill without %s: %v", f, k)
			}
		}
		if k["user"] != "alice" || k["by_uid"] != float64(os.Geteuid()) || k["by_pid"] != float64(os.Getpid()) {
			t.Errorf("admin_kill %v: want alice, by uid %d pid %d", k, os.Geteuid(), os.Getpid())
		}
	}
	// By id: bob's one connection.
	id := s.conns.matching("", "bob")[0].id
	if resp, err := AdminCall(context.Background(), path, AdminRequest{Op: "kill", ID: id}); err != nil || len(resp.Connections) != 1 || bob.Load() != 2 {
		t.Fatalf("kill %s: %v %+v", id, err, resp)
	}
}

// TestAdminRefusesBadRequests: another protocol version, an unknown op,
// and a kill naming both or neither are refused without closing anything.
func TestAdminRefusesBadRequests(t *testing.T) {
	s, path, _ := adminServer(t)
	var closed atomic.Int32
	fakeConn(s, "alice", "192.0.2.7:5555", "a.example.com", "sleep 300", &closed)
	for _, line := range []string{
		`{"v":2,"op":"sessions"}`,
		`{"v":1,"op":"shutdown"}`,
		`{"v":1,"op":"kill"}`,
		`{"v":1,"op":"kill","id":"x","person":"alice"}`,
		`{"v":1,"op":"kill","person":"nobody"}`,
		`not json`,
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(line + "\n"))
		var resp AdminResponse
		err = json.NewDecoder(bufio.NewReader(c)).Decode(&resp)
		c.Close()
		if err != nil || resp.V != AdminVersion || resp.Error == "" {
			t.Errorf("%s: %v %+v", line, err, resp)
		}
	}
	if closed.Load() != 0 {
		t.Fatalf("a refused request closed something")
	}
}

// TestAdminSocketModeAndRemoval: the socket is mode 0600, a stale one
// (a crash) is replaced, something else at the path is refused, and it
// is gone once the server stopped.
func TestAdminSocketModeAndRemoval(t *testing.T) {
	s, _ := opsServer(t, "targets:\n  - hosts: [a.example.com]\n    remote_users: [deploy]\n")
	dir := s.start.StateDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admin.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	ctx, cancel := context.WithCancel(context.Background())
	al, err := s.ListenAdmin(ctx)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket %v: %v", fi.Mode(), err)
	}
	var g gogroup.Group
	g.Go(func() { s.ServeAdmin(ctx, al) })
	cancel()
	g.Wait()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("admin socket left behind: %v", err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ListenAdmin(context.Background()); err == nil {
		t.Fatalf("a regular file at admin_socket was replaced")
	}
	s.start.AdminSocket = "/" + strings.Repeat("x", maxSocketPath)
	if _, err := s.ListenAdmin(context.Background()); err == nil || !strings.Contains(err.Error(), "shorter admin_socket") {
		t.Fatalf("a path too long for a socket: %v", err)
	}
}

// TestAdminCallerCheck: only gomux's own uid and root are admitted.
func TestAdminCallerCheck(t *testing.T) {
	if allowedCaller(1000, 1000) != nil || allowedCaller(0, 1000) != nil {
		t.Fatal("own user or root refused")
	}
	if allowedCaller(1001, 1000) == nil {
		t.Fatal("another user admitted")
	}
}

// TestLiveConnsRegistry: ids are distinct and stay with their connection;
// a dropped connection is gone; what stops running is no longer listed.
func TestLiveConnsRegistry(t *testing.T) {
	var lc liveConns
	hs := &holdings{m: map[*held]struct{}{}}
	h := &held{what: "splice", via: "front", d: Decision{Mode: ModeSplice, Host: "b.example.com", Port: 22}}
	stop := h.run("shell")
	hs.add(h)
	ids := map[string]bool{}
	var drops []func()
	for range 50 {
		c := &liveConn{person: "p", hs: hs}
		drops = append(drops, lc.add(c))
		ids[c.id] = true
	}
	if len(ids) != 50 || len(lc.snapshot()) != 50 {
		t.Fatalf("%d ids for 50 connections", len(ids))
	}
	first := lc.snapshot()[0]
	if r := first.Holds[0].Running; len(r) != 1 || r[0] != "shell" {
		t.Fatalf("running %v", r)
	}
	stop()
	if r := lc.snapshot()[0].Holds[0].Running; len(r) != 0 {
		t.Fatalf("still running %v", r)
	}
	for _, d := range drops {
		d()
	}
	if n := len(lc.snapshot()); n != 0 {
		t.Fatalf("%d connections after all dropped", n)
	}
	if runName("subsystem", "sftp") != "sftp" || runName("shell", "") != "shell" {
		t.Fatal("runName")
	}
}

// TestAdminSocketNeedsRestart: the socket is bound once; a reload that
// moves it says so and keeps the running path.
func TestAdminSocketNeedsRestart(t *testing.T) {
	old := &StartConfig{StateDir: "/state"}
	cfg := *old
	cfg.AdminSocket = "/run/gomux.sock"
	if got := strings.Join(restartOnly(old, &cfg), ","); got != "admin_socket" {
		t.Fatalf("restart needed for %q", got)
	}
	if old.AdminSocketPath() != "/state/admin.sock" || cfg.AdminSocketPath() != "/run/gomux.sock" {
		t.Fatalf("paths %s %s", old.AdminSocketPath(), cfg.AdminSocketPath())
	}
	s, p := opsServer(t, "targets:\n  - hosts: [a.example.com]\n    remote_users: [deploy]\n")
	running := s.start.AdminSocketPath()
	os.WriteFile(p, []byte("admin_socket: /elsewhere.sock\ntargets:\n  - hosts: [a.example.com]\n    remote_users: [deploy]\n"), 0o600)
	if _, err := s.ReloadFile(p, nil, func(c *Config) { c.StateDir = s.start.StateDir }, "test"); err != nil {
		t.Fatal(err)
	}
	if got := s.start.AdminSocketPath(); got != running {
		t.Fatalf("a reload moved the admin socket to %s", got)
	}
}

// TestAdminSocketTakeover: a gomux started on the state dir of one that
// still drains takes the socket over; the old one's stop leaves the new
// one's socket in place.
func TestAdminSocketTakeover(t *testing.T) {
	serve := func(person string, path string) (*Server, func()) {
		s, _ := opsServer(t, "targets:\n  - hosts: [a.example.com]\n    remote_users: [deploy]\n")
		s.start.AdminSocket = path
		var closed atomic.Int32
		fakeConn(s, person, "192.0.2.9:5555", "a.example.com", "sleep 1", &closed)
		ctx, cancel := context.WithCancel(context.Background())
		al, err := s.ListenAdmin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var g gogroup.Group
		g.Go(func() { s.ServeAdmin(ctx, al) })
		return s, func() { cancel(); g.Wait() }
	}
	path := filepath.Join(t.TempDir(), "admin.sock")
	_, stopOld := serve("olga", path)
	_, stopNew := serve("nina", path)
	defer stopNew()
	stopOld()
	resp, err := AdminCall(context.Background(), path, AdminRequest{Op: "sessions"})
	if err != nil || len(resp.Connections) != 1 || resp.Connections[0].Person != "nina" {
		t.Fatalf("the new gomux does not answer: %v %+v", err, resp)
	}
}
