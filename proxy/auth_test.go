package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

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

var testAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}

func TestAuthenticatorKeysAndReload(t *testing.T) {
	dir := t.TempDir()
	ak := filepath.Join(dir, "authorized_keys")
	alice, bob := newSigner(t), newSigner(t)
	os.WriteFile(ak, append([]byte("# comment\n\n"), gossh.MarshalAuthorizedKey(alice.PublicKey())...), 0o600)
	a, err := NewAuthenticator(AuthOptions{KeyFiles: []string{ak, filepath.Join(dir, "missing")}, RunAs: "ops"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Check("ops", testAddr, alice.PublicKey()); err != nil {
		t.Errorf("alice: %v", err)
	}
	if _, err := a.Check("ops", testAddr, bob.PublicKey()); !errors.Is(err, ErrKeyNotAuthorized) {
		t.Errorf("bob: %v", err)
	}
	// A file without %u vouches only for the account gomux runs as.
	if _, err := a.Check("alice", testAddr, alice.PublicKey()); !errors.Is(err, ErrKeyNotAuthorized) {
		t.Errorf("shared file admitted another name: %v", err)
	}
	// Removing a key takes effect without a restart.
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(ak, gossh.MarshalAuthorizedKey(bob.PublicKey()), 0o600)
	if _, err := a.Check("ops", testAddr, alice.PublicKey()); err == nil {
		t.Errorf("alice still accepted after removal")
	}
	if _, err := a.Check("ops", testAddr, bob.PublicKey()); err != nil {
		t.Errorf("bob after reload: %v", err)
	}
}

func TestAuthenticatorPerUserFiles(t *testing.T) {
	dir := t.TempDir()
	alice, bob := newSigner(t), newSigner(t)
	os.WriteFile(filepath.Join(dir, "alice.keys"), gossh.MarshalAuthorizedKey(alice.PublicKey()), 0o600)
	os.WriteFile(filepath.Join(dir, "bob.keys"), gossh.MarshalAuthorizedKey(bob.PublicKey()), 0o600)
	a, err := NewAuthenticator(AuthOptions{KeyFiles: []string{filepath.Join(dir, "%u.keys")}, RunAs: "root"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Check("alice", testAddr, alice.PublicKey())
	if err != nil || id.User != "alice" || id.Fingerprint() != gossh.FingerprintSHA256(alice.PublicKey()) || id.Cert() != nil {
		t.Errorf("alice as alice: %v %+v", err, id)
	}
	if _, err := a.Check("alice", testAddr, bob.PublicKey()); !errors.Is(err, ErrKeyNotAuthorized) {
		t.Errorf("bob's key as alice: %v", err)
	}
	if _, err := a.Check("bob", testAddr, bob.PublicKey()); err != nil {
		t.Errorf("bob as bob: %v", err)
	}
	for _, name := range []string{"../alice", "alice/../bob", "..", ".hidden", "-oops", "a b", "", "al%ice", strings.Repeat("a", 65)} {
		if _, err := a.Check(name, testAddr, alice.PublicKey()); !errors.Is(err, ErrBadLoginName) {
			t.Errorf("name %q: %v", name, err)
		}
	}
	if _, err := NewAuthenticator(AuthOptions{KeyFiles: []string{filepath.Join(dir, "%h.keys")}}); err == nil {
		t.Errorf("unknown token accepted")
	}
}

func TestExpandUserPath(t *testing.T) {
	for tmpl, want := range map[string]string{
		"/etc/gomux/%u.keys":    "/etc/gomux/alice.keys",
		"/etc/gomux/%u/%u.keys": "/etc/gomux/alice/alice.keys",
		"/etc/100%%/%u":         "/etc/100%/alice",
		"/plain":                "/plain",
	} {
		if got, err := expandUserPath(tmpl, "alice"); err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", tmpl, got, err, want)
		}
	}
	for _, bad := range []string{"/x/%", "/x/%d"} {
		if _, err := expandUserPath(bad, "alice"); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	if _, err := expandUserPath("/x/%u", "../../etc/passwd"); !errors.Is(err, ErrBadLoginName) {
		t.Errorf("traversal: %v", err)
	}
}

func TestAuthenticatorRejectsBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("ssh-ed25519 not-base64!\n"), 0o600)
	if _, err := NewAuthenticator(AuthOptions{KeyFiles: []string{bad}}); err == nil || !strings.Contains(err.Error(), "bad:1") {
		t.Errorf("malformed line: %v", err)
	}
	opts := filepath.Join(dir, "opts")
	os.WriteFile(opts, append([]byte(`from="10.0.0.1" `), gossh.MarshalAuthorizedKey(newSigner(t).PublicKey())...), 0o600)
	if _, err := NewAuthenticator(AuthOptions{KeyFiles: []string{opts}}); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("key options: %v", err)
	}
}

func TestAuthenticatorCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, otherCA, user := newSigner(t), newSigner(t), newSigner(t)
	caFile := filepath.Join(dir, "user_ca")
	os.WriteFile(caFile, gossh.MarshalAuthorizedKey(ca.PublicKey()), 0o600)
	a, err := NewAuthenticator(AuthOptions{CAFiles: []string{caFile}})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(signer gossh.Signer, principals []string, before time.Time, opts map[string]string) *gossh.Certificate {
		c := &gossh.Certificate{
			Key: user.PublicKey(), CertType: gossh.UserCert, KeyId: "alice@laptop",
			ValidPrincipals: principals, ValidAfter: uint64(time.Now().Add(-time.Hour).Unix()),
			ValidBefore: uint64(before.Unix()), Permissions: gossh.Permissions{CriticalOptions: opts,
				Extensions: map[string]string{"permit-port-forwarding": ""}},
		}
		if principals == nil {
			c.Extensions = nil
		}
		if err := c.SignCert(rand.Reader, signer); err != nil {
			t.Fatal(err)
		}
		return c
	}
	later := time.Now().Add(time.Hour)
	if id, err := a.Check("alice", testAddr, mk(ca, []string{"alice"}, later, nil)); err != nil || id.Method() != "publickey-cert" {
		t.Errorf("valid cert: %v", err)
	}
	noPrincipals := mk(ca, []string{}, later, nil)
	noForwarding := mk(ca, nil, later, nil)
	noForwarding.ValidPrincipals = []string{"alice"}
	noForwarding.SignCert(rand.Reader, ca)
	for name, c := range map[string]*gossh.Certificate{
		"no principals":      noPrincipals,
		"no port forwarding": noForwarding,
		"wrong principal":    mk(ca, []string{"bob"}, later, nil),
		"expired":            mk(ca, []string{"alice"}, time.Now().Add(-time.Minute), nil),
		"unknown CA":         mk(otherCA, []string{"alice"}, later, nil),
		"source-address":     mk(ca, []string{"alice"}, later, map[string]string{"source-address": "10.9.9.9/32"}),
	} {
		if _, err := a.Check("alice", testAddr, c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// The plain key behind a certificate is not authorized by the CA.
	if _, err := a.Check("alice", testAddr, user.PublicKey()); err == nil {
		t.Errorf("bare key accepted via CA")
	}
}

func TestHostCA(t *testing.T) {
	dir := t.TempDir()
	h, err := OpenHostCA(dir, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	again, err := OpenHostCA(dir, time.Hour)
	if err != nil || again.KnownHostsLine() != h.KnownHostsLine() {
		t.Fatalf("CA not persisted: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "host_ca_ed25519")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode: %v %v", fi.Mode(), err)
	}
	line := h.KnownHostsLine()
	if !strings.HasPrefix(line, "@cert-authority * ssh-ed25519 ") {
		t.Errorf("known_hosts line %q", line)
	}
	caKey, _, _, _, err := gossh.ParseAuthorizedKey([]byte(strings.TrimPrefix(line, "@cert-authority * ")))
	if err != nil {
		t.Fatal(err)
	}
	checker := gossh.CertChecker{IsHostAuthority: func(k gossh.PublicKey, _ string) bool {
		return string(k.Marshal()) == string(caKey.Marshal())
	}}
	for _, name := range []string{"web1.example.com", "10.1.2.3"} {
		s, err := h.SignerFor(name)
		if err != nil {
			t.Fatal(err)
		}
		cert := s.PublicKey().(*gossh.Certificate)
		if err := checker.CheckHostKey(name+":22", nil, cert); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := checker.CheckHostKey("other:22", nil, cert); err == nil {
			t.Errorf("%s: cert accepted for another name", name)
		}
		if s2, _ := h.SignerFor(name); s2 != s {
			t.Errorf("%s: certificate not cached", name)
		}
	}
	s, _ := h.SignerFor("::1")
	if p := s.PublicKey().(*gossh.Certificate).ValidPrincipals; len(p) != 1 || p[0] != "::1" {
		t.Errorf("ipv6 principals %v", p)
	}
	s, _ = h.SignerFor("0:0::1")
	if p := s.PublicKey().(*gossh.Certificate).ValidPrincipals; len(p) != 2 || p[1] != "::1" {
		t.Errorf("non-canonical ipv6 principals %v", p)
	}
}
