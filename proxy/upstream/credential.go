package upstream

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// credential is one loaded upstream credential.
type credential struct {
	name     string
	signers  []gossh.Signer
	useAgent bool
	ca       gossh.Signer // signs per-person user certificates; nil if none
	// prefix goes before the remote user in those certificates' principal.
	prefix string
}

// loadCredential reads a credential's keys. Passphrase-protected files
// cannot be used unattended and are reported, not skipped silently.
func loadCredential(field, name string, files []string, useAgent bool, caFile, prefix string) (*credential, error) {
	if err := checkPrincipalPrefix(prefix); err != nil {
		return nil, fmt.Errorf("%s.user_principal_prefix: %w", field, err)
	}
	c := &credential{name: name, useAgent: useAgent, prefix: prefix}
	for _, f := range files {
		s, err := readSigner(f)
		if err != nil {
			return nil, fmt.Errorf("%s.identity_files: %w", field, err)
		}
		c.signers = append(c.signers, s)
	}
	if caFile != "" {
		s, err := readSigner(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s.user_ca: %w", field, err)
		}
		c.ca = s
	}
	return c, nil
}

func readSigner(f string) (gossh.Signer, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, err
	}
	s, err := gossh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	return s, nil
}

// signUserCert makes a throwaway key and a certificate for it, valid for
// one login with principal (the remote user, after any
// user_principal_prefix) on behalf of person: the target's sshd logs the
// key ID, so its log names who acted. Each new connection gets a fresh
// one; connections already up keep theirs.
func signUserCert(ca gossh.Signer, person, principal string, forwarding bool, validity time.Duration) (gossh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("user certificate key: %w", err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("user certificate key: %w", err)
	}
	var serial [8]byte
	if _, err := rand.Read(serial[:]); err != nil {
		return nil, fmt.Errorf("user certificate serial: %w", err)
	}
	now := time.Now()
	cert := &gossh.Certificate{
		Key:             s.PublicKey(),
		Serial:          binary.BigEndian.Uint64(serial[:]),
		CertType:        gossh.UserCert,
		KeyId:           "gomux:" + person,
		ValidPrincipals: []string{principal},
		ValidAfter:      uint64(now.Add(-time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(validity).Unix()),
		Permissions:     gossh.Permissions{Extensions: map[string]string{"permit-pty": ""}},
	}
	if forwarding {
		cert.Permissions.Extensions["permit-port-forwarding"] = ""
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		return nil, fmt.Errorf("sign user certificate for %s as %s: %w", person, principal, err)
	}
	cs, err := gossh.NewCertSigner(cert, s)
	if err != nil {
		return nil, fmt.Errorf("user certificate signer: %w", err)
	}
	return cs, nil
}

// PublicKeys lists the fingerprints of a credential's key files, for a
// fix (gomux check) that says which key the target must accept.
func (p *Pool) PublicKeys(cred string) string {
	c := p.creds[cred]
	if c == nil {
		return "none"
	}
	var fps []string
	for _, s := range c.signers {
		fps = append(fps, gossh.FingerprintSHA256(s.PublicKey()))
	}
	if c.ca != nil {
		fps = append(fps, "certificates from user CA "+gossh.FingerprintSHA256(c.ca.PublicKey()))
	}
	if c.useAgent {
		fps = append(fps, "the ssh-agent's keys")
	}
	if len(fps) == 0 {
		return "none configured"
	}
	return strings.Join(fps, ", ")
}

// checkPrincipalPrefix refuses a user_principal_prefix that would not
// stay one name in an AuthorizedPrincipalsFile line (spaces, commas,
// "#", quotes, control characters).
func checkPrincipalPrefix(p string) error {
	for _, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-@+:", r)
		if !ok {
			return fmt.Errorf("%q: only letters, digits and . _ - @ + : are allowed", p)
		}
	}
	if len(p) > 64 {
		return fmt.Errorf("%q: at most 64 characters", p)
	}
	return nil
}
