package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// rootLab is one target whose sshd lets root log in by key and authorizes
// gomux's upstream key for root too: only gomux's policy stands between a
// person and a root shell there.
func rootLab(t *testing.T) *harness.Lab {
	t.Helper()
	lab := harness.Start(t, harness.Options{Targets: 1, SSHDConfig: func(int) string {
		return "PermitRootLogin prohibit-password\n"
	}})
	pub := readFile(t, lab.ClientKey+".pub")
	must(t, os.WriteFile(filepath.Join(lab.Dir, "authorized_keys", "root"), []byte(pub), 0o644))
	return lab
}

// TestAttackRemoteUserStyle: OpenSSH's sshd cuts a login name at its
// first ':' (the rest is a BSD auth style, cut on every platform), so
// "root:x" logs in as root. A rule that allows any remote user but root
// must not let that spelling through.
func TestAttackRemoteUserStyle(t *testing.T) {
	lab := rootLab(t)
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 2*time.Minute)
	if r := runCmd(g.SSH(ctx, tg.Addr, "id -un"), nil); r.Stdout != lab.User+"\n" {
		t.Fatalf("control: %+v", r)
	}
	for _, user := range []string{"root:x", "root:", "root:bsdauth", lab.User + ":x"} {
		r := runCmd(g.SSHVerbose(ctx, tg.Addr, "-l", user, "id -un"), nil)
		if r.Code != 255 || strings.Contains(r.Stdout, "root") || !strings.Contains(r.Stderr, "may not log in") {
			t.Errorf("-l %s: %+v", user, r)
		}
		if !hasEvent(g, proxy.EventInnerAuth, "remote_user", user) {
			t.Errorf("no inner_auth denial logged for %q", user)
		}
	}
	if log := tg.SSHDLog(); strings.Contains(log, "Accepted publickey for root") {
		t.Errorf("the target let gomux in as root:\n%s", log)
	}
	// gomux check, with the server's config, says the same.
	out, err := exec.CommandContext(ctx, gomuxBinary(t), "check", "-config", filepath.Join(g.Dir, "gomux.yaml"),
		"-as", lab.User, "root:x@"+tg.Addr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not as \"root:x\"") {
		t.Errorf("gomux check root:x@target: %v\n%s", err, out)
	}
}

// TestAttackCertificateLimits: user certificates whose validity or
// critical options say no. gomux must not read a restriction it cannot
// enforce (force-command) as no restriction, and must honour validity and
// source-address as sshd does.
func TestAttackCertificateLimits(t *testing.T) {
	x := startIdentityLab(t)
	ctx := ctxT(t, 2*time.Minute)
	otherCA := x.keygen("other_ca")
	cases := []struct {
		name string
		opts []string
		ok   bool
	}{
		{"cert-expired", []string{"-n", "alice", "-V", "-2h:-1h"}, false},
		{"cert-not-yet", []string{"-n", "alice", "-V", "+1h:+2h"}, false},
		{"cert-force-command", []string{"-n", "alice", "-O", "force-command=/bin/true"}, false},
		{"cert-source-elsewhere", []string{"-n", "alice", "-O", "source-address=192.0.2.0/24"}, false},
		{"cert-host", []string{"-n", "alice", "-h"}, false},
		{"cert-source-here", []string{"-n", "alice", "-O", "source-address=10.0.0.1,127.0.0.1/32"}, true},
	}
	for _, tc := range cases {
		key := x.keygen(tc.name)
		x.sign(key, tc.opts...)
		r := x.ssh(ctx, x.config(tc.name, "alice", key), "echo in")
		if tc.ok && (r.Code != 0 || r.Stdout != "in\n") {
			t.Errorf("%s: refused: %+v", tc.name, r)
		}
		if !tc.ok && (!denied(r) || strings.Contains(r.Stdout, "in")) {
			t.Errorf("%s: %+v", tc.name, r)
		}
	}
	// Signed by a CA gomux does not trust.
	key := x.keygen("cert-other-ca")
	if out, err := exec.Command("ssh-keygen", "-q", "-s", otherCA, "-I", "other", "-n", "alice", "-V", "-5m:+1h", key+".pub").CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -s: %v\n%s", err, out)
	}
	if r := x.ssh(ctx, x.config("cert-other-ca", "alice", key), "echo in"); !denied(r) {
		t.Errorf("certificate of an unknown CA: %+v", r)
	}
	// Each refusal is a front_auth event naming the login tried and why.
	reasons := map[string]bool{}
	for _, e := range x.g.Events(proxy.EventFrontAuth) {
		if e["accepted"] == false && e["user"] == "alice" {
			if s, ok := e["reason"].(string); ok {
				reasons[s] = true
			}
			if s, ok := e["error"].(string); ok {
				reasons[s] = true
			}
		}
	}
	for _, want := range []string{"force-command", "source address", "unknown CA", "expired", "not yet valid"} {
		found := false
		for r := range reasons {
			found = found || strings.Contains(r, want)
		}
		if !found {
			t.Errorf("no front_auth refusal logged mentioning %q: %v", want, reasons)
		}
	}
}

// TestAttackChannelKinds: what an sshd with forwarding off refuses, asked
// of gomux with the real client: agent and X11 forwarding into a target,
// remote forwards, unix-socket forwards (on gomux's own host from the
// front, on the target from inside), subsystems other than sftp, and env
// requests that would load code into the target's processes.
func TestAttackChannelKinds(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 2*time.Minute)
	dir, err := os.MkdirTemp("", "gmx-attack-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	// A unix socket that answers a secret, on gomux's host (which the
	// targets share the file system with here).
	secretSock := filepath.Join(dir, "secret.sock")
	ln, err := net.Listen("unix", secretSock)
	must(t, err)
	t.Cleanup(func() { ln.Close() })
	must(t, os.Chmod(secretSock, 0o777))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SECRET\n"))
			c.Close()
		}
	}()
	// A client-side ssh-agent holding a key, offered with -A.
	agentSock := filepath.Join(dir, "agent.sock")
	agentCmd := exec.Command("ssh-agent", "-D", "-a", agentSock)
	must(t, agentCmd.Start())
	t.Cleanup(func() { agentCmd.Process.Kill(); agentCmd.Wait() })
	waitFor(t, 10*time.Second, func() bool { _, err := os.Stat(agentSock); return err == nil })
	add := exec.Command("ssh-add", lab.ClientKey)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+agentSock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v %s", err, out)
	}

	t.Run("agent-x11-env", func(t *testing.T) {
		cmd := g.SSH(ctx, tg.Addr, "-A", "-X", "-o", "SetEnv=LD_PRELOAD=/nonexistent.so BASH_ENV=/nonexistent LC_GOMUX_OK=yes",
			`echo "sock=$SSH_AUTH_SOCK display=$DISPLAY preload=$LD_PRELOAD bashenv=$BASH_ENV lc=$LC_GOMUX_OK"`)
		cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+agentSock, "DISPLAY=:0")
		r := runCmd(cmd, nil)
		if r.Stdout != "sock= display= preload= bashenv= lc=yes\n" {
			t.Errorf("-A -X SetEnv: %+v", r)
		}
	})
	t.Run("remote-forward", func(t *testing.T) {
		r := runCmd(g.SSHVerbose(ctx, tg.Addr, "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22", "echo forwarded"), nil)
		if r.Code != 255 || strings.Contains(r.Stdout, "forwarded") {
			t.Errorf("-R: %+v", r)
		}
	})
	t.Run("remote-forward-on-the-front", func(t *testing.T) {
		// A listener on gomux's host, TCP or unix socket.
		for _, spec := range []string{"0:127.0.0.1:22", filepath.Join(dir, "listen.sock") + ":127.0.0.1:22"} {
			c := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-N", "-o", "ExitOnForwardFailure=yes", "-R", spec, "gomux")
			c.WaitDelay = 5 * time.Second
			if r := runCmd(c, nil); r.Code != 255 {
				t.Errorf("-R %s on the front: %+v", spec, r)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "listen.sock")); err == nil {
			t.Errorf("gomux made a unix-socket listener for a client")
		}
	})
	t.Run("no-password-methods", func(t *testing.T) {
		// Only publickey is offered, on the front and inside.
		g.SSHVerbose(ctx, tg.Addr) // writes the config at ssh's default log level
		noKeys := []string{"-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"}
		r := runCmd(exec.CommandContext(ctx, "ssh", append(append([]string{"-F", g.SSHConfig + ".info"}, noKeys...), "gomux", "true")...), nil)
		if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied (publickey)") {
			t.Errorf("front without a key: %+v", r)
		}
		r = runCmd(exec.CommandContext(ctx, "ssh", append(append([]string{"-F", g.SSHConfig + ".info", "-J", "gomux"}, noKeys...), tg.Addr, "true")...), nil)
		if r.Code != 255 || !strings.Contains(r.Stderr, "Permission denied (publickey)") {
			t.Errorf("inner login without a key: %+v", r)
		}
	})
	t.Run("subsystem", func(t *testing.T) {
		for _, sub := range []string{"shell", "netconf", "sftp-server"} {
			if r := runCmd(g.SSH(ctx, tg.Addr, "-s", sub), strings.NewReader("")); r.Code != 255 {
				t.Errorf("-s %s: %+v", sub, r)
			}
		}
	})
	t.Run("streamlocal", func(t *testing.T) {
		// From the front (gomux's own unix sockets), and inside an
		// accelerated session (the target's).
		front, inner := filepath.Join(dir, "front.sock"), filepath.Join(dir, "inner.sock")
		for _, f := range []struct {
			local string
			args  []string
		}{
			{front, []string{"-F", g.SSHConfig, "-N", "-L", front + ":" + secretSock, "gomux"}},
			{inner, []string{"-F", g.SSHConfig, "-N", "-J", "gomux", "-L", inner + ":" + secretSock, tg.Addr}},
		} {
			local, args := f.local, f.args
			fwd := exec.CommandContext(ctx, "ssh", args...)
			must(t, fwd.Start())
			var c net.Conn
			waitFor(t, 20*time.Second, func() bool {
				var err error
				c, err = net.Dial("unix", local)
				return err == nil
			})
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			fwd.Process.Kill()
			fwd.Wait()
			if strings.Contains(string(b), "SECRET") {
				t.Errorf("unix-socket forward %s reached the socket", local)
			}
		}
	})
	if r := runCmd(g.SSH(ctx, tg.Addr, "echo still"), nil); r.Stdout != "still\n" {
		t.Errorf("gomux after the attempts: %+v", r)
	}
}

// TestAttackSpliceRemoteUsers: a spliced connection is the client's own
// session with the target, so a splice rule's remote_users would be a
// promise nothing keeps (ssh -J gomux root@host logged in as root past
// remote_users: [deploy]). gomux refuses such a rule at start.
func TestAttackSpliceRemoteUsers(t *testing.T) {
	bin := gomuxBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gomux.yaml")
	must(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: 127.0.0.1:%d
state_dir: %s
targets:
  - hosts: [legacy.example]
    mode: splice
    remote_users: [deploy]
`, freePort(t), dir)), 0o600))
	ctx := ctxT(t, 15*time.Second)
	cmd := exec.CommandContext(ctx, bin, "serve", "-config", cfg)
	cmd.WaitDelay = 5 * time.Second
	r := runCmd(cmd, nil)
	if r.Code != 2 || !strings.Contains(r.Stderr, "targets[0].remote_users") {
		t.Errorf("gomux serve with a splice rule limiting remote users: %+v", r)
	}
}

// peakRSS is a process's peak resident set (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			var kb int64
			fmt.Sscan(f[1], &kb)
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// TestAttackDeepCommand: gomux reads every exec command with a shell
// parser (the Ansible recognizer, the log's redaction), which recurses once
// per nesting level. A person's command of nothing but "$(" costs a
// packet to send; it must not cost gomux hundreds of MiB of stack, or a
// few of them at once get gomux OOM-killed with every other person's
// sessions (systemd MemoryMax, the Kubernetes limit).
func TestAttackDeepCommand(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 2*time.Minute)
	if r := runCmd(g.SSH(ctx, tg.Addr, "echo ok"), nil); r.Stdout != "ok\n" {
		t.Fatalf("control: %+v", r)
	}
	before := peakRSS(t, g.cmd.Process.Pid)
	// Four arguments (the kernel bounds each at 128 KiB) that ssh joins
	// into one ~200 KiB command, sent by four clients at once; and one
	// under the recognizer's own 64 KiB bound, wrapped as Ansible wraps.
	deep := []string{"a=1 echo"}
	for i := 0; i < 4; i++ {
		deep = append(deep, strings.Repeat("$(", 25000))
	}
	wrapped := []string{"/bin/sh -c 'echo " + strings.Repeat("$(", 30000) + " && sleep 0'"}
	done := make(chan result, 5)
	for i := 0; i < 5; i++ {
		args := deep
		if i == 4 {
			args = wrapped
		}
		go func() {
			c := g.SSH(ctx, tg.Addr, args...)
			c.WaitDelay = 5 * time.Second
			done <- runCmd(c, nil)
		}()
	}
	for i := 0; i < 5; i++ {
		r := <-done
		if r.Code == 0 {
			t.Errorf("a command that does not parse succeeded: %+v", r)
		}
	}
	grew := peakRSS(t, g.cmd.Process.Pid) - before
	t.Logf("gomux peak RSS grew %d MiB", grew>>20)
	if grew > 128<<20 {
		t.Errorf("five deeply nested commands grew gomux's peak RSS by %d MiB", grew>>20)
	}
	if r := runCmd(g.SSH(ctx, tg.Addr, "echo still"), nil); r.Stdout != "still\n" {
		t.Errorf("gomux after the attempts: %+v", r)
	}
}

// TestAttackDNSChange: a name's address changes between two persons'
// forwards (DNS rebinding, a moved host). Each decision checks the address
// it dials, and a pooled upstream connection is shared only for the same
// address: bob, for whom t0 is denied, never rides alice's connection to
// t0 that the name led to before it moved to t2.
func TestAttackDNSChange(t *testing.T) {
	p := startPolicyLab(t)
	lab := p.lab
	writeHosts := func(flipTo *harness.Target) {
		hosts := readFile(t, p.hosts)
		var b strings.Builder
		for _, line := range strings.Split(strings.TrimRight(hosts, "\n"), "\n") {
			line = strings.TrimSuffix(line, " flip.lab")
			if strings.HasPrefix(line, flipTo.Addr+" ") {
				line += " flip.lab"
			}
			b.WriteString(line + "\n")
		}
		// In place: the file is bind-mounted over gomux's /etc/hosts.
		must(t, os.WriteFile(p.hosts, []byte(b.String()), 0o644))
	}
	writeHosts(p.t0)
	// Both hosts' keys are trusted for the name, as a fleet CA would be.
	appendFile(t, p.knownHosts, "flip.lab "+strings.SplitN(p.t0.KnownHostsLine(), " ", 2)[1]+"\n")
	appendFile(t, p.knownHosts, "flip.lab "+strings.SplitN(p.t2.KnownHostsLine(), " ", 2)[1]+"\n")
	g := startGomux(t, lab, gomuxOptions{
		Persons:    []string{"alice", "bob"},
		KnownHosts: p.knownHosts,
		HostsFile:  p.hosts,
		Targets: fmt.Sprintf(`  - hosts: [flip.lab]
    users: [alice]
    remote_users: ["*"]
  - cidrs: [%s/32]
    mode: deny
  - hosts: [flip.lab]
    remote_users: ["*"]
`, p.t0.Addr),
	})
	ctx := ctxT(t, 2*time.Minute)
	as := func(person string) result {
		c := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", person+"@gomux", "flip.lab", "hostname -I")
		return runCmd(c, nil)
	}
	if r := as("alice"); !strings.Contains(r.Stdout, p.t0.Addr) {
		t.Fatalf("alice to flip.lab (t0): %+v", r)
	}
	if r := as("bob"); r.Code != 255 || strings.Contains(r.Stdout, p.t0.Addr) {
		t.Fatalf("bob to flip.lab while it is t0: %+v", r)
	}
	// Keep alice's upstream connection to t0 open in the pool.
	hold := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", "alice@gomux", "flip.lab", "sleep 60")
	must(t, hold.Start())
	defer func() { hold.Process.Kill(); hold.Wait() }()
	writeHosts(p.t2)
	// Go re-reads /etc/hosts once its cache (5 s) is stale.
	waitFor(t, 30*time.Second, func() bool {
		stdioForward(ctx, g, "flip.lab:22")
		for _, e := range decisions(g, "front", "flip.lab") {
			if e["addr"] == p.t2.Addr {
				return true
			}
		}
		return false
	})
	r := as("bob")
	if !strings.Contains(r.Stdout, p.t2.Addr) || strings.Contains(r.Stdout, p.t0.Addr) {
		t.Errorf("bob to flip.lab after it moved to t2: %+v", r)
	}
}

// TestAttackNAT64Spelling: an IPv4 address a cidrs rule denies, written as
// IPv6 that carries it (NAT64's 64:ff9b::/96, which a cloud's NAT64
// gateway delivers to the IPv4 host; IPv4-compatible ::a.b.c.d). A "*"
// rule must not reach it: gomux refuses these by policy, as it does
// loopback, unless a rule names them in cidrs.
func TestAttackNAT64Spelling(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{Targets: fmt.Sprintf("  - cidrs: [%s/32]\n    mode: deny\n  - hosts: [\"*\"]\n    mode: splice\n", tg.Addr)})
	ctx := ctxT(t, time.Minute)
	g.SSHVerbose(ctx, tg.Addr) // writes the config at ssh's default log level
	for _, host := range []string{tg.Addr, "[64:ff9b::" + tg.Addr + "]", "[64:ff9b:1::" + tg.Addr + "]", "[::" + tg.Addr + "]"} {
		c := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig+".info", "-W", host+":22", "gomux")
		c.WaitDelay = 5 * time.Second
		r := runCmd(c, strings.NewReader(""))
		if r.Code != 255 || strings.HasPrefix(r.Stdout, "SSH-") || !strings.Contains(r.Stderr, "administratively prohibited") {
			t.Errorf("-W %s:22: %+v", host, r)
		}
	}
	for _, e := range g.Events(proxy.EventPolicyDecision) {
		if e["mode"] != "deny" {
			t.Errorf("decision not a deny: %v", e)
		}
	}
}
