package upstream

import (
	"crypto/ed25519"
	"crypto/rand"
	"net"

	"context"
	gossh "golang.org/x/crypto/ssh"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestPoolIdleCloseNeverTakesALease races the idle timer against new
// leases: with an idle timeout of a millisecond, every release arms the
// timer and the next Acquire lands right around the moment it fires. A
// connection the timer closes must never be one a lease holds.
func TestPoolIdleCloseNeverTakesALease(t *testing.T) {
	addr, hostKey := startUpstreamHelper(t)
	cfg := benchPoolConfig(t, t.TempDir(), addr, hostKey)
	cfg.Upstream.IdleTimeout = time.Millisecond
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range 300 {
		l, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: "racer"})
		if err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		// Hold the lease past the idle timeout: nothing may close it.
		select {
		case <-l.Dead():
			t.Fatalf("lease %d: the idle timer closed a connection in use", i)
		case <-time.After(3 * time.Millisecond):
		}
		l.Release()
		// Sometimes come back just as the timer fires.
		time.Sleep(time.Duration(i%3) * 500 * time.Microsecond)
	}
}

// newSigner makes an ed25519 signer for a test host or user key.
func newSigner(t *testing.T) gossh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newTestSSHServer is an SSH server config that takes any public key,
// its host key, and a listener on the loopback address for it.
func newTestSSHServer(t *testing.T) (*gossh.ServerConfig, gossh.Signer, net.Listener) {
	t.Helper()
	signer := newSigner(t)
	scfg := &gossh.ServerConfig{
		PublicKeyCallback: func(gossh.ConnMetadata, gossh.PublicKey) (*gossh.Permissions, error) { return nil, nil },
	}
	scfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return scfg, signer, ln
}
