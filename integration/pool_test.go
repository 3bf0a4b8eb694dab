package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy/upstream"
)

// TestPoolLifecycle: an upstream connection that drops is replaced on the
// next session, and an idle one is closed after idle_timeout.
func TestPoolLifecycle(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tgt := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{Upstream: "  idle_timeout: 3s\n"})
	ctx := ctxT(t, 2*time.Minute)
	if r := runCmd(g.SSH(ctx, tgt.Addr, "echo one"), nil); r.Stdout != "one\n" {
		t.Fatalf("first session: %+v", r)
	}
	// The network drops every connection: the next session reconnects.
	tgt.Relay.CloseAll()
	waitFor(t, 10*time.Second, func() bool { return len(g.Events(upstream.EventUpstreamClosed)) > 0 })
	if r := runCmd(g.SSH(ctx, tgt.Addr, "echo two"), nil); r.Stdout != "two\n" {
		t.Fatalf("session after the upstream dropped: %+v", r)
	}
	if n := len(g.Events(upstream.EventUpstreamConnect)); n != 2 {
		t.Errorf("upstream connects: %d, want 2", n)
	}
	// No one uses it now: it closes after the idle timeout.
	waitFor(t, 20*time.Second, func() bool { return len(g.Events(upstream.EventUpstreamIdleClose)) > 0 })
	waitFor(t, 10*time.Second, func() bool { return establishedSSH(t, tgt) == 0 })
	if !strings.Contains(g.Log(), eventTag(upstream.EventAgentExit)) {
		t.Errorf("agent session not ended with the idle connection")
	}
}

// TestUpstreamSSHAgent logs in to targets with the keys of the ssh-agent at
// gomux's SSH_AUTH_SOCK, and no key file at all.
func TestUpstreamSSHAgent(t *testing.T) {
	for _, b := range []string{"ssh-agent", "ssh-add"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
	lab := harness.Start(t, harness.Options{Targets: 1})
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agentCmd := exec.Command("ssh-agent", "-D", "-a", sock)
	must(t, agentCmd.Start())
	t.Cleanup(func() { agentCmd.Process.Kill(); agentCmd.Wait() })
	waitFor(t, 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil })
	add := exec.Command("ssh-add", lab.ClientKey)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v %s", err, out)
	}
	g := startGomux(t, lab, gomuxOptions{AgentSock: sock})
	ctx := ctxT(t, time.Minute)
	if r := runCmd(g.SSH(ctx, lab.Targets[0].Addr, "echo via-agent"), nil); r.Stdout != "via-agent\n" {
		t.Fatalf("session with ssh-agent credentials: %+v", r)
	}
}
