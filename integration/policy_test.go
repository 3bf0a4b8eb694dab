package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
	"github.com/gomux/gomux/proxy/upstream"
)

// policyLab is three targets with names gomux (alone) resolves through its
// own /etc/hosts: t0 is the ordinary target (and trusts a user CA), t1
// authorizes only key B and forbids TCP forwarding in its sshd, t2 is the
// host no one may reach.
type policyLab struct {
	lab        *harness.Lab
	caKey      string // user CA private key; t0 trusts it
	keyB       string // the only key t1 authorizes
	hosts      string // /etc/hosts for gomux
	knownHosts string // upstream known_hosts, by name and address
	t0, t1, t2 *harness.Target
}

func startPolicyLab(t *testing.T) *policyLab {
	t.Helper()
	caKey := newClientKey(t)
	keyB := newClientKey(t)
	// sshd reads authorized_keys as the user: the directory must be
	// world-readable, which t.TempDir's parent is not.
	bDir, err := os.MkdirTemp("", "gmx-keyb-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(bDir) })
	must(t, os.Chmod(bDir, 0o755))
	must(t, os.WriteFile(filepath.Join(bDir, "authorized_keys"), []byte(readFile(t, keyB+".pub")), 0o644))
	lab := harness.Start(t, harness.Options{Targets: 3, SSHDConfig: func(i int) string {
		switch i {
		case 0:
			return "TrustedUserCAKeys " + caKey + ".pub\n"
		case 1:
			return "AllowTcpForwarding no\nAuthorizedKeysFile " + filepath.Join(bDir, "authorized_keys") + "\n"
		}
		return ""
	}})
	p := &policyLab{lab: lab, caKey: caKey, keyB: keyB, t0: lab.Targets[0], t1: lab.Targets[1], t2: lab.Targets[2]}
	names := map[*harness.Target][]string{
		p.t0: {"allowed.lab", "secret.lab", "splice.lab", "root-ok.lab"},
		p.t1: {"keyb.lab"},
		p.t2: {"denied.lab", "alias.lab"},
	}
	var hosts, kh strings.Builder
	hosts.WriteString("127.0.0.1 localhost\n::1 localhost\n")
	for _, tg := range []*harness.Target{p.t0, p.t1, p.t2} {
		fmt.Fprintf(&hosts, "%s %s\n", tg.Addr, strings.Join(names[tg], " "))
		line := tg.KnownHostsLine() // "ADDR key"
		fmt.Fprintf(&kh, "%s,%s\n", strings.Join(names[tg], ","), line)
	}
	dir := t.TempDir()
	p.hosts = filepath.Join(dir, "hosts")
	p.knownHosts = filepath.Join(dir, "known_hosts")
	must(t, os.WriteFile(p.hosts, []byte(hosts.String()), 0o644))
	must(t, os.WriteFile(p.knownHosts, []byte(kh.String()), 0o644))
	return p
}

// probeForward starts `ssh -N -L` through gomux to target and returns the
// first line a connection to the local end reads: an SSH banner when the
// forward reached an sshd, "" when gomux or the target refused it.
func probeForward(t *testing.T, ctx context.Context, g *Gomux, target, dest string) string {
	t.Helper()
	lport := freePort(t)
	fwd := g.SSH(ctx, target, "-N", "-o", "ExitOnForwardFailure=yes", "-L", fmt.Sprintf("127.0.0.1:%d:%s", lport, dest))
	var stderr syncBuffer
	fwd.Stderr = &stderr
	must(t, fwd.Start())
	defer func() { fwd.Process.Kill(); fwd.Wait() }()
	var c net.Conn
	waitFor(t, 20*time.Second, func() bool {
		var err error
		c, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", lport))
		return err == nil
	})
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return line
}

// stdioForward is `ssh -W dest gomux`: a front direct-tcpip. It returns the
// banner read from dest, or "" and ssh's exit status when refused.
func stdioForward(ctx context.Context, g *Gomux, dest string) result {
	cmd := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-W", dest, "gomux")
	cmd.WaitDelay = 5 * time.Second
	return runCmd(cmd, strings.NewReader(""))
}

// decisions returns gomux's policy_decision events for a requested host.
func decisions(g *Gomux, via, requested string) []map[string]any {
	var out []map[string]any
	for _, e := range g.Events(proxy.EventPolicyDecision) {
		if e["via"] == via && e["requested"] == requested {
			out = append(out, e)
		}
	}
	return out
}

func TestPolicyAttacks(t *testing.T) {
	p := startPolicyLab(t)
	lab := p.lab
	// A listener on gomux's own loopback: what a "*" rule must not reach.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	loopPort := ln.Addr().(*net.TCPAddr).Port
	accepted := make(chan struct{}, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	// The same port on t0's loopback, for the inner -L attack.
	srv := exec.Command("ip", "netns", "exec", p.t0.Name, "python3", "-m", "http.server", "--bind", "127.0.0.1", fmt.Sprint(loopPort))
	must(t, srv.Start())
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })

	targets := fmt.Sprintf(`  - hosts: [secret.lab]
    mode: deny
  - cidrs: [%s/32]
    mode: deny
  - hosts: [keyb.lab]
    credential: b
    remote_users: ["*"]
  - hosts: [root-ok.lab]
    remote_users: [root, %s]
  - hosts: [splice.lab]
    mode: splice
  - hosts: ["*.lab", %q, %q]
    remote_users: ["*"]
  - hosts: [%q]
    ports: [2222]
    mode: forward
  - hosts: ["*"]
    ports: [22, %d]
    mode: splice
`, p.t2.Addr, lab.User, p.t0.Addr, p.t1.Addr, p.t0.Addr, loopPort)
	g := startGomux(t, lab, gomuxOptions{
		Targets:    targets,
		KnownHosts: p.knownHosts,
		HostsFile:  p.hosts,
		Upstream:   fmt.Sprintf("  credentials:\n    b:\n      identity_files: [%s]\n", p.keyB),
	})
	ctx := ctxT(t, 5*time.Minute)
	if r := runCmd(g.SSH(ctx, "allowed.lab", "echo ok"), nil); r.Stdout != "ok\n" {
		t.Fatalf("allowed target by name: %+v", r)
	}

	t.Run("inner-forward-to-denied-host", func(t *testing.T) {
		// Before: the agent dialled any host from the target.
		for _, dest := range []string{"denied.lab:22", p.t2.Addr + ":22", "DENIED.LAB.:22"} {
			if got := probeForward(t, ctx, g, "allowed.lab", dest); got != "" {
				t.Errorf("-L %s inside an accelerated session reached %q", dest, got)
			}
		}
		ds := decisions(g, "inner", "denied.lab")
		if len(ds) == 0 || ds[0]["mode"] != "deny" || ds[0]["addr"] != p.t2.Addr || ds[0]["rule"] != float64(1) {
			t.Errorf("inner decision for denied.lab not logged as a deny by rule 1: %v", ds)
		}
	})

	t.Run("inner-forward-to-target-loopback", func(t *testing.T) {
		// The "*" rule allows this port, but not on loopback.
		for _, dest := range []string{fmt.Sprintf("127.0.0.1:%d", loopPort), fmt.Sprintf("localhost:%d", loopPort)} {
			if got := probeForward(t, ctx, g, "allowed.lab", dest); got != "" {
				t.Errorf("-L %s reached the target's loopback: %q", dest, got)
			}
		}
		if ds := decisions(g, "inner", "localhost"); len(ds) == 0 || (ds[0]["addr"] != "127.0.0.1" && ds[0]["addr"] != "::1") || ds[0]["mode"] != "deny" {
			t.Errorf("loopback decision: %v", ds)
		}
	})

	t.Run("nested-jump-to-denied-host", func(t *testing.T) {
		for _, dest := range []string{"denied.lab", "alias.lab", p.t2.Addr} {
			cmd := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", "gomux,allowed.lab", dest, "echo reached")
			if r := runCmd(cmd, nil); r.Code == 0 || strings.Contains(r.Stdout, "reached") {
				t.Errorf("ssh -J gomux,allowed.lab %s: %+v", dest, r)
			}
		}
		// An allowed nested hop still works, decided and served as the
		// same hop through the front: gomux terminates it.
		if got := probeForward(t, ctx, g, "allowed.lab", p.t1.Addr+":22"); !strings.HasPrefix(got, "SSH-2.0-gomux") {
			t.Errorf("allowed inner forward to t1: %q", got)
		}
	})

	t.Run("inner-forward-goes-through-target-sshd", func(t *testing.T) {
		// t1's sshd says AllowTcpForwarding no: a forward rule allows
		// t0:2222, but the forward is carried by t1's sshd, which
		// refuses it; from t0, whose sshd allows forwarding, it arrives.
		if r := runCmd(g.SSH(ctx, "keyb.lab", "echo ok"), nil); r.Stdout != "ok\n" {
			t.Fatalf("keyb.lab: %+v", r)
		}
		if got := probeForward(t, ctx, g, "keyb.lab", p.t0.Addr+":2222"); got != "" {
			t.Errorf("forward from a target whose sshd forbids forwarding reached %q", got)
		}
		if got := probeForward(t, ctx, g, "allowed.lab", p.t0.Addr+":2222"); !strings.HasPrefix(got, "SSH-2.0-OpenSSH") {
			t.Errorf("forward rule from t0 to its own sshd: %q", got)
		}
		allowed := false
		for _, e := range decisions(g, "inner", p.t0.Addr) {
			if e["mode"] == "forward" && e["agent_dial"] == false {
				allowed = true
			}
		}
		if !allowed {
			t.Errorf("policy did not allow the forward (the refusal must come from t1's sshd)")
		}
	})

	t.Run("name-spellings", func(t *testing.T) {
		// secret.lab is t0, which other names reach; the deny rule names
		// secret.lab, so no spelling of it may pass.
		for _, host := range []string{"secret.lab", "SECRET.LAB", "secret.lab.", "Secret.Lab."} {
			if r := stdioForward(ctx, g, host+":22"); r.Code == 0 || strings.HasPrefix(r.Stdout, "SSH-") {
				t.Errorf("-W %s: %+v", host, r)
			}
		}
		for _, e := range decisions(g, "front", "Secret.Lab.") {
			if e["host"] != "secret.lab" || e["mode"] != "deny" || e["rule"] != float64(0) {
				t.Errorf("Secret.Lab. decision %v", e)
			}
		}
		// Through -J as well (the ssh client passes the name on).
		if r := runCmd(g.SSH(ctx, "SECRET.LAB.", "echo reached"), nil); r.Code == 0 {
			t.Errorf("-J to SECRET.LAB.: %+v", r)
		}
		// The denied network by another name, an IP literal, an IPv4-mapped
		// IPv6 literal: all land in t2's /32.
		for _, host := range []string{"denied.lab", "alias.lab", p.t2.Addr, "[::ffff:" + p.t2.Addr + "]"} {
			if r := stdioForward(ctx, g, host+":22"); r.Code == 0 || strings.HasPrefix(r.Stdout, "SSH-") {
				t.Errorf("-W %s: %+v", host, r)
			}
		}
		if ds := decisions(g, "front", "alias.lab"); len(ds) == 0 || ds[0]["addr"] != p.t2.Addr || ds[0]["rule"] != float64(1) {
			t.Errorf("alias.lab decision %v", ds)
		}
		if r := stdioForward(ctx, g, "splice.lab:22"); !strings.HasPrefix(r.Stdout, "SSH-2.0-") {
			t.Errorf("control: splice.lab:22 not reached: %+v", r)
		}
	})

	t.Run("splice-rule-without-ports", func(t *testing.T) {
		// splice.lab's rule names no ports: 22 only. sshd itself listens
		// on 2222, past the relay.
		if r := stdioForward(ctx, g, "splice.lab:2222"); r.Code == 0 || strings.HasPrefix(r.Stdout, "SSH-") {
			t.Errorf("splice.lab:2222: %+v", r)
		}
		if r := stdioForward(ctx, g, p.t0.Addr+":2222"); r.Code == 0 || strings.HasPrefix(r.Stdout, "SSH-") {
			t.Errorf("t0:2222: %+v", r)
		}
		// The last rule is hosts "*" with this port, yet gomux's own
		// loopback and the metadata address stay out of reach.
		for _, dest := range []string{
			fmt.Sprintf("127.0.0.1:%d", loopPort), fmt.Sprintf("localhost:%d", loopPort),
			fmt.Sprintf("LOCALHOST.:%d", loopPort), fmt.Sprintf("[::ffff:127.0.0.1]:%d", loopPort),
			fmt.Sprintf("0.0.0.0:%d", loopPort), "169.254.169.254:22",
		} {
			if r := stdioForward(ctx, g, dest); r.Code == 0 {
				t.Errorf("-W %s: %+v", dest, r)
			}
		}
		select {
		case <-accepted:
			t.Errorf("gomux connected to its own loopback")
		default:
		}
	})

	t.Run("root-only-when-named", func(t *testing.T) {
		// allowed.lab's rule says remote_users ["*"]: not root.
		r := runCmd(g.SSHVerbose(ctx, "root@allowed.lab", "true"), nil)
		if r.Code != 255 || !strings.Contains(r.Stderr, "may not log in") {
			t.Errorf("root@allowed.lab: %+v", r)
		}
		if !hasEvent(g, proxy.EventInnerAuth, "remote_user", "root") {
			t.Errorf("no inner_auth denial for root logged")
		}
		// root-ok.lab lists root: policy lets it through to the target,
		// whose sshd (PermitRootLogin no) is what refuses it.
		r = runCmd(g.SSHVerbose(ctx, "root@root-ok.lab", "true"), nil)
		if r.Code == 0 || strings.Contains(r.Stderr, "may not log in") {
			t.Errorf("root@root-ok.lab: %+v", r)
		}
		tried := false
		for _, e := range g.Events(upstream.EventUpstreamConnect) {
			if e["remote_user"] == "root" && e["target"] == "root-ok.lab:22" {
				tried = true
			}
		}
		if !tried {
			t.Errorf("gomux did not try the target as root where the rule names root")
		}
	})

	t.Run("per-rule-credential", func(t *testing.T) {
		// t1 authorizes only key B. keyb.lab's rule names credential b;
		// t1 by address falls to the rule with the default credential.
		if r := runCmd(g.SSH(ctx, "keyb.lab", "echo b"), nil); r.Stdout != "b\n" {
			t.Errorf("keyb.lab with credential b: %+v", r)
		}
		if r := runCmd(g.SSHVerbose(ctx, p.t1.Addr, "echo default"), nil); r.Code == 0 {
			t.Errorf("t1 with the default credential: %+v", r)
		}
		if r := runCmd(g.SSH(ctx, "allowed.lab", "echo a"), nil); r.Stdout != "a\n" {
			t.Errorf("allowed.lab with the default credential: %+v", r)
		}
		fpB := strings.TrimSpace(runOut(t, "ssh-keygen", "-lf", p.keyB+".pub"))
		if f := strings.Fields(fpB); len(f) < 2 || !strings.Contains(p.t1.SSHDLog(), f[1]) {
			t.Errorf("t1's sshd did not log key B (%s):\n%s", fpB, p.t1.SSHDLog())
		}
	})
}

func runOut(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	must(t, err)
	return string(out)
}

// TestPolicyUpstreamUserCA: with upstream.user_ca, the target's own log
// says which person acted, not just which shared key.
func TestPolicyUpstreamUserCA(t *testing.T) {
	p := startPolicyLab(t)
	g := startGomux(t, p.lab, gomuxOptions{
		Targets: fmt.Sprintf("  - hosts: [allowed.lab]\n    remote_users: [\"*\"]\n  - hosts: [%q]\n    ports: [2222]\n    users: [%s]\n    mode: forward\n",
			p.t0.Addr, p.lab.User),
		KnownHosts:    p.knownHosts,
		HostsFile:     p.hosts,
		IdentityFiles: "[]",
		Upstream:      fmt.Sprintf("  user_ca: %s\n  user_cert_validity: 2m\n", p.caKey),
	})
	ctx := ctxT(t, 2*time.Minute)
	if r := runCmd(g.SSH(ctx, "allowed.lab", "echo as-$USER"), nil); r.Stdout != "as-"+p.lab.User+"\n" {
		t.Fatalf("login with a gomux user certificate: %+v", r)
	}
	want := "ID gomux:" + p.lab.User + " (serial "
	if log := p.t0.SSHDLog(); !strings.Contains(log, want) {
		t.Errorf("t0's sshd log does not name the person (%q):\n%s", want, log)
	}
	if !hasEvent(g, upstream.EventUpstreamConnect, "person", p.lab.User) {
		t.Errorf("upstream connection not keyed by person")
	}
	// A forward rule applies to this person: the certificate permits
	// port forwarding, which t0's sshd requires of a certificate before
	// it carries the forward (certificates for persons no forward rule
	// applies to do not: TestSignUserCertNamesPerson).
	if got := probeForward(t, ctx, g, "allowed.lab", p.t0.Addr+":2222"); !strings.HasPrefix(got, "SSH-2.0-OpenSSH") {
		t.Errorf("forward through a target that trusts gomux's certificate: %q", got)
	}
}

// TestPolicyConfigWithoutTargets: a shared bastion's config that forgot its
// rules (or commented them all out) must not start open to every host.
func TestPolicyConfigWithoutTargets(t *testing.T) {
	bin := gomuxBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gomux.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf("listen: 127.0.0.1:%d\nstate_dir: %s\ntargets:\n#  - hosts: ['*']\n", freePort(t), dir)), 0o600))
	ctx := ctxT(t, time.Minute)
	cmd := exec.CommandContext(ctx, bin, "serve", "-config", cfg)
	r := runCmd(cmd, nil)
	if r.Code != 2 || !strings.Contains(r.Stderr, "targets") {
		t.Errorf("gomux serve without targets: %+v", r)
	}
}
