package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// The addresses of the balancer tests: clients connect to haproxy from
// clientAddr, haproxy connects to gomux from 127.0.0.1, the only address
// gomux trusts for PROXY headers (haproxyTrust).
const (
	clientAddr   = "127.0.0.2"
	haproxyTrust = "proxy_protocol:\n  trusted_networks: [127.0.0.1/32]\n"
)

// haproxy is one Debian haproxy process run in the foreground with its own
// config file, stopped by its PID when the test ends.
type haproxy struct {
	Port int
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
}

// startHAProxy runs haproxy with deploy/haproxy.cfg, changed only where
// the test must: its bind address and the servers, one per backend.
func startHAProxy(t *testing.T, backends ...string) *haproxy {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("haproxy not installed (apt-get install haproxy, or make deps)")
	}
	src, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "haproxy.cfg"))
	must(t, err)
	h := &haproxy{Port: freePort(t)}
	var cfg strings.Builder
	for _, l := range strings.Split(string(src), "\n") {
		switch {
		case strings.HasPrefix(l, "    bind "):
			l = fmt.Sprintf("    bind 127.0.0.1:%d", h.Port)
		case strings.HasPrefix(l, "    server "):
			continue
		}
		cfg.WriteString(l + "\n")
	}
	for i, be := range backends {
		fmt.Fprintf(&cfg, "    server gomux-%d %s\n", i, be)
	}
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	must(t, os.WriteFile(path, []byte(cfg.String()), 0o600))
	if out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	// -db: foreground, no daemon, so the PID is haproxy's own.
	h.cmd = exec.Command("haproxy", "-db", "-f", path)
	h.cmd.Stdout, h.cmd.Stderr = h, h
	must(t, h.cmd.Start())
	waited := make(chan struct{})
	go func() { h.cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-waited:
		case <-time.After(10 * time.Second):
			h.cmd.Process.Kill()
			<-waited
		}
		if t.Failed() {
			t.Logf("haproxy output:\n%s", h.output())
		}
	})
	waitFor(t, 20*time.Second, func() bool {
		select {
		case <-waited:
			t.Fatalf("haproxy exited:\n%s", h.output())
		default:
		}
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.Port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return h
}

func (h *haproxy) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.out.Write(p)
}

func (h *haproxy) output() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.out.String()
}

// sshConfig is an ssh_config whose gomux is haproxy, reached from
// clientAddr; identity is the Host * block's identity lines (default: the
// lab's key).
func (h *haproxy) sshConfig(t *testing.T, lab *harness.Lab, knownHosts, identity string) string {
	t.Helper()
	if identity == "" {
		identity = fmt.Sprintf("  IdentityFile %s\n", lab.ClientKey)
	}
	p := filepath.Join(t.TempDir(), "ssh_config")
	must(t, os.WriteFile(p, []byte(fmt.Sprintf(`Host gomux
  HostName 127.0.0.1
  Port %d
  HostKeyAlias gomux
  BindAddress %s
Host *
  User %s
%s  IdentitiesOnly yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
  ControlMaster no
  ControlPath none
`, h.Port, clientAddr, lab.User, identity, knownHosts)), 0o600))
	return p
}

// replicaPair starts two gomux replicas that trust haproxy's address for
// PROXY headers, the second sharing the first one's host CA (copied, as
// a Kubernetes Secret would be) in a state dir of its own.
func replicaPair(t *testing.T, lab *harness.Lab, first, second gomuxOptions) (*Gomux, *Gomux) {
	t.Helper()
	first.Extra += haproxyTrust
	a := startGomux(t, lab, first)
	stateB := filepath.Join(t.TempDir(), "state")
	must(t, os.MkdirAll(stateB, 0o700))
	caKey, err := os.ReadFile(filepath.Join(a.Dir, "state", "host_ca_ed25519"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(stateB, "host_ca_ed25519"), caKey, 0o600))
	second.StateDir = stateB
	second.Extra += haproxyTrust
	b := startGomux(t, lab, second)
	if readFile(t, a.KnownHosts) != readFile(t, b.KnownHosts) {
		t.Fatalf("replicas print different @cert-authority lines")
	}
	return a, b
}

// auditFile is the path of gomux's audit.log_file, read from its config.
func auditFile(t *testing.T, g *Gomux) string {
	t.Helper()
	cfg := readFile(t, filepath.Join(g.Dir, "gomux.yaml"))
	i := strings.Index(cfg, "log_file: ")
	if i < 0 {
		t.Fatalf("no audit.log_file in the config")
	}
	return strings.TrimSpace(strings.SplitN(cfg[i+len("log_file: "):], "\n", 2)[0])
}

// certAuth writes an auth: section body in which the lab's key logs in
// as lab.User (users/%u.keys) and certificates of a new user CA are
// trusted, and returns it with the CA's private key.
func certAuth(t *testing.T, lab *harness.Lab) (auth, ca string) {
	t.Helper()
	dir := t.TempDir()
	users := filepath.Join(dir, "users")
	must(t, os.MkdirAll(users, 0o700))
	pub, err := os.ReadFile(lab.ClientKey + ".pub")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(users, lab.User+".keys"), pub, 0o600))
	ca = filepath.Join(dir, "user_ca")
	must(t, exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ca).Run())
	return fmt.Sprintf("  authorized_keys: [%s]\n  user_ca_keys: [%s.pub]\n", filepath.Join(users, "%u.keys"), ca), ca
}

// certKey makes a key that no authorized_keys file lists and a
// certificate for it, for lab.User, usable only from sourceAddr.
func certKey(t *testing.T, lab *harness.Lab, ca, sourceAddr string) string {
	t.Helper()
	key := filepath.Join(t.TempDir(), "id")
	must(t, exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).Run())
	if out, err := exec.Command("ssh-keygen", "-q", "-s", ca, "-I", "haproxy-"+sourceAddr, "-n", lab.User,
		"-O", "source-address="+sourceAddr+"/32", key+".pub").CombinedOutput(); err != nil {
		t.Fatalf("sign: %v %s", err, out)
	}
	return key
}

// TestOpsHAProxy puts Debian's haproxy (deploy/haproxy.cfg: round robin,
// send-proxy-v2) in front of two gomux replicas that trust only
// haproxy's address, with clients connecting from another address and
// ControlPersist off: both replicas serve, the audit file of each names
// the client's address (never haproxy's) on every login, forward and
// command, and a certificate whose source-address is the client's is
// accepted while one for another address is refused, at the front and at
// the inner login.
func TestOpsHAProxy(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2})
	auth, ca := certAuth(t, lab)
	audit := func() string { return "audit:\n  log_file: " + filepath.Join(t.TempDir(), "audit.jsonl") + "\n" }
	a, b := replicaPair(t, lab, gomuxOptions{Auth: auth, Extra: audit()}, gomuxOptions{Auth: auth, Extra: audit()})
	h := startHAProxy(t, a.Addr, b.Addr)
	ctx := ctxT(t, 5*time.Minute)

	viaKey := h.sshConfig(t, lab, a.KnownHosts, "")
	for i := range 4 {
		tgt := lab.Targets[i%2]
		r := runCmd(exec.CommandContext(ctx, "ssh", "-F", viaKey, "-J", "gomux", tgt.Addr, "echo via-haproxy"), nil)
		if r.Code != 0 || r.Stdout != "via-haproxy\n" {
			t.Fatalf("ssh through haproxy: %+v", r)
		}
	}
	if na, nb := len(a.Events(proxy.EventInnerConnect)), len(b.Events(proxy.EventInnerConnect)); na == 0 || nb == 0 {
		t.Errorf("inner sessions: %d on replica a, %d on b; round robin should use both", na, nb)
	}

	certCfg := func(key string) string {
		return h.sshConfig(t, lab, a.KnownHosts, fmt.Sprintf("  IdentityFile %s\n  CertificateFile %s-cert.pub\n", key, key))
	}
	good := certCfg(certKey(t, lab, ca, clientAddr))
	for range 2 { // once on each replica
		r := runCmd(exec.CommandContext(ctx, "ssh", "-F", good, "-J", "gomux", lab.Targets[0].Addr, "echo cert-ok"), nil)
		if r.Code != 0 || r.Stdout != "cert-ok\n" {
			t.Errorf("certificate with source-address %s from %s through haproxy: %+v", clientAddr, clientAddr, r)
		}
	}
	bad := certCfg(certKey(t, lab, ca, "127.0.0.3"))
	for range 2 {
		r := runCmd(exec.CommandContext(ctx, "ssh", "-F", bad, "-J", "gomux", lab.Targets[0].Addr, "echo cert-ok"), nil)
		if r.Code == 0 || strings.Contains(r.Stdout, "cert-ok") {
			t.Errorf("certificate with source-address 127.0.0.3 accepted from %s: %+v", clientAddr, r)
		}
	}
	checkHAProxyAudit(t, lab, a, b)
	// haproxy's health checks (deploy/haproxy.cfg: check, with
	// send-proxy-v2) reach gomux as PROXY v2 LOCAL headers, which keep
	// the balancer's address and are not refused.
	for _, g := range []*Gomux{a, b} {
		waitFor(t, 20*time.Second, func() bool { return hasEvent(g, proxy.EventProxyProtocol, "local", true) })
	}
}

// checkHAProxyAudit reads both replicas' audit files: every line of a
// client's doing names the client's address, certificate logins were
// accepted and refused as their source-address says, and the balancer's
// own address appears only on its health checks' noise.
func checkHAProxyAudit(t *testing.T, lab *harness.Lab, a, b *Gomux) {
	t.Helper()
	var certOK, certRefused, lines int
	for i, g := range []*Gomux{a, b} {
		byEvent := auditLines(t, auditFile(t, g))
		checkAuditSchema(t, byEvent)
		var all []map[string]any
		for _, es := range byEvent {
			all = append(all, es...)
		}
		for _, e := range all {
			src, ok := e["source"].(string)
			if !ok || e["event"] == proxy.EventFrontNoise || e["event"] == proxy.EventReload {
				continue
			}
			lines++
			if !strings.HasPrefix(src, clientAddr+":") {
				t.Errorf("replica %d: audit line with source %s, want the client's %s: %v", i, src, clientAddr, e)
			}
			if e["event"] != proxy.EventFrontAuth {
				continue
			}
			switch {
			case e["accepted"] == true && strings.Contains(fmt.Sprint(e), "haproxy-"+clientAddr):
				if certOK++; certOK == 1 {
					t.Logf("replica %d audit line, certificate accepted: %v", i, e)
				}
			case e["accepted"] == false && strings.Contains(fmt.Sprint(e), "source address "+clientAddr+" not allowed"):
				if certRefused++; certRefused == 1 {
					t.Logf("replica %d audit line, certificate refused: %v", i, e)
				}
			}
		}
	}
	if certOK == 0 || certRefused == 0 {
		t.Errorf("audit: %d certificate logins accepted from %s, %d refused by source-address; want both", certOK, clientAddr, certRefused)
	}
	t.Logf("%d audit lines from clients, all with source %s:*; %d certificate logins accepted, %d refused", lines, clientAddr, certOK, certRefused)
}

// TestOpsHAProxyPlaybook runs the seed playbook through haproxy in front
// of two replicas, ControlPersist and pipelining off (every step a new
// connection, to either replica), and drains one replica with SIGTERM
// mid-play: the recap equals the direct run's, the drain was not cut
// short, and the other replica served what followed.
func TestOpsHAProxyPlaybook(t *testing.T) {
	if os.Getenv("GOMUX_SOAK") == "" {
		t.Skip("minutes long: run by make soak (GOMUX_SOAK=1)")
	}
	lab := harness.Start(t, harness.Options{Targets: 2})
	a, b := replicaPair(t, lab, gomuxOptions{}, gomuxOptions{})
	h := startHAProxy(t, a.Addr, b.Addr)
	ctx := ctxT(t, 15*time.Minute)
	env := []string{"ANSIBLE_SSH_ARGS=-o ControlMaster=no -o ControlPersist=no", "ANSIBLE_PIPELINING=False"}
	direct := runPlaybookOpts(ctx, t, lab, nil, playbookPath("seed.yml"), playOpts{env: env})
	if direct.Err != nil || len(direct.Recap) != len(lab.Targets) {
		t.Fatalf("direct run: %v\n%s", direct.Err, direct.Output)
	}
	via, served := playAndDrain(ctx, t, lab, a, b, playOpts{env: env, sshConfig: h.sshConfig(t, lab, a.KnownHosts, "")})
	if via.Err != nil || via.recapString() != direct.recapString() {
		t.Fatalf("through haproxy with a replica drained mid-play:\n%s\nwant:\n%s\n%s", via.recapString(), direct.recapString(), via.Output)
	}
	if served == 0 {
		t.Errorf("replica b served nothing after replica a drained")
	}
	t.Logf("direct %v, through haproxy %v; replica a drained after %d inner sessions, b served %d after",
		direct.Wall.Round(time.Millisecond), via.Wall.Round(time.Millisecond), len(a.Events(proxy.EventInnerConnect)), served)
}

// playAndDrain runs the seed playbook through old and new, and sends old
// SIGTERM once it has served a few inner sessions; it waits for the play
// and for old to exit, checks old's drain ended in time, and returns the
// run and how many inner sessions new served after the drain began.
func playAndDrain(ctx context.Context, t *testing.T, lab *harness.Lab, old, new *Gomux, o playOpts) (playbookRun, int) {
	t.Helper()
	done := make(chan playbookRun, 1)
	go func() { done <- runPlaybookOpts(ctx, t, lab, old, playbookPath("seed.yml"), o) }()
	var run playbookRun
	drained, before := false, 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for finished := false; !finished; {
		select {
		case run = <-done:
			finished = true
		case <-tick.C:
			// Drain once old has served a good part of the play and has
			// an inner session open (a step in flight) as far as its log
			// says.
			opened, closed := len(old.Events(proxy.EventInnerConnect)), len(old.Events(proxy.EventInnerDisconnect))
			if !drained && opened >= 20 && opened > closed && len(new.Events(proxy.EventInnerConnect)) > 0 {
				before = len(new.Events(proxy.EventInnerConnect))
				must(t, old.cmd.Process.Signal(syscall.SIGTERM))
				drained = true
				t.Logf("SIGTERM to the replica on %s after %d inner sessions there, %d of them open", old.Addr, opened, opened-closed)
			}
		}
	}
	if !drained {
		t.Fatalf("the play ended before the replica to drain had served 20 inner sessions:\n%s", run.Output)
	}
	select {
	case <-old.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the drained replica did not exit")
	}
	if strings.Contains(old.Log(), "drain cut short") || strings.Contains(old.Log(), "drain timeout") {
		t.Errorf("the drain was cut short: a task in flight was ended")
	}
	// What ran on old while it drained: its channels that ended after the
	// drain began (the timing decides how many; logged, not required).
	log := old.Log()
	if i := strings.Index(log, `"message":"draining"`); i >= 0 {
		t.Logf("on the draining replica after SIGTERM: %d channels ended with their exit status, %d inner sessions closed",
			strings.Count(log[i:], eventTag(proxy.EventChannel)), strings.Count(log[i:], eventTag(proxy.EventInnerDisconnect)))
	}
	return run, len(new.Events(proxy.EventInnerConnect)) - before
}
