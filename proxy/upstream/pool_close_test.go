package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
)

// TestPoolAcquireAfterClose: a lease asked for once the pool has closed
// is refused at once, with words a user understands, and leaves nothing
// behind; the pool's goroutines are not started after Close waited.
func TestPoolAcquireAfterClose(t *testing.T) {
	signer := newSigner(t)
	cfg := benchPoolConfig(t, t.TempDir(), "127.0.0.1:1", signer.PublicKey())
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	pool.Close() // twice is fine
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = pool.Acquire(ctx, Target{Host: "127.0.0.1:1", Dial: "127.0.0.1:1", User: "late"})
	if !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("Acquire after Close: %v, want %v", err, ErrShuttingDown)
	}
	if n := pool.Len(); n != 0 {
		t.Errorf("pool lists %d connections after a refused Acquire", n)
	}
}

// TestAgentHandshakeErrorSaysItOnce: a target whose agent prints its
// banner and then goes away fails the agent start with an error that
// names the handshake once, not once per layer.
func TestAgentHandshakeErrorSaysItOnce(t *testing.T) {
	scfg, signer, ln := newTestSSHServer(t)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc, chans, reqs, err := gossh.NewServerConn(c, scfg)
		if err != nil {
			return
		}
		defer sc.Close()
		wg.Go(func() { gossh.DiscardRequests(reqs) })
		for nc := range chans {
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			for r := range creqs {
				r.Reply(r.Type == "exec", nil)
				if r.Type == "exec" {
					// The agent's banner, then nothing: it died.
					fmt.Fprintf(ch, "%s %d\n", agent.Banner, agent.ProtocolVersion)
					ch.Close()
				}
			}
		}
	})
	addr := ln.Addr().String()
	pool, err := NewPool(benchPoolConfig(t, t.TempDir(), addr, signer.PublicKey()), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: "dies"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	st, err := l.Agent(ctx)
	if err == nil {
		t.Fatalf("agent start succeeded (%+v) against an agent that died", st)
	}
	if n := strings.Count(err.Error(), "handshake"); n != 1 {
		t.Errorf("error %q names the handshake %d times, want once", err, n)
	}
}
