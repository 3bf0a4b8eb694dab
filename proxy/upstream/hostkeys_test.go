package upstream

import (
	"crypto/rand"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestHostKeys(t *testing.T) {
	dir := t.TempDir()
	known, other, fresh := newSigner(t), newSigner(t), newSigner(t)
	kh := filepath.Join(dir, "known_hosts")
	os.WriteFile(kh, []byte(knownhosts.Line([]string{"10.0.0.1"}, known.PublicKey())+"\n"), 0o600)
	remote := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 22}

	h := &hostKeys{files: []string{kh, filepath.Join(dir, "absent")}, tofuFile: filepath.Join(dir, "state/known_hosts")}
	cb, algos, err := h.clientSettings("10.0.0.1:22")
	if err != nil {
		t.Fatal(err)
	}
	if len(algos) == 0 || algos[len(algos)-1] != gossh.KeyAlgoED25519 {
		t.Errorf("algorithms %v", algos)
	}
	if err := cb("10.0.0.1:22", remote, known.PublicKey()); err != nil {
		t.Errorf("known key: %v", err)
	}
	var he *HostKeyError
	if err := cb("10.0.0.1:22", remote, other.PublicKey()); !errors.As(err, &he) || !he.Mismatch {
		t.Errorf("mismatch: %v", err)
	}
	if err := cb("10.0.0.2:22", remote, fresh.PublicKey()); !errors.As(err, &he) || he.Mismatch {
		t.Errorf("unknown without TOFU: %v", err)
	}

	h.tofu = true
	cb, _, _ = h.clientSettings("10.0.0.2:22")
	if err := cb("10.0.0.2:22", remote, fresh.PublicKey()); err != nil {
		t.Fatalf("TOFU: %v", err)
	}
	b, _ := os.ReadFile(h.tofuFile)
	if !strings.Contains(string(b), "10.0.0.2 ssh-ed25519") {
		t.Errorf("TOFU file %q", b)
	}
	// Once recorded, a different key is a mismatch even with TOFU on.
	cb, _, _ = h.clientSettings("10.0.0.2:22")
	if err := cb("10.0.0.2:22", remote, other.PublicKey()); !errors.As(err, &he) || !he.Mismatch {
		t.Errorf("changed key after TOFU: %v", err)
	}
	// TOFU never overrides the operator's file.
	if err := cb("10.0.0.1:22", remote, other.PublicKey()); !errors.As(err, &he) || !he.Mismatch {
		t.Errorf("TOFU overrode known_hosts: %v", err)
	}
}

func TestHostKeysCertAuthority(t *testing.T) {
	dir := t.TempDir()
	ca, hostKey := newSigner(t), newSigner(t)
	kh := filepath.Join(dir, "known_hosts")
	os.WriteFile(kh, []byte("@cert-authority *.example.com "+string(gossh.MarshalAuthorizedKey(ca.PublicKey()))), 0o600)
	cert := &gossh.Certificate{Key: hostKey.PublicKey(), CertType: gossh.HostCert, ValidPrincipals: []string{"web.example.com"},
		ValidBefore: gossh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	hk := &hostKeys{files: []string{kh}, tofuFile: filepath.Join(dir, "tofu")}
	cb, _, err := hk.clientSettings("web.example.com:22")
	if err != nil {
		t.Fatal(err)
	}
	if err := cb("web.example.com:22", &net.TCPAddr{}, cert); err != nil {
		t.Errorf("CA-signed host cert: %v", err)
	}
}
