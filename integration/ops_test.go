package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// scrape fetches gomux's /metrics.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// metricSum adds the values of the series of name whose labels contain
// every one of labels (`mode="accelerate"`).
func metricSum(text, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

func httpStatus(addr, path string) int {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestOpsMetrics scrapes /metrics while the seed playbook runs through
// gomux: the counters move during the run, and afterwards every family
// the issue names has counted what the playbook did, with no target in a
// label.
func TestOpsMetrics(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2})
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	g := startGomux(t, lab, gomuxOptions{Extra: "metrics_listen: " + maddr + "\n"})
	ctx := ctxT(t, 10*time.Minute)
	if c := httpStatus(maddr, "/healthz"); c != 200 {
		t.Fatalf("/healthz %d", c)
	}
	if c := httpStatus(maddr, "/readyz"); c != 200 {
		t.Fatalf("/readyz %d", c)
	}
	before := scrape(t, maddr)
	done := make(chan playbookRun, 1)
	go func() { done <- runPlaybook(ctx, t, lab, g, playbookPath("seed.yml")) }()
	// During the run: the session counter moves between two scrapes.
	var during []float64
	var run playbookRun
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case run = <-done:
			break wait
		case <-tick.C:
			during = append(during, metricSum(scrape(t, maddr), "gomux_channels_total", `kind="session"`))
		}
	}
	if run.Err != nil {
		t.Fatalf("playbook: %v\n%s", run.Err, run.Output)
	}
	moving := false
	for i := 1; i < len(during); i++ {
		if during[i] > during[i-1] && during[i-1] > 0 {
			moving = true
		}
	}
	if !moving {
		t.Errorf("session counter did not move between scrapes during the run: %v", during)
	}
	after := scrape(t, maddr)
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"gomux_front_connections_total", []string{`result="accepted"`}, 2},
		{"gomux_front_auth_total", []string{`method="publickey"`, `result="accepted"`}, 2},
		{"gomux_channels_total", []string{`via="front"`, `kind="direct-tcpip"`}, 2},
		{"gomux_channels_total", []string{`via="inner"`, `kind="session"`}, 10},
		{"gomux_policy_decisions_total", []string{`via="front"`, `mode="accelerate"`, `rule="0"`}, 2},
		{"gomux_upstream_dials_total", []string{`result="ok"`}, 2},
		{"gomux_agent_starts_total", []string{`result="ok"`}, 2},
		{"gomux_agent_uploads_total", nil, 2},
		{"gomux_shim_round_trips_total", nil, 10},
		{"gomux_shim_local_steps_total", nil, 10},
		{"gomux_task_duration_seconds_count", []string{`kind="exec"`, `local="false"`}, 10},
		{"gomux_task_duration_seconds_count", []string{`kind="exec"`, `local="true"`}, 10},
		{"gomux_task_bytes_count", []string{`direction="in"`}, 10},
		{"gomux_warm_python_total", []string{`result="hit"`}, 2},
		{"gomux_upstream_connections", nil, 2},
	} {
		got, was := metricSum(after, c.name, c.labels...), metricSum(before, c.name, c.labels...)
		if got-was < c.min {
			t.Errorf("%s%v: %v before, %v after the playbook; want it to grow by at least %v", c.name, c.labels, was, got, c.min)
		}
	}
	if !strings.Contains(after, "gomux_staged_bytes ") || !strings.Contains(after, "process_resident_memory_bytes") {
		t.Errorf("gauges missing")
	}
	for _, tg := range lab.Targets {
		if strings.Contains(after, tg.Addr) {
			t.Errorf("a target address is in a metric label: labels must stay bounded")
		}
	}
	if strings.Contains(after, lab.User) {
		t.Errorf("a user name is in a metric label")
	}
	var sample []string
	for _, l := range strings.Split(after, "\n") {
		if strings.HasPrefix(l, "gomux_") && !strings.Contains(l, "_bucket{") {
			sample = append(sample, l)
		}
	}
	t.Logf("metrics after the seed playbook on %d targets:\n%s", len(lab.Targets), strings.Join(sample, "\n"))

	// Draining: /readyz says so before the process exits.
	g.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, func() bool {
		select {
		case <-g.done:
			return true
		default:
		}
		return httpStatus(maddr, "/readyz") != 200
	})
}

// TestOpsReload changes policy with SIGHUP under an open session: the
// session finishes, a new connection gets the new rule; an invalid file
// is refused with a log line and the running config stays.
func TestOpsReload(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2})
	t0, t1 := lab.Targets[0], lab.Targets[1]
	both := fmt.Sprintf("  - hosts: [%q, %q]\n    remote_users: [\"*\"]\n", t0.Addr, t1.Addr)
	g := startGomux(t, lab, gomuxOptions{Targets: both})
	ctx := ctxT(t, 3*time.Minute)
	cfgPath := filepath.Join(g.Dir, "gomux.yaml")
	orig := readFile(t, cfgPath)

	// Open sessions on t0 and t1, still running when the rule changes.
	open0, br0 := openSession(t, ctx, g, t0.Addr, 6)
	open, br := openSession(t, ctx, g, t1.Addr, 6)

	// Deny t0 from now on.
	denied := strings.Replace(orig, both, fmt.Sprintf("  - hosts: [%q]\n    mode: deny\n  - hosts: [%q]\n    remote_users: [\"*\"]\n", t0.Addr, t1.Addr), 1)
	if denied == orig {
		t.Fatalf("targets not found in the config:\n%s", orig)
	}
	must(t, os.WriteFile(cfgPath, []byte(denied), 0o600))
	must(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, 20*time.Second, func() bool { return hasEvent(g, proxy.EventReload, "result", "ok") })

	r := runCmd(g.SSHVerbose(ctx, t0.Addr, "echo in"), nil)
	if r.Code == 0 || !strings.Contains(r.Stderr, "may not reach") {
		t.Errorf("new connection to t0 after the reload: %+v", r)
	}
	if r := runCmd(g.SSH(ctx, t1.Addr, "echo in"), nil); r.Code != 0 || r.Stdout != "in\n" {
		t.Errorf("t1 after the reload: %+v", r)
	}
	rest, _ := io.ReadAll(br)
	if err := open.Wait(); err != nil || string(rest) != "still-here\n" {
		t.Errorf("the session to t1 open across the reload: %v %q", err, rest)
	}
	// A decision holds only while the policy that made it does: the
	// session to t0 is cut at the reload.
	rest, _ = io.ReadAll(br0)
	if err := open0.Wait(); err == nil || string(rest) == "still-here\n" {
		t.Errorf("the session to t0 went on after t0 was denied: %v %q", err, rest)
	}

	// An invalid file: logged, refused, the deny rule stays in force.
	must(t, os.WriteFile(cfgPath, []byte(denied+"  - hosts: [\"x\"]\n    mode: sideways\n"), 0o600))
	must(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, 20*time.Second, func() bool { return hasEvent(g, proxy.EventReload, "result", "failed") })
	for _, e := range g.Events(proxy.EventReload) {
		if e["result"] == "failed" && !strings.Contains(fmt.Sprint(e["error"]), "sideways") {
			t.Errorf("reload failure does not say why: %v", e)
		}
	}
	if r := runCmd(g.SSH(ctx, t0.Addr, "echo in"), nil); r.Code == 0 {
		t.Errorf("t0 reachable after a failed reload: the running config must stay")
	}
	if r := runCmd(g.SSH(ctx, t1.Addr, "echo in"), nil); r.Code != 0 {
		t.Errorf("t1 after a failed reload: %+v", r)
	}

	// A config file change alone reloads too (no signal): t0 back.
	oks := func() int {
		n := 0
		for _, e := range g.Events(proxy.EventReload) {
			if e["result"] == "ok" && e["trigger"] == "config file changed" {
				n++
			}
		}
		return n
	}
	// Let the watcher see the invalid file first, so the next change is
	// the one that puts orig back: its failed reload is logged after any
	// earlier one of the watcher's (reloads run one at a time).
	waitFor(t, 20*time.Second, func() bool {
		for _, e := range g.Events(proxy.EventReload) {
			if e["result"] == "failed" && e["trigger"] == "config file changed" {
				return true
			}
		}
		return false
	})
	before := oks()
	must(t, os.WriteFile(cfgPath, []byte(orig), 0o600))
	waitFor(t, 20*time.Second, func() bool { return oks() > before })
	if r := runCmd(g.SSH(ctx, t0.Addr, "echo in"), nil); r.Code != 0 {
		t.Errorf("t0 after the file went back: %+v", r)
	}
}

// balancer is a TCP load balancer for tests: it listens on loopback and
// sends each connection to the next backend in turn, from source address
// from, optionally with a PROXY protocol v2 header naming client as the
// source (as HAProxy's send-proxy-v2 does).
type balancer struct {
	ln       net.Listener
	backends []string
	from     string
	client   func(net.Conn) netip.AddrPort
	next     atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]bool
}

func startBalancer(t *testing.T, from string, client func(net.Conn) netip.AddrPort, backends ...string) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	b := &balancer{ln: ln, backends: backends, from: from, client: client, conns: map[net.Conn]bool{}}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *balancer) track(c net.Conn) {
	b.mu.Lock()
	b.conns[c] = true
	b.mu.Unlock()
}

func (b *balancer) serve(c net.Conn) {
	b.track(c)
	defer c.Close()
	be := b.backends[int(b.next.Add(1)-1)%len(b.backends)]
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(b.from)}}
	u, err := d.Dial("tcp", be)
	if err != nil {
		return
	}
	b.track(u)
	defer u.Close()
	if b.client != nil {
		src := b.client(c)
		dst := netip.MustParseAddrPort(be)
		hdr := append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x21, 0x11, 0, 12)
		s4, d4 := src.Addr().As4(), dst.Addr().As4()
		hdr = append(append(hdr, s4[:]...), d4[:]...)
		hdr = binary.BigEndian.AppendUint16(hdr, src.Port())
		hdr = binary.BigEndian.AppendUint16(hdr, dst.Port())
		if _, err := u.Write(hdr); err != nil {
			return
		}
	}
	done := make(chan struct{})
	go func() {
		io.Copy(u, c)
		u.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, u)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

func (b *balancer) sshConfig(t *testing.T, lab *harness.Lab, knownHosts string) string {
	t.Helper()
	port := b.ln.Addr().(*net.TCPAddr).Port
	return writeSSHConfig(t, t.TempDir(), lab, knownHosts, fmt.Sprintf("Host gomux\n  HostName 127.0.0.1\n  Port %d\n  HostKeyAlias gomux\n", port))
}

// TestOpsProxyProtocol puts gomux behind a balancer speaking PROXY v2
// from a trusted address: the log names the real client and a user
// certificate's source-address is checked against it. A header from an
// untrusted address, and a trusted connection without one, are refused.
func TestOpsProxyProtocol(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tgt := lab.Targets[0]
	dir := t.TempDir()
	// A user CA; the client's certificate may be used only from the
	// address the balancer reports.
	ca := filepath.Join(dir, "user_ca")
	must(t, exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ca).Run())
	key := filepath.Join(dir, "id")
	must(t, exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).Run())
	const realClient = "198.51.100.23"
	if out, err := exec.Command("ssh-keygen", "-q", "-s", ca, "-I", "pp-test", "-n", lab.User,
		"-O", "source-address="+realClient+"/32", key+".pub").CombinedOutput(); err != nil {
		t.Fatalf("sign: %v %s", err, out)
	}
	g := startGomux(t, lab, gomuxOptions{Extra: "proxy_protocol:\n  trusted_networks: [127.0.0.2/32]\n"})
	ctx := ctxT(t, 3*time.Minute)
	// Trust the user CA by a reload (the config's auth section gains it).
	cfgPath := filepath.Join(g.Dir, "gomux.yaml")
	cfg := readFile(t, cfgPath)
	must(t, os.WriteFile(cfgPath, []byte(strings.Replace(cfg, "auth:\n", "auth:\n  user_ca_keys: ["+ca+".pub]\n", 1)), 0o600))
	must(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, 20*time.Second, func() bool { return hasEvent(g, proxy.EventReload, "result", "ok") })

	var clientPort atomic.Int64
	lb := startBalancer(t, "127.0.0.2", func(c net.Conn) netip.AddrPort {
		p := uint16(40000 + clientPort.Add(1))
		return netip.AddrPortFrom(netip.MustParseAddr(realClient), p)
	}, g.Addr)
	certHead := func(port int) string {
		// The certificate signs the inner login too: gomux admits there
		// only the key that logged in to the front.
		return fmt.Sprintf("Host gomux\n  HostName 127.0.0.1\n  Port %d\n  HostKeyAlias gomux\nHost *\n  IdentityFile %s\n  CertificateFile %s-cert.pub\n", port, key, key)
	}
	viaLB := writeSSHConfig(t, t.TempDir(), lab, g.KnownHosts, certHead(lb.ln.Addr().(*net.TCPAddr).Port))
	if r := runCmd(exec.CommandContext(ctx, "ssh", "-F", viaLB, "-J", "gomux", tgt.Addr, "echo through-lb"), nil); r.Code != 0 || r.Stdout != "through-lb\n" {
		t.Fatalf("ssh through the balancer: %+v\n%s", r, g.Log())
	}
	certOK := false
	for _, e := range g.Events(proxy.EventFrontAuth) {
		src := fmt.Sprint(e["source"])
		if strings.HasPrefix(src, "127.0.0.2") {
			t.Errorf("front_auth logged the balancer's address: %v", e)
		}
		if strings.HasPrefix(src, realClient+":") && e["accepted"] == true {
			certOK = true
		}
	}
	if !certOK {
		t.Errorf("no accepted login from the real client %s in the log:\n%s", realClient, g.Log())
	}
	if !strings.Contains(g.Log(), eventTag(proxy.EventForward)+`,"result":"accelerated"`) && !strings.Contains(g.Log(), `"source":"`+realClient) {
		t.Errorf("forward not logged with the real client")
	}

	// The same certificate straight to gomux, from 127.0.0.1: its
	// source-address refuses it (the client then falls back to its key).
	direct := writeSSHConfig(t, t.TempDir(), lab, g.KnownHosts, certHead(g.Port))
	runCmd(exec.CommandContext(ctx, "ssh", "-F", direct, "-J", "gomux", tgt.Addr, "true"), nil)
	refused := false
	for _, e := range g.Events(proxy.EventFrontAuth) {
		if strings.HasPrefix(fmt.Sprint(e["source"]), "127.0.0.1:") && e["accepted"] == false &&
			strings.Contains(fmt.Sprint(e["error"], e["reason"]), "source address 127.0.0.1 not allowed") {
			refused = true
		}
	}
	if !refused {
		t.Errorf("certificate with source-address %s accepted from 127.0.0.1 or not logged:\n%s", realClient, g.Log())
	}

	// A spoofed header from an untrusted address: closed, logged, and the
	// claimed address appears nowhere as a source.
	c, err := net.Dial("tcp", g.Addr)
	must(t, err)
	defer c.Close()
	c.Write([]byte("PROXY TCP4 203.0.113.9 127.0.0.1 1234 22\r\nSSH-2.0-OpenSSH_9.2\r\n"))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("spoofed header: connection not closed")
	}
	if strings.Contains(string(got), "SSH-2.0-gomux\r\n") && len(got) > len("SSH-2.0-gomux\r\n")+2000 {
		t.Errorf("spoofed header: the handshake went on: %q", got)
	}
	waitFor(t, 10*time.Second, func() bool { return hasEvent(g, proxy.EventProxyProtocol, "result", "untrusted") })
	if strings.Contains(g.Log(), `"source":"203.0.113.9`) {
		t.Errorf("the spoofed address reached the log as a source")
	}

	// The trusted balancer without a header: refused too.
	bare := startBalancer(t, "127.0.0.2", nil, g.Addr)
	if r := runCmd(exec.CommandContext(ctx, "ssh", "-F", bare.sshConfig(t, lab, g.KnownHosts), "-J", "gomux", tgt.Addr, "true"), nil); r.Code == 0 {
		t.Errorf("a connection from the balancer without a PROXY header was served")
	}
	waitFor(t, 10*time.Second, func() bool { return hasEvent(g, proxy.EventProxyProtocol, "result", "missing") })
}

// TestOpsReplicas runs the seed playbook against two gomux replicas that
// share only the host CA (copied, as a Secret would be), behind one
// balancer that alternates between them, with ControlPersist off so that
// every task connects afresh: the results are stock Ansible's, both
// replicas served tasks, and clients keep one @cert-authority line.
func TestOpsReplicas(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2})
	pp := "proxy_protocol:\n  trusted_networks: [127.0.0.2/32]\n"
	a := startGomux(t, lab, gomuxOptions{Extra: pp})
	stateB := filepath.Join(t.TempDir(), "state")
	must(t, os.MkdirAll(stateB, 0o700))
	caKey, err := os.ReadFile(filepath.Join(a.Dir, "state", "host_ca_ed25519"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(stateB, "host_ca_ed25519"), caKey, 0o600))
	b := startGomux(t, lab, gomuxOptions{Extra: pp, StateDir: stateB})
	if readFile(t, a.KnownHosts) != readFile(t, b.KnownHosts) {
		t.Fatalf("replicas print different @cert-authority lines")
	}
	var n atomic.Int64
	lb := startBalancer(t, "127.0.0.2", func(net.Conn) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(30000+n.Add(1)))
	}, a.Addr, b.Addr)
	ctx := ctxT(t, 10*time.Minute)
	env := []string{"ANSIBLE_SSH_ARGS=-o ControlMaster=no -o ControlPersist=no", "ANSIBLE_PIPELINING=False"}
	direct := runPlaybookOpts(ctx, t, lab, nil, playbookPath("seed.yml"), playOpts{env: env})
	if direct.Err != nil || len(direct.Recap) != len(lab.Targets) {
		t.Fatalf("stock run: %v\n%s", direct.Err, direct.Output)
	}
	via := runPlaybookOpts(ctx, t, lab, a, playbookPath("seed.yml"), playOpts{env: env, sshConfig: lb.sshConfig(t, lab, a.KnownHosts)})
	if via.Err != nil || via.recapString() != direct.recapString() {
		t.Fatalf("through two replicas:\n%s\nwant:\n%s\n%s", via.recapString(), direct.recapString(), via.Output)
	}
	na, nb := len(a.Events(proxy.EventInnerConnect)), len(b.Events(proxy.EventInnerConnect))
	if na == 0 || nb == 0 {
		t.Errorf("inner sessions: %d on replica a, %d on replica b; want both to serve", na, nb)
	}
	t.Logf("stock %v, two replicas %v; inner sessions %d + %d", direct.Wall.Round(time.Millisecond), via.Wall.Round(time.Millisecond), na, nb)
}

// TestOpsCheckNoexec runs `gomux check` against a target whose user's
// ~/.cache is on a noexec filesystem: every step up to the login passes,
// the agent step says it fell back and that the home is noexec, and the
// Python and sudo steps still run.
func TestOpsCheckNoexec(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tgt := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 3*time.Minute)
	user := lab.OtherUser
	cache := filepath.Join("/home", user, ".cache")
	os.RemoveAll(cache)
	uid, gid := lookupIDs(t, user)
	must(t, os.Mkdir(cache, 0o700))
	must(t, os.Chown(cache, uid, gid))
	// The target's sshd has its own mount namespace (ip netns exec): the
	// mount goes there, and ends with it.
	pid := sshdPID(t, tgt)
	if out, err := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--mount", "mount", "-t", "tmpfs",
		"-o", fmt.Sprintf("noexec,nosuid,nodev,size=64m,mode=700,uid=%d,gid=%d", uid, gid), "gmx-noexec", cache).CombinedOutput(); err != nil {
		t.Fatalf("mount noexec: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("nsenter", "--target", strconv.Itoa(pid), "--mount", "umount", cache).Run() })

	cfgPath := filepath.Join(g.Dir, "gomux.yaml")
	cmd := exec.CommandContext(ctx, gomuxBinary(t), "check", "-config", cfgPath, "-as", "ops-check", user+"@"+tgt.Addr)
	out, _ := cmd.CombinedOutput()
	t.Logf("gomux check:\n%s", out)
	lines := string(out)
	for _, want := range []string{"ok    policy", "ok    connect", "ok    host_key", "ok    login", "warn  agent", "noexec", "fix: mount the home directory", "ok    python", "sudo"} {
		if !strings.Contains(lines, want) {
			t.Errorf("gomux check output lacks %q", want)
		}
	}
	// A denied target: the policy step fails with the fix, exit 1.
	cmd = exec.CommandContext(ctx, gomuxBinary(t), "check", "-config", cfgPath, "-as", "ops-check", user+"@192.0.2.1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "fail  policy") || !strings.Contains(string(out), "fix: add a targets rule") {
		t.Errorf("check of a denied target: %v\n%s", err, out)
	}
}

// sshdPID is the target's sshd listener, found among its namespace's
// processes.
func sshdPID(t *testing.T, tgt *harness.Target) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", tgt.Name).Output()
	must(t, err)
	for _, f := range strings.Fields(string(out)) {
		pid, _ := strconv.Atoi(f)
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if c := string(cmdline); strings.Contains(c, "sshd") && strings.Contains(c, "-D") {
			return pid
		}
	}
	t.Fatalf("no sshd in %s", tgt.Name)
	return 0
}
