package upstream

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
)

// refusingTarget is an SSH server that refuses every login and counts the
// connections that reached it.
func refusingTarget(t *testing.T) (addr string, hostKey gossh.PublicKey, conns *atomic.Int32) {
	t.Helper()
	scfg, signer, ln := newTestSSHServer(t)
	scfg.PublicKeyCallback = func(gossh.ConnMetadata, gossh.PublicKey) (*gossh.Permissions, error) {
		return nil, errors.New("no")
	}
	conns = new(atomic.Int32)
	serveTestSSH(t, ln, func(c net.Conn) {
		conns.Add(1)
		gossh.NewServerConn(c, scfg)
	})
	return ln.Addr().String(), signer.PublicKey(), conns
}

// TestPoolLoginBackoff: once a target refuses a login, the same
// (target, user) and the same person under another user fail at once
// without a new connection to the target, saying why; another person
// still reaches it.
func TestPoolLoginBackoff(t *testing.T) {
	addr, hk, conns := refusingTarget(t)
	cfg := benchPoolConfig(t, t.TempDir(), addr, hk)
	cfg.Limits = Limits{LoginBackoff: time.Hour}
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	acquire := func(person, user string) error {
		l, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: user, Person: person})
		if err == nil {
			l.Release()
		}
		return err
	}
	if err := acquire("mallory", "deploy"); err == nil {
		t.Fatal("the refusing target let gomux in")
	}
	for _, c := range []struct{ person, user, reason string }{
		{"mallory", "deploy", "login_backoff"},
		{"alice", "deploy", "login_backoff"},
		{"mallory", "nosuch", "person_backoff"},
	} {
		var te *errThrottled
		if err := acquire(c.person, c.user); !errors.As(err, &te) || te.reason != c.reason {
			t.Errorf("%s as %s: %v, want refused by %s", c.person, c.user, err, c.reason)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("the target saw %d connections, want 1", n)
	}
	if err := acquire("alice", "other"); err == nil || errors.As(err, new(*errThrottled)) {
		t.Errorf("another person as another user: %v, want the target's refusal", err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("the target saw %d connections, want 2", n)
	}
}

// TestPoolUnreachableNoBackoff: a target that cannot be reached starts no
// backoff: the next request tries again.
func TestPoolUnreachableNoBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := benchPoolConfig(t, t.TempDir(), addr, newSigner(t).PublicKey())
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range 3 {
		_, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: "deploy", Person: "alice"})
		if err == nil || errors.As(err, new(*errThrottled)) {
			t.Fatalf("unreachable target: %v, want the dial's error", err)
		}
	}
}
