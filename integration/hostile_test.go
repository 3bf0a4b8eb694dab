package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/internal/sftptest"
	"github.com/gomux/gomux/proxy"
)

// rawFront logs in to gomux's front with golang.org/x/crypto/ssh as
// login, with the lab's client key: a client that can send what OpenSSH's
// never would. banner collects what gomux said in auth banners.
func rawFront(t *testing.T, lab *harness.Lab, g *Gomux, login string, banner *strings.Builder) (*gossh.Client, error) {
	t.Helper()
	b, err := os.ReadFile(lab.ClientKey)
	must(t, err)
	signer, err := gossh.ParsePrivateKey(b)
	must(t, err)
	cfg := &gossh.ClientConfig{
		User: login,
		Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		// The attacker does not care who gomux is; the tests of host
		// verification are elsewhere.
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
		BannerCallback: func(m string) error {
			if banner != nil {
				banner.WriteString(m)
			}
			return nil
		},
	}
	return gossh.Dial("tcp", g.Addr, cfg)
}

// rawInner opens an accelerated forward to target through front and logs
// in to the inner session as the lab's user.
func rawInner(t *testing.T, lab *harness.Lab, front *gossh.Client, target string) (*gossh.Client, error) {
	t.Helper()
	addr := net.JoinHostPort(target, "22")
	nc, err := front.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(lab.ClientKey)
	must(t, err)
	signer, err := gossh.ParsePrivateKey(b)
	must(t, err)
	c, chans, reqs, err := gossh.NewClientConn(nc, addr, &gossh.ClientConfig{
		User:            lab.User,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return gossh.NewClient(c, chans, reqs), nil
}

// rawSFTP is a hand-rolled SFTP v3 client on one session channel: it can
// send offsets OpenSSH's sftp never sends.
type rawSFTP struct {
	in  io.WriteCloser
	out *bufio.Reader
	id  uint32
}

func newRawSFTP(t *testing.T, c *gossh.Client) *rawSFTP {
	t.Helper()
	s, err := c.NewSession()
	must(t, err)
	t.Cleanup(func() { s.Close() })
	in, err := s.StdinPipe()
	must(t, err)
	out, err := s.StdoutPipe()
	must(t, err)
	must(t, s.RequestSubsystem("sftp"))
	r := &rawSFTP{in: in, out: bufio.NewReader(out)}
	r.send(1, uint32(3)) // INIT
	if typ, _ := r.recv(t); typ != 2 {
		t.Fatalf("sftp: no VERSION, got packet %d", typ)
	}
	return r
}

func (r *rawSFTP) send(typ byte, fields ...any) {
	r.in.Write(sftptest.Packet(typ, fields...))
}

func (r *rawSFTP) recv(t *testing.T) (byte, []byte) {
	t.Helper()
	var l [4]byte
	if _, err := io.ReadFull(r.out, l[:]); err != nil {
		t.Fatalf("sftp: read reply: %v", err)
	}
	p := make([]byte, binary.BigEndian.Uint32(l[:]))
	if _, err := io.ReadFull(r.out, p); err != nil {
		t.Fatalf("sftp: read reply: %v", err)
	}
	return p[0], p[1:]
}

// status reads a STATUS reply: its code and message.
func (r *rawSFTP) status(t *testing.T) (uint32, string) {
	t.Helper()
	typ, p := r.recv(t)
	if typ != 101 || len(p) < 12 {
		t.Fatalf("sftp: want STATUS, got packet %d %q", typ, p)
	}
	code := binary.BigEndian.Uint32(p[4:])
	n := binary.BigEndian.Uint32(p[8:])
	return code, string(p[12 : 12+min(int(n), len(p)-12)])
}

// open sends OPEN for writing (as OpenSSH's put does) and returns the
// handle.
func (r *rawSFTP) open(t *testing.T, path string) string {
	t.Helper()
	r.id++
	r.send(3, r.id, path, uint32(0x02|0x08|0x10), uint32(0)) // WRITE|CREAT|TRUNC
	typ, p := r.recv(t)
	if typ != 102 {
		t.Fatalf("sftp: OPEN %s: got packet %d %q", path, typ, p)
	}
	n := binary.BigEndian.Uint32(p[4:])
	return string(p[8 : 8+n])
}

func (r *rawSFTP) write(t *testing.T, handle string, off uint64, data string) (uint32, string) {
	t.Helper()
	r.id++
	r.send(6, r.id, handle, off, data)
	return r.status(t)
}

func (r *rawSFTP) close(t *testing.T, handle string) (uint32, string) {
	t.Helper()
	r.id++
	r.send(4, r.id, handle)
	return r.status(t)
}

// exec runs cmd on an inner connection and returns its stdout.
func execOn(t *testing.T, c *gossh.Client, cmd string) string {
	t.Helper()
	s, err := c.NewSession()
	must(t, err)
	defer s.Close()
	out, err := s.Output(cmd)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return string(out)
}

// assertServing checks a real `ssh -J` through g still works.
func assertServing(t *testing.T, g *Gomux, target string) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	got := runCmd(g.SSH(ctx, target, "echo still-serving"), nil)
	if got.Code != 0 || got.Stdout != "still-serving\n" {
		t.Fatalf("gomux no longer serves ssh -J: %+v\n%s", got, g.Log())
	}
}

// TestHostileSFTPOffsets writes at offset 2^63 and at 2^64-1 (negative as
// an int64) into a shim temp dir and elsewhere: gomux answers each with an
// error status, logs it, and goes on serving this client and others.
func TestHostileSFTPOffsets(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{Persons: []string{"mallory"}})
	target := lab.Targets[0].Addr

	front, err := rawFront(t, lab, g, "mallory", nil)
	must(t, err)
	defer front.Close()
	inner, err := rawInner(t, lab, front, target)
	must(t, err)
	defer inner.Close()

	// Ansible's mkdir step, which the shim answers with a virtual dir.
	id := fmt.Sprintf("ansible-tmp-%d-%d-%d", time.Now().UnixNano(), os.Getpid(), 42)
	mkdir := `/bin/sh -c '( umask 77 && mkdir -p "` + "` echo ~/.ansible/tmp `" + `"&& mkdir "` + "` echo ~/.ansible/tmp/" + id + " `" +
		`" && echo ` + id + `="` + "` echo ~/.ansible/tmp/" + id + " `" + `" ) && sleep 0'`
	out := execOn(t, inner, mkdir)
	dir := strings.TrimSpace(strings.TrimPrefix(out, id+"="))
	if !strings.HasPrefix(out, id+"=/") {
		t.Fatalf("mkdir step: %q", out)
	}

	s := newRawSFTP(t, inner)
	// One upload the shim stages, one that goes to the agent.
	for _, p := range []string{dir + "/AnsiballZ_x.py", "hostile-" + id} {
		h := s.open(t, p)
		for _, off := range []uint64{1 << 63, 1<<64 - 1} {
			code, msg := s.write(t, h, off, "hello")
			t.Logf("WRITE %s at %d -> status %d %q", p, off, code, msg)
			if code == 0 {
				t.Fatalf("WRITE at offset %d into %s succeeded", off, p)
			}
		}
		// The handle still works for a sane write.
		if code, msg := s.write(t, h, 0, "ok"); code != 0 {
			t.Fatalf("sane WRITE after the hostile ones: %d %q", code, msg)
		}
		s.close(t, h)
	}
	// This session, and another user's real ssh -J, are still served.
	if got := execOn(t, inner, "echo alive"); got != "alive\n" {
		t.Fatalf("exec after hostile writes: %q", got)
	}
	assertServing(t, g, target)
	if len(g.Events(proxy.EventSFTPBadRequest)) == 0 {
		t.Errorf("no sftp_bad_request log line")
	}
	if len(g.Events(proxy.EventPanic)) != 0 {
		t.Errorf("a panic was contained, none should happen: %v", g.Events(proxy.EventPanic))
	}
	execOn(t, inner, "rm -rf "+dir+" hostile-"+id)
}

// gomuxRSS is gomux's resident memory in kB, from /proc.
func gomuxRSS(t *testing.T, g *Gomux) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.cmd.Process.Pid))
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// staller opens a TCP connection from src, sends an SSH banner and then
// nothing; closed reports when gomux closed it.
type staller struct {
	c      net.Conn
	closed chan struct{}
	got    bytes.Buffer
}

func stall(t *testing.T, addr, src string) (*staller, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, "SSH-2.0-stall\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	s := &staller{c: c, closed: make(chan struct{})}
	go func() {
		defer close(s.closed)
		io.Copy(&s.got, c)
	}()
	return s, nil
}

// TestHostileUnauthenticated holds 500 connections that send a banner and
// stall: a real user is still served, gomux closes them at the login grace
// time, and a single source beyond its startup cap is dropped at once.
func TestHostileUnauthenticated(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{Persons: []string{"slow"}, Limits: `  login_grace_time: 5s
  max_startups: "600:30:1000"
  per_source_max_startups: 100`})
	target := lab.Targets[0].Addr
	assertServing(t, g, target)
	before := gomuxRSS(t, g)

	// 500 from ten sources, within every cap: all are held until the
	// grace time.
	var ss []*staller
	for i := 0; i < 500; i++ {
		s, err := stall(t, g.Addr, fmt.Sprintf("127.0.0.%d", 10+i%10))
		must(t, err)
		ss = append(ss, s)
	}
	defer func() {
		for _, s := range ss {
			s.c.Close()
			<-s.closed
		}
	}()
	start := time.Now()
	assertServing(t, g, target)
	during := gomuxRSS(t, g)
	open := 0
	for _, s := range ss {
		select {
		case <-s.closed:
		default:
			open++
		}
	}
	t.Logf("%d of 500 stalled connections open while a real user was served", open)
	for _, s := range ss {
		select {
		case <-s.closed:
		case <-time.After(2 * time.Minute):
			t.Fatalf("a stalled connection was not closed %v after it opened", time.Since(start))
		}
	}
	t.Logf("all 500 closed by gomux %v after they opened (login_grace_time 5s)", time.Since(start).Round(100*time.Millisecond))
	// (gomux's log is read asynchronously: the last lines may lag.)
	waitFor(t, 30*time.Second, func() bool { return len(g.Events(proxy.EventLoginGrace)) >= 500 })
	assertServing(t, g, target)
	after := gomuxRSS(t, g)

	// One source past per_source_max_startups: the excess is dropped at
	// once, with a message.
	var burst []*staller
	for i := 0; i < 300; i++ {
		s, err := stall(t, g.Addr, "127.0.0.30")
		if err != nil {
			continue // refused at connect is fine too
		}
		burst = append(burst, s)
	}
	// A dropped connection is closed at once; a held one only at the
	// grace time, 5s on. The sleep is the measurement, not a wait for a
	// condition: what is closed a second on was dropped, what is still
	// open was held.
	time.Sleep(time.Second)
	dropped := 0
	for _, s := range burst {
		select {
		case <-s.closed:
			dropped++
		default:
		}
	}
	for _, s := range burst {
		s.c.Close()
		<-s.closed
	}
	t.Logf("one source opening 300 at once: %d dropped before login (per_source_max_startups 100)", dropped)
	if dropped < 200 || dropped == len(burst) {
		t.Errorf("%d of %d from one source dropped, want the 200 past its cap of 100", dropped, len(burst))
	}
	waitFor(t, 30*time.Second, func() bool { return len(g.Events(proxy.EventLimit)) >= 200 })
	assertServing(t, g, target)

	// A logged-in client's forward that never starts its inner login is
	// closed at the grace time too.
	front, err := rawFront(t, lab, g, "slow", nil)
	must(t, err)
	defer front.Close()
	fw, err := front.Dial("tcp", net.JoinHostPort(target, "22"))
	must(t, err)
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		io.Copy(io.Discard, fw)
	}()
	select {
	case <-closed:
	case <-time.After(2 * time.Minute):
		t.Fatal("a forward without an inner login was not closed")
	}
	fw.Close()
	t.Logf("gomux VmRSS: %d kB before, %d kB with 500 stalled connections, %d kB after they were closed", before, during, after)
}

// TestHostileChannelCaps has one person open channels and sessions past
// the caps: each extra one is refused with a reason, while another
// person's ssh -J commands and an extra login of the first run unaffected.
func TestHostileChannelCaps(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{Persons: []string{"mallory"}, Limits: `  max_channels_per_connection: 4
  max_channels_per_user: 6
  max_connections_per_user: 2`})
	target := lab.Targets[0].Addr
	addr := net.JoinHostPort(target, "22")

	front, err := rawFront(t, lab, g, "mallory", nil)
	must(t, err)
	defer front.Close()
	inner, err := rawInner(t, lab, front, target) // mallory's channel 1
	must(t, err)
	defer inner.Close()

	var sessions []*gossh.Session
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	var refused []string
	// Sessions on one inner connection: 4 allowed, the 5th refused.
	for i := 0; i < 5; i++ {
		s, err := inner.NewSession()
		if err != nil {
			var oe *gossh.OpenChannelError
			if !errors.As(err, &oe) || oe.Reason != gossh.ResourceShortage {
				t.Fatalf("session %d: %v, want a resource-shortage refusal", i, err)
			}
			refused = append(refused, oe.Message)
			continue
		}
		sessions = append(sessions, s)
	}
	if len(sessions) != 4 || len(refused) != 1 || !strings.Contains(refused[0], "max_channels_per_connection") {
		t.Fatalf("sessions: %d open, refusals %q", len(sessions), refused)
	}
	// Front channels: mallory has 5 now; one more, then refusals.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		c, err := front.Dial("tcp", addr)
		if err != nil {
			refused = append(refused, err.Error())
			continue
		}
		conns = append(conns, c)
	}
	if len(conns) != 1 || !strings.Contains(refused[len(refused)-1], "max_channels_per_user") {
		t.Fatalf("front channels: %d open, refusals %q", len(conns), refused)
	}
	// A third login of mallory is refused with a banner that says why.
	if c, err := rawFront(t, lab, g, "mallory", nil); err == nil {
		defer c.Close()
	}
	var banner strings.Builder
	if c, err := rawFront(t, lab, g, "mallory", &banner); err == nil {
		c.Close()
		t.Fatal("third connection of mallory accepted")
	}
	if !strings.Contains(banner.String(), "max_connections_per_user") {
		t.Errorf("refused login banner: %q", banner.String())
	}
	t.Logf("refusals: %q; login banner %q", refused, banner.String())

	// Another person is unaffected: several ssh -J commands at once.
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// (Two at a time: max_connections_per_user is 2 for everyone.)
	for round := 0; round < 3; round++ {
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got := runCmd(g.SSH(ctx, target, "echo ok"), nil)
				if got.Code != 0 || got.Stdout != "ok\n" {
					t.Errorf("another person's ssh -J: %+v", got)
				}
			}()
		}
		wg.Wait()
	}
	// And that person's playbook runs as it would with mallory gone (one
	// ControlMaster for both runs: a connection, of the two allowed).
	cp := controlDir(t)
	for _, pipelining := range []string{"False", "True"} {
		r := runPlaybookOpts(ctx, t, lab, g, playbookPath("plain.yml"), playOpts{env: []string{"ANSIBLE_PIPELINING=" + pipelining}, controlDir: cp})
		if r.Err != nil || !strings.Contains(r.recapString(), "ok=3 changed=0 unreachable=0 failed=0") {
			t.Errorf("another person's playbook (pipelining=%s) while mallory is at her caps: %v\n%s", pipelining, r.Err, r.Output)
		}
	}
	if len(g.Events(proxy.EventLimit)) < 3 {
		t.Errorf("refusals not logged: %d limit events", len(g.Events(proxy.EventLimit)))
	}
	// Closing frees the slots: mallory may open a session again.
	sessions[0].Close()
	sessions = sessions[1:]
	waitFor(t, 30*time.Second, func() bool {
		s, err := inner.NewSession()
		if err != nil {
			return false
		}
		sessions = append(sessions, s)
		return true
	})
	assertServing(t, g, target)
}

// TestHostileTargetAgent gives gomux targets whose "agent" is hostile:
// sshd runs testdata/fakeagent in place of the launcher (ForceCommand),
// which greets and answers hello like the real agent, then sends garbage
// frames, a frame header claiming 4 GiB, nothing at all, or a flood of
// output with no reply. Each client's command fails as a connection
// failure (exit 255) or an error, in bounded time; gomux logs why, never
// panics, and serves a normal target throughout.
func TestHostileTargetAgent(t *testing.T) {
	modes := []string{"garbage", "oversize", "stall", "flood"}
	dir, err := os.MkdirTemp("", "gmxfake-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	fake := filepath.Join(dir, "fakeagent")
	build := exec.Command("go", "build", "-o", fake, "./integration/testdata/fakeagent")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build fakeagent: %v\n%s", err, out)
	}
	lab := harness.Start(t, harness.Options{Targets: len(modes) + 1, SSHDConfig: func(i int) string {
		if i < len(modes) {
			return "ForceCommand " + fake + " " + modes[i] + "\n"
		}
		return ""
	}})
	g := startGomux(t, lab, gomuxOptions{Limits: "  agent_reply_timeout: 5s\n"})
	normal := lab.Targets[len(modes)].Addr
	for i, mode := range modes {
		tgt := lab.Targets[i].Addr
		ctx := ctxT(t, 2*time.Minute)
		start := time.Now()
		got := runCmd(g.SSH(ctx, tgt, "echo should-not-run"), nil)
		if got.Code != 255 || strings.Contains(got.Stdout, "should-not-run") {
			t.Errorf("%s agent: ssh -J: %+v, want a connection failure (255)", mode, got)
		}
		sftp := exec.CommandContext(ctx, "sftp", append(g.ClientArgs(), "-b", "-", tgt)...)
		// sftp's batch mode goes on after a failed ls; the failure shows
		// on stderr.
		if r := runCmd(sftp, strings.NewReader("ls\n")); r.Code == 0 && !strings.Contains(r.Stderr, "Failure") {
			t.Errorf("%s agent: sftp ls succeeded: %+v", mode, r)
		}
		t.Logf("%s agent: ssh and sftp failed in %v", mode, time.Since(start).Round(100*time.Millisecond))
		assertServing(t, g, normal)
	}
	if strings.Contains(g.Log(), "panic") {
		t.Errorf("gomux logged a panic:\n%s", g.Problems())
	}
	t.Logf("what gomux said:\n%s", g.Problems())
}
