package upstream

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
)

// writeCAKey writes a fresh ed25519 private key for a user CA.
func writeCAKey(t *testing.T, dir, name string) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := gossh.MarshalPrivateKey(priv, name)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPoolUserPrincipalPrefix: with user_principal_prefix, the minted
// certificate's principal is the prefix and the remote user, for the
// default credential and a named one, so a target can pin it in an
// AuthorizedPrincipalsFile; without it the principal is the user.
func TestPoolUserPrincipalPrefix(t *testing.T) {
	scfg, signer, ln := newTestSSHServer(t)
	var mu sync.Mutex
	seen := map[string][]string{} // login name -> principals offered
	scfg.PublicKeyCallback = func(c gossh.ConnMetadata, k gossh.PublicKey) (*gossh.Permissions, error) {
		if cert, ok := k.(*gossh.Certificate); ok {
			mu.Lock()
			seen[c.User()] = cert.ValidPrincipals
			mu.Unlock()
		}
		return nil, nil
	}
	serveTestSSH(t, ln, func(c net.Conn) {
		if sc, chans, reqs, err := gossh.NewServerConn(c, scfg); err == nil {
			go gossh.DiscardRequests(reqs)
			for nc := range chans {
				nc.Reject(gossh.Prohibited, "test")
			}
			sc.Close()
		}
	})
	addr := ln.Addr().String()
	dir := t.TempDir()
	cfg := benchPoolConfig(t, dir, addr, signer.PublicKey())
	cfg.Upstream.IdentityFiles = nil
	cfg.Upstream.UserCA = writeCAKey(t, dir, "ca")
	cfg.Upstream.UserPrincipalPrefix = "gomux-"
	cfg.Upstream.UserCertValidity = time.Minute
	cfg.Upstream.Credentials = map[string]Credential{
		"pinned": {UserCA: writeCAKey(t, dir, "ca2"), UserPrincipalPrefix: "bastion."},
		"plain":  {UserCA: writeCAKey(t, dir, "ca3")},
	}
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for user, cred := range map[string]string{"deploy": "", "app": "pinned", "ops": "plain"} {
		l, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: user, Credential: cred, Person: "alice"})
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		l.Release()
	}
	mu.Lock()
	defer mu.Unlock()
	for user, want := range map[string]string{"deploy": "gomux-deploy", "app": "bastion.app", "ops": "ops"} {
		if got := seen[user]; len(got) != 1 || got[0] != want {
			t.Errorf("as %s: principals %q, want [%s]", user, got, want)
		}
	}
}

// TestUserPrincipalPrefixChecked: a prefix that an AuthorizedPrincipalsFile
// line could not hold as one name is refused at start.
func TestUserPrincipalPrefixChecked(t *testing.T) {
	dir := t.TempDir()
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}).String()
	for _, bad := range []string{"gomux ", "a,b", "#x", "x\n"} {
		cfg := benchPoolConfig(t, dir, addr, newSigner(t).PublicKey())
		cfg.Upstream.UserCA = writeCAKey(t, dir, "ca")
		cfg.Upstream.UserPrincipalPrefix = bad
		if p, err := NewPool(cfg, zerolog.Nop()); err == nil {
			p.Close()
			t.Errorf("prefix %q accepted", bad)
		}
	}
}

// serveTestSSH accepts connections on ln until the test ends, each served
// by handle in a goroutine of its own and closed after it; the cleanup
// closes ln and waits for every goroutine.
func serveTestSSH(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
}
