package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
	"github.com/gomux/gomux/proxy/upstream"
)

// startBanner serves a one-line banner on addr inside target's namespace:
// what a database or web port behind a target looks like to a forward.
func startBanner(t *testing.T, tg *harness.Target, port int, banner string) {
	t.Helper()
	prog := fmt.Sprintf(`import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((%q, %d))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b%q)
    c.close()
`, tg.Addr, port, banner+"\n")
	cmd := exec.Command("ip", "netns", "exec", tg.Name, "python3", "-c", prog)
	must(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 15*time.Second, func() bool {
		out, _ := tg.Exec(context.Background(), "python3", "-c",
			fmt.Sprintf("import socket; socket.create_connection((%q, %d), 1)", tg.Addr, port))
		return len(out) == 0
	})
}

// forwardEvents are gomux's forward events for target (host:port) asked
// for from inside a session.
func innerForwards(g *Gomux, target, result string) int {
	n := 0
	for _, e := range g.Events(proxy.EventForward) {
		if e["via"] == "inner" && e["target"] == target && e["result"] == result {
			n++
		}
	}
	return n
}

// TestHopsDecidedAsFront: a hop inside an accelerated session is decided
// and served exactly as the same hop through the front. B's rule lets
// only the lab user in and B's sshd would take a key for root; before,
// `ssh -J gomux,user@A root@B` went raw through A's sshd to B's and got a
// root shell. Now gomux terminates the hop: root is refused, the lab user
// is served by gomux's own upstream, and a database port behind B is
// reached only where a forward rule grants it.
func TestHopsDecidedAsFront(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2, SSHDConfig: func(i int) string {
		if i == 1 {
			return "PermitRootLogin prohibit-password\n"
		}
		return ""
	}})
	a, b := lab.Targets[0], lab.Targets[1]
	// B's sshd takes the client key for root.
	rootKeys := filepath.Join(lab.Dir, "authorized_keys", "root")
	must(t, os.WriteFile(rootKeys, []byte(readFile(t, lab.ClientKey+".pub")), 0o644))
	t.Cleanup(func() { os.Remove(rootKeys) })
	const dbPort, granted = 15432, 15433
	startBanner(t, b, dbPort, "DB-NO-RULE")
	startBanner(t, b, granted, "DB-GRANTED")
	g := startGomux(t, lab, gomuxOptions{Targets: fmt.Sprintf(`  - hosts: [%q]
    remote_users: ["*"]
  - hosts: [%q]
    remote_users: [%s]
  - hosts: [%q]
    ports: [%d]
    mode: forward
`, a.Addr, b.Addr, lab.User, b.Addr, granted)})
	ctx := ctxT(t, 5*time.Minute)
	// The person knows B's own host key too, as an attacker would: the
	// hop is then checked by whichever key B's end presents.
	knownBoth := "UserKnownHostsFile=" + g.KnownHosts + " " + lab.KnownHostsFile()
	nested := func(hopUser, dest string, args ...string) *exec.Cmd {
		a := append([]string{"-F", g.SSHConfig, "-o", "LogLevel=INFO", "-o", knownBoth,
			"-J", "gomux," + hopUser + "@" + a.Addr, dest}, args...)
		return exec.CommandContext(ctx, "ssh", a...)
	}

	// ClientOptions name the lab user with -o User, which wins over
	// user@host: this control logs in as root without it.
	var asRoot []string
	for _, o := range lab.ClientOptions() {
		if strings.HasPrefix(o, "User=") {
			o = "User=root"
		}
		asRoot = append(asRoot, o)
	}
	if r := runCmd(exec.CommandContext(ctx, "ssh", append(asRoot, b.Addr, "id -u")...), nil); r.Stdout != "0\n" {
		t.Fatalf("control: B's sshd does not take the key for root directly: %+v", r)
	}
	b22 := b.Addr + ":22"

	t.Run("nested-jump-as-root", func(t *testing.T) {
		r := runCmd(nested(lab.User, "root@"+b.Addr, "id -u"), nil)
		if r.Code == 0 || strings.Contains(r.Stdout, "0") || !strings.Contains(r.Stderr, "may not log in") {
			t.Errorf("ssh -J gomux,%s@A root@B: %+v", lab.User, r)
		}
		if innerForwards(g, b22, "accelerated") == 0 {
			t.Errorf("the hop to B inside A's session was not terminated by gomux")
		}
		denied := false
		for _, e := range g.Events(proxy.EventInnerAuth) {
			if e["remote_user"] == "root" && e["target"] == b22 && e["result"] == "denied" {
				denied = true
			}
		}
		if !denied {
			t.Errorf("no inner_auth denial of root on B")
		}
	})

	t.Run("nested-jump-as-listed-user", func(t *testing.T) {
		r := runCmd(nested(lab.User, b.Addr, "echo on-b"), nil)
		if r.Code != 0 || r.Stdout != "on-b\n" {
			t.Fatalf("ssh -J gomux,A B as %s: %+v", lab.User, r)
		}
		// Served from gomux's own upstream to B, as `-J gomux B` is.
		if !hasEvent(g, upstream.EventUpstreamConnect, "target", b22) {
			t.Errorf("gomux made no upstream connection of its own to B")
		}
		accepted := false
		for _, e := range g.Events(proxy.EventInnerAuth) {
			if e["target"] == b22 && e["remote_user"] == lab.User && e["result"] == "accepted" {
				accepted = true
			}
		}
		if !accepted {
			t.Errorf("the inner login on B is not logged as gomux's")
		}
	})

	t.Run("stdio-forward-inside-session", func(t *testing.T) {
		// -W inside A's session, as a ProxyCommand.
		proxy := fmt.Sprintf("ssh -F %s -J gomux %s@%s -W %%h:%%p", g.SSHConfig, lab.User, a.Addr)
		for _, tc := range []struct {
			user string
			ok   bool
		}{{"root", false}, {lab.User, true}} {
			cmd := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-o", knownBoth, "-o", "ProxyJump=none", "-o", "ProxyCommand="+proxy,
				tc.user+"@"+b.Addr, "echo via-w")
			r := runCmd(cmd, nil)
			if (r.Code == 0 && r.Stdout == "via-w\n") != tc.ok {
				t.Errorf("-W B:22 inside A's session as %s: %+v", tc.user, r)
			}
		}
	})

	t.Run("local-forward-to-ssh-port", func(t *testing.T) {
		// -L to B's SSH port: the banner is gomux's, and logging in
		// through it obeys B's rule.
		if got := probeForward(t, ctx, g, a.Addr, b22); !strings.HasPrefix(got, "SSH-2.0-gomux") {
			t.Fatalf("-L to B:22 inside A's session reached %q, want gomux's inner server", got)
		}
		lport := freePort(t)
		fwd := g.SSH(ctx, a.Addr, "-N", "-o", "ExitOnForwardFailure=yes", "-L", fmt.Sprintf("127.0.0.1:%d:%s", lport, b22))
		must(t, fwd.Start())
		defer func() { fwd.Process.Kill(); fwd.Wait() }()
		through := func(user string) result {
			cmd := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-o", "ProxyJump=none", "-o", "HostKeyAlias="+b.Addr,
				"-p", fmt.Sprint(lport), user+"@127.0.0.1", "echo via-l")
			return runCmd(cmd, nil)
		}
		waitFor(t, 20*time.Second, func() bool { return through(lab.User).Stdout == "via-l\n" })
		if r := through("root"); r.Code == 0 {
			t.Errorf("root through -L to B:22: %+v", r)
		}
	})

	t.Run("database-port", func(t *testing.T) {
		// No rule grants B's database port: refused inside A's session,
		// where before A's sshd carried it.
		if got := probeForward(t, ctx, g, a.Addr, fmt.Sprintf("%s:%d", b.Addr, dbPort)); got != "" {
			t.Errorf("-L to a database port no rule grants reached %q", got)
		}
		// The forward rule's port is reached, sent on from A.
		if got := probeForward(t, ctx, g, a.Addr, fmt.Sprintf("%s:%d", b.Addr, granted)); got != "DB-GRANTED\n" {
			t.Errorf("-L to the port a forward rule grants: %q", got)
		}
		if innerForwards(g, fmt.Sprintf("%s:%d", b.Addr, granted), "forwarded") == 0 {
			t.Errorf("the granted forward is not logged")
		}
		// The front does not open a forward rule's destination.
		if r := stdioForward(ctx, g, fmt.Sprintf("%s:%d", b.Addr, granted)); r.Code == 0 || strings.Contains(r.Stdout, "DB-") {
			t.Errorf("-W to a forward rule's destination through the front: %+v", r)
		}
	})
}

// TestHopsPolicyReachesOpenConnections: bob is removed from the only rule
// that lets him reach a host, and gomux reloads. Before, bob's open
// ControlMaster went on running new commands. Now it is closed at the
// reload (and at the latest within the recheck interval), its new channels
// are refused, and a person the rule still allows keeps their session.
func TestHopsPolicyReachesOpenConnections(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	rule := func(users string) string {
		return fmt.Sprintf("  - hosts: [%q]\n    users: [%s]\n    remote_users: [\"*\"]\n", tg.Addr, users)
	}
	withBob := rule(lab.User + ", bob")
	g := startGomux(t, lab, gomuxOptions{Targets: withBob, Persons: []string{"bob"}})
	ctx := ctxT(t, 3*time.Minute)
	cfgPath := filepath.Join(g.Dir, "gomux.yaml")
	orig := readFile(t, cfgPath)

	sock := filepath.Join(t.TempDir(), "cm")
	master := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", "bob@gomux", "-M", "-S", sock, "-N", tg.Addr)
	must(t, master.Start())
	masterDone := make(chan error, 1)
	go func() { masterDone <- master.Wait() }()
	t.Cleanup(func() { master.Process.Kill(); <-masterDone })
	viaMaster := func(args ...string) result {
		a := append([]string{"-F", g.SSHConfig, "-S", sock, "-o", "ControlMaster=no", tg.Addr}, args...)
		return runCmd(exec.CommandContext(ctx, "ssh", a...), nil)
	}
	waitFor(t, 20*time.Second, func() bool { return viaMaster("echo as-bob").Stdout == "as-bob\n" })

	// The lab user's session, open across the reload: still allowed.
	open, br := openSession(t, ctx, g, tg.Addr, 5)

	must(t, os.WriteFile(cfgPath, []byte(strings.Replace(orig, withBob, rule(lab.User), 1)), 0o600))
	must(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, 20*time.Second, func() bool { return hasEvent(g, proxy.EventReload, "result", "ok") })
	// The recheck interval is the default, 15 s: the reload itself must
	// close bob's master, well before.
	select {
	case <-masterDone:
		masterDone <- nil // for the cleanup
	case <-time.After(15 * time.Second):
		t.Errorf("bob's ControlMaster still open after the reload")
	}
	if r := viaMaster("echo after"); r.Stdout == "after\n" {
		t.Errorf("bob ran a command after his removal: %+v", r)
	}
	if !hasEvent(g, proxy.EventPolicyRevoked, "user", "bob") {
		t.Errorf("no policy_revoked event naming bob")
	}
	if hasEvent(g, proxy.EventPolicyRevoked, "user", lab.User) {
		t.Errorf("the lab user's session was cut though the rule still allows it")
	}
	rest, _ := io.ReadAll(br)
	if err := open.Wait(); err != nil || string(rest) != "still-here\n" {
		t.Errorf("the allowed session open across the reload: %v %q", err, rest)
	}
	r := runCmd(exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", "bob@gomux", tg.Addr, "echo new"), nil)
	if r.Code == 0 {
		t.Errorf("bob connected anew after his removal: %+v", r)
	}
}

// openSession starts a command through gomux to addr that prints
// "started", sleeps secs and prints "still-here", and returns once it
// has started: a session open across whatever the test does next. The
// caller reads the rest from the reader and waits for the command.
func openSession(t *testing.T, ctx context.Context, g *Gomux, addr string, secs int) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	c := g.SSH(ctx, addr, fmt.Sprintf("echo started; sleep %d; echo still-here", secs))
	stdout, err := c.StdoutPipe()
	must(t, err)
	must(t, c.Start())
	br := bufio.NewReader(stdout)
	if l, _ := br.ReadString('\n'); l != "started\n" {
		t.Fatalf("open session: %q", l)
	}
	return c, br
}
