package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// loadOrCreateKey returns the ed25519 signer stored at path, creating it
// (mode 0600, in a 0700 directory) on first start so an operator never has to
// run a key generation step before gomux works.
func loadOrCreateKey(path, comment string) (gossh.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		s, err := gossh.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		return s, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	blk, err := gossh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	// O_EXCL: two gomux processes starting on one fresh state dir must not
	// each write a different CA; the loser reads the winner's key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return loadOrCreateKey(path, comment)
	}
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	// os errors name the file and the step ("write F: no space left").
	if _, err := f.Write(pem.EncodeToMemory(blk)); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return gossh.NewSignerFromKey(priv)
}

// HostCA signs host certificates for the names clients ask gomux to reach,
// so a client that trusts one @cert-authority line verifies every
// accelerated target without turning host key checking off.
type HostCA struct {
	ca       gossh.Signer
	host     gossh.Signer
	validity time.Duration

	mu    sync.Mutex
	cache map[string]gossh.Signer
}

// OpenHostCA loads (or creates) the CA key and the key that certificates are
// issued for, both in stateDir.
func OpenHostCA(stateDir string, validity time.Duration) (*HostCA, error) {
	ca, err := loadOrCreateKey(filepath.Join(stateDir, "host_ca_ed25519"), "gomux host CA")
	if err != nil {
		return nil, fmt.Errorf("host CA: %w", err)
	}
	host, err := loadOrCreateKey(filepath.Join(stateDir, "host_ed25519"), "gomux host key")
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	return &HostCA{ca: ca, host: host, validity: validity, cache: map[string]gossh.Signer{}}, nil
}

// HostSigner is the front's own host key.
func (h *HostCA) HostSigner() gossh.Signer { return h.host }

// KnownHostsLine is what clients put in known_hosts to trust every
// accelerated target.
func (h *HostCA) KnownHostsLine() string {
	return "@cert-authority * " + string(gossh.MarshalAuthorizedKey(h.ca.PublicKey()))
}

// SignerFor returns a signer presenting a certificate for name, reusing a
// cached one until less than a quarter of its validity is left.
func (h *HostCA) SignerFor(name string) (gossh.Signer, error) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if s, ok := h.cache[name]; ok {
		cert := s.PublicKey().(*gossh.Certificate)
		if time.Unix(int64(cert.ValidBefore), 0).Sub(now) > h.validity/4 {
			return s, nil
		}
	}
	principals := []string{name}
	if ip := net.ParseIP(name); ip != nil && ip.String() != name {
		principals = append(principals, ip.String())
	}
	cert := &gossh.Certificate{
		Key:             h.host.PublicKey(),
		CertType:        gossh.HostCert,
		KeyId:           "gomux:" + name,
		ValidPrincipals: principals,
		ValidAfter:      uint64(now.Add(-5 * time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(h.validity).Unix()),
	}
	if err := cert.SignCert(rand.Reader, h.ca); err != nil {
		return nil, fmt.Errorf("sign host certificate for %s: %w", name, err)
	}
	s, err := gossh.NewCertSigner(cert, h.host)
	if err != nil {
		return nil, fmt.Errorf("host certificate signer: %w", err)
	}
	if len(h.cache) > 10000 {
		clear(h.cache)
	}
	h.cache[name] = s
	return s, nil
}
