package upstream

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeys verifies target host keys against the operator's known_hosts
// files and, where configured, gomux's own trust-on-first-use file.
type hostKeys struct {
	files    []string
	tofuFile string
	tofu     bool

	mu sync.Mutex // serializes trust-on-first-use appends
}

// HostKeyError is a target whose key is unknown or does not match: the one
// upstream failure a client must hear about in plain words, since it may be
// an attack.
type HostKeyError struct {
	Addr        string
	Fingerprint string
	Mismatch    bool
}

func (e *HostKeyError) Error() string {
	if e.Mismatch {
		return fmt.Sprintf("host key for %s (%s) does not match known_hosts: possible man-in-the-middle, refusing to connect", e.Addr, e.Fingerprint)
	}
	return fmt.Sprintf("host key for %s (%s) is not in known_hosts and trust on first use is off", e.Addr, e.Fingerprint)
}

func (h *hostKeys) database() (gossh.HostKeyCallback, error) {
	var files []string
	for _, f := range append(append([]string(nil), h.files...), h.tofuFile) {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("known_hosts: %w", err)
		}
	}
	if len(files) == 0 {
		return func(string, net.Addr, gossh.PublicKey) error {
			return &knownhosts.KeyError{}
		}, nil
	}
	cb, err := knownhosts.New(files...)
	if err != nil {
		return nil, fmt.Errorf("known_hosts: %w", err)
	}
	return cb, nil
}

// clientSettings returns the callback for one connection and the host key
// algorithms to ask for: the types known_hosts holds for addr, so a server
// offering several keys is not rejected for presenting one we never saw.
func (h *hostKeys) clientSettings(addr string) (gossh.HostKeyCallback, []string, error) {
	db, err := h.database()
	if err != nil {
		return nil, nil, err
	}
	var algos []string
	var ke *knownhosts.KeyError
	if err := db(addr, &net.TCPAddr{}, probeKey{}); errors.As(err, &ke) {
		seen := map[string]bool{}
		for _, k := range ke.Want {
			for _, a := range algorithmsFor(k.Key.Type()) {
				if !seen[a] {
					seen[a] = true
					algos = append(algos, a)
				}
			}
		}
	}
	if len(algos) > 0 {
		// Certificates signed by an @cert-authority line stay acceptable.
		algos = append(certAlgorithms(), algos...)
	}
	cb := func(hostname string, remote net.Addr, key gossh.PublicKey) error {
		err := db(hostname, remote, key)
		if err == nil {
			return nil
		}
		var ke *knownhosts.KeyError
		if !errors.As(err, &ke) {
			return err
		}
		fp := gossh.FingerprintSHA256(key)
		if len(ke.Want) > 0 {
			return &HostKeyError{Addr: hostname, Fingerprint: fp, Mismatch: true}
		}
		if !h.tofu {
			return &HostKeyError{Addr: hostname, Fingerprint: fp}
		}
		return h.remember(hostname, key)
	}
	return cb, algos, nil
}

func (h *hostKeys) remember(hostname string, key gossh.PublicKey) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(h.tofuFile), 0o700); err != nil {
		return fmt.Errorf("trust on first use: %w", err)
	}
	f, err := os.OpenFile(h.tofuFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("trust on first use: %w", err)
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(hostname)}, key) + "\n"
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("trust on first use: %w", err)
	}
	return f.Close()
}

func algorithmsFor(keyType string) []string {
	switch keyType {
	case gossh.KeyAlgoRSA:
		return []string{gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256, gossh.KeyAlgoRSA}
	default:
		return []string{keyType}
	}
}

func certAlgorithms() []string {
	return []string{
		gossh.CertAlgoED25519v01, gossh.CertAlgoECDSA256v01, gossh.CertAlgoECDSA384v01,
		gossh.CertAlgoECDSA521v01, gossh.CertAlgoRSASHA512v01, gossh.CertAlgoRSASHA256v01,
	}
}

// probeKey is a key no known_hosts line can hold; asking the database about
// it yields a KeyError that lists the keys it does hold for a host.
type probeKey struct{}

func (probeKey) Type() string                          { return "gomux-probe" }
func (probeKey) Marshal() []byte                       { return []byte("gomux-probe") }
func (probeKey) Verify([]byte, *gossh.Signature) error { return errors.New("probe key") }
