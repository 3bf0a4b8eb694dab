package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
)

// ended waits for l's connection to end, or fails the test when ctx does.
func ended(ctx context.Context, t *testing.T, l *Lease) {
	t.Helper()
	select {
	case <-l.Dead():
	case <-ctx.Done():
		t.Fatal("the connection did not end")
	}
}

// saysWhy checks that err is a later caller's error on a connection that
// ended for cause: it wraps ErrEnded and the cause, and says so.
func saysWhy(t *testing.T, what string, err, cause error) {
	t.Helper()
	if !errors.Is(err, ErrEnded) || !errors.Is(err, cause) {
		t.Errorf("%s: %v; want it to wrap %v and %v", what, err, ErrEnded, cause)
	}
	if err != nil && !strings.Contains(err.Error(), cause.Error()) {
		t.Errorf("%s: %q does not say %q", what, err, cause)
	}
}

// TestUpstreamSaysWhyItDied: a connection records the first thing that
// ended it (its keepalives unanswered, the idle timer, the pool closing,
// the target hanging up), and every later caller on a lease of it gets
// that reason wrapped in its error, as yamux's shutdownErr: Err, Agent,
// OpenChannel, NewSession and DialContext alike.
func TestUpstreamSaysWhyItDied(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	later := func(t *testing.T, l *Lease, cause error) {
		t.Helper()
		saysWhy(t, "Err", l.Err(), cause)
		_, err := l.Agent(ctx)
		saysWhy(t, "Agent", err, cause)
		_, _, err = l.OpenChannel("session", nil)
		saysWhy(t, "OpenChannel", err, cause)
		_, err = l.NewSession()
		saysWhy(t, "NewSession", err, cause)
		_, err = l.DialContext(ctx, "tcp", "127.0.0.1:1")
		saysWhy(t, "DialContext", err, cause)
	}
	t.Run("keepalive", func(t *testing.T) {
		addr, hostKey := startUpstreamHelper(t)
		relay := startBlackHoleRelay(t, addr)
		cfg := benchPoolConfig(t, t.TempDir(), relay.addr, hostKey)
		cfg.Upstream.KeepaliveInterval = 50 * time.Millisecond
		cfg.Upstream.KeepaliveCountMax = 2
		pool, l := leaseOn(ctx, t, cfg, relay.addr)
		defer pool.Close()
		defer l.Release()
		if err := l.Err(); err != nil {
			t.Fatalf("Err on a live connection: %v", err)
		}
		relay.blackHole.Store(true)
		ended(ctx, t, l)
		later(t, l, ErrKeepaliveTimeout)
	})
	t.Run("idle", func(t *testing.T) {
		addr, hostKey := startUpstreamHelper(t)
		cfg := benchPoolConfig(t, t.TempDir(), addr, hostKey)
		cfg.Upstream.IdleTimeout = time.Millisecond
		pool, l := leaseOn(ctx, t, cfg, addr)
		defer pool.Close()
		l.Release()
		ended(ctx, t, l)
		saysWhy(t, "Err", l.Err(), ErrIdleTimeout)
	})
	t.Run("pool closed", func(t *testing.T) {
		addr, hostKey := startUpstreamHelper(t)
		pool, l := leaseOn(ctx, t, benchPoolConfig(t, t.TempDir(), addr, hostKey), addr)
		defer l.Release()
		pool.Close()
		ended(ctx, t, l)
		later(t, l, ErrShuttingDown)
	})
	t.Run("target hung up", func(t *testing.T) {
		scfg, signer, ln := newTestSSHServer(t)
		hangUp := make(chan struct{})
		serveTestSSH(t, ln, func(c net.Conn) {
			sc, chans, reqs, err := gossh.NewServerConn(c, scfg)
			if err != nil {
				return
			}
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() { gossh.DiscardRequests(reqs) })
			wg.Go(func() {
				for nc := range chans {
					nc.Reject(gossh.Prohibited, "test")
				}
			})
			<-hangUp
			sc.Close()
		})
		addr := ln.Addr().String()
		pool, l := leaseOn(ctx, t, benchPoolConfig(t, t.TempDir(), addr, signer.PublicKey()), addr)
		defer pool.Close()
		defer l.Release()
		close(hangUp)
		ended(ctx, t, l)
		later(t, l, io.EOF)
	})
}

// leaseOn makes a pool from cfg and leases its connection to addr.
func leaseOn(ctx context.Context, t *testing.T, cfg PoolConfig, addr string) (*Pool, *Lease) {
	t.Helper()
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	l, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: "dies"})
	if err != nil {
		pool.Close()
		t.Fatal(err)
	}
	return pool, l
}
