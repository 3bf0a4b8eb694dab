package upstream

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestAgentStartSaysFallback: how a target is served is an explicit
// result of Lease.Agent, never a nil agent with a nil error: ModeAgent
// with the agent where it runs, ModeFallback with the reason where it
// cannot (agent off in the config, the launcher finding no build for the
// machine), the same for every later caller on the connection.
func TestAgentStartSaysFallback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	check := func(t *testing.T, l *Lease, want Mode, reason string) {
		t.Helper()
		for i := range 2 {
			st, err := l.Agent(ctx)
			if err != nil {
				t.Fatalf("start %d: %v", i, err)
			}
			if st.Mode != want || st.Reason != reason || (st.Agent != nil) != (want == ModeAgent) {
				t.Errorf("start %d: %+v, want mode %v, reason %q", i, st, want, reason)
			}
		}
	}
	t.Run("agent", func(t *testing.T) {
		addr, hostKey := startUpstreamHelper(t)
		pool, l := leaseOn(ctx, t, benchPoolConfig(t, t.TempDir(), addr, hostKey), addr)
		defer pool.Close()
		defer l.Release()
		check(t, l, ModeAgent, "")
	})
	t.Run("disabled", func(t *testing.T) {
		addr, hostKey := startUpstreamHelper(t)
		cfg := benchPoolConfig(t, t.TempDir(), addr, hostKey)
		cfg.Upstream.Agent = false
		pool, l := leaseOn(ctx, t, cfg, addr)
		defer pool.Close()
		defer l.Release()
		check(t, l, ModeFallback, "agent disabled in config")
	})
	t.Run("no build", func(t *testing.T) {
		addr, hostKey := startLauncherSays(t, noAgentLine+" no agent build for machine sparc64\n")
		pool, l := leaseOn(ctx, t, benchPoolConfig(t, t.TempDir(), addr, hostKey), addr)
		defer pool.Close()
		defer l.Release()
		check(t, l, ModeFallback, "no agent build for machine sparc64")
	})
}

// startLauncherSays serves SSH connections whose exec channels print out
// and exit, as a launcher that does not start the agent would.
func startLauncherSays(t *testing.T, out string) (string, gossh.PublicKey) {
	scfg, signer, ln := newTestSSHServer(t)
	serveTestSSH(t, ln, func(c net.Conn) {
		sc, chans, reqs, err := gossh.NewServerConn(c, scfg)
		if err != nil {
			return
		}
		defer sc.Close()
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() { gossh.DiscardRequests(reqs) })
		for nc := range chans {
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			wg.Go(func() {
				for r := range creqs {
					r.Reply(r.Type == "exec", nil)
					if r.Type == "exec" {
						io.WriteString(ch, out)
						ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{0}))
						ch.Close()
					}
				}
			})
		}
	})
	return ln.Addr().String(), signer.PublicKey()
}
