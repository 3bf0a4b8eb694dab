package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
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
	waitFor(t, 10*time.Second, func() bool { return len(g.Events("upstream_closed")) > 0 })
	if r := runCmd(g.SSH(ctx, tgt.Addr, "echo two"), nil); r.Stdout != "two\n" {
		t.Fatalf("session after the upstream dropped: %+v", r)
	}
	if n := len(g.Events("upstream_connect")); n != 2 {
		t.Errorf("upstream connects: %d, want 2", n)
	}
	// No one uses it now: it closes after the idle timeout.
	waitFor(t, 20*time.Second, func() bool { return len(g.Events("upstream_idle_close")) > 0 })
	waitFor(t, 10*time.Second, func() bool { return establishedSSH(t, tgt) == 0 })
	if !strings.Contains(g.Log(), `"event":"agent_exit"`) {
		t.Errorf("agent session not ended with the idle connection")
	}
}
