package upstream

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/gomux/gomux/shim"
)

func TestPruneShimStates(t *testing.T) {
	budget := shim.NewBudget(1 << 20)
	p, err := NewPool(PoolConfig{Limits: Limits{ShimStateIdle: time.Hour, TempDirIdle: 30 * time.Minute, MaxShimStates: 3}, Budget: budget}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	newHost := func(addr string) *shim.Host {
		h := shim.NewHostLimits("u", "/home/u", "", shim.HostLimits{Budget: budget, TempDirIdle: 30 * time.Minute})
		p.mu.Lock()
		p.hosts[poolKey{host: addr, dial: addr, user: "u", cred: "default"}] = h
		p.mu.Unlock()
		return h
	}
	busy := newHost("busy")
	planTempDir(t, busy)
	if !busy.Stage("/home/u/.ansible/tmp/ansible-tmp-1-2-3/a", make([]byte, 1000), 0o600) {
		t.Fatal("not staged")
	}
	newHost("idle")
	// In use: a connection with a lease keeps its state whatever its age.
	p.mu.Lock()
	p.conns[poolKey{host: "inuse", dial: "inuse", user: "u", cred: "default"}] = &upstream{refs: 1}
	p.mu.Unlock()
	newHost("inuse")

	p.prune(time.Now().Add(10 * time.Minute))
	if n := p.ShimStates(); n != 3 {
		t.Fatalf("%d states after a prune within every idle time, want 3", n)
	}
	// Two hours on: the staged upload's temp dir has expired, and with it
	// the budget it held; idle, empty states are dropped.
	p.prune(time.Now().Add(2 * time.Hour))
	if n := p.ShimStates(); n != 1 {
		t.Fatalf("%d states after two idle hours, want only the one in use", n)
	}
	if u := budget.Used(); u != 0 {
		t.Fatalf("budget holds %d after the prune", u)
	}
	// The cap: a new state beyond MaxShimStates evicts an unused one.
	for _, a := range []string{"a", "b", "c"} {
		newHost(a)
		p.mu.Lock()
		if max := p.limits.MaxShimStates; len(p.hosts) > max {
			p.evictLocked(len(p.hosts) - max)
		}
		p.mu.Unlock()
	}
	p.mu.Lock()
	_, kept := p.hosts[poolKey{host: "inuse", dial: "inuse", user: "u", cred: "default"}]
	n := len(p.hosts)
	p.mu.Unlock()
	if n != 3 || !kept {
		t.Fatalf("%d states, in-use kept %v; want 3 with the one in use", n, kept)
	}
}

// planTempDir has host keep ~/.ansible/tmp/ansible-tmp-1-2-3 virtual, as
// in a real run: a first temp dir step in the base ran on the target and
// succeeded, so the next one is answered locally (as proxy's test helper
// of the same name).
func planTempDir(t testing.TB, host *shim.Host) shim.Plan {
	t.Helper()
	first := host.Exec(strings.ReplaceAll(tempDirCmd, "ansible-tmp-1-2-3", "ansible-tmp-1-2-0"), shim.ExecOptions{})
	if first.Reply {
		t.Fatalf("first temp dir step answered locally: %+v", first)
	}
	first.Done(0)
	return host.Exec(tempDirCmd, shim.ExecOptions{}).Plan
}

const tempDirCmd = `/bin/sh -c '( umask 77 && mkdir -p "` + "` echo ~/.ansible/tmp `" + `"&& mkdir "` + "` echo ~/.ansible/tmp/ansible-tmp-1-2-3 `" + `" && echo ansible-tmp-1-2-3="` + "` echo ~/.ansible/tmp/ansible-tmp-1-2-3 `" + `" ) && sleep 0'`
