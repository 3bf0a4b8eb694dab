package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"

	gossh "golang.org/x/crypto/ssh"
)

// Authenticator decides whether a client key may log in. It re-reads its
// files when they change, so revoking a key in authorized_keys takes effect
// without a restart.
type Authenticator struct {
	keyFiles []string
	caFiles  []string

	mu      sync.Mutex
	stamp   string
	keys    map[string]bool // marshalled public key → authorized
	cas     map[string]bool
	lastErr error
}

// NewAuthenticator reads the files once, so a broken file is reported at
// start rather than at the first login.
func NewAuthenticator(keyFiles, caFiles []string) (*Authenticator, error) {
	a := &Authenticator{keyFiles: keyFiles, caFiles: caFiles}
	if err := a.reload(); err != nil {
		return nil, err
	}
	return a, nil
}

// ErrKeyNotAuthorized is returned for a key no file and no CA vouches for.
var ErrKeyNotAuthorized = errors.New("public key not authorized")

// Check authenticates key for the login name user. Certificates must be
// signed by a configured user CA and name user as a principal.
func (a *Authenticator) Check(user string, remote net.Addr, key gossh.PublicKey) error {
	if err := a.reload(); err != nil {
		return err
	}
	a.mu.Lock()
	keys, cas := a.keys, a.cas
	a.mu.Unlock()
	if cert, ok := key.(*gossh.Certificate); ok {
		checker := gossh.CertChecker{
			IsUserAuthority: func(auth gossh.PublicKey) bool { return cas[string(auth.Marshal())] },
		}
		if !checker.IsUserAuthority(cert.SignatureKey) {
			return fmt.Errorf("certificate %q: %w (unknown CA)", cert.KeyId, ErrKeyNotAuthorized)
		}
		// Authenticate checks the principal and validity period.
		if _, err := checker.Authenticate(certMeta{user: user, remote: remote}, key); err != nil {
			return fmt.Errorf("certificate %q: %w", cert.KeyId, err)
		}
		return checkCriticalOptions(cert, remote)
	}
	if keys[string(key.Marshal())] {
		return nil
	}
	return ErrKeyNotAuthorized
}

// certMeta is what CertChecker needs of a connection: the person's name
// (for the inner session that is the front login, not the remote user) and
// the source address for the source-address critical option.
type certMeta struct {
	user   string
	remote net.Addr
}

func (m certMeta) User() string          { return m.user }
func (m certMeta) RemoteAddr() net.Addr  { return m.remote }
func (m certMeta) SessionID() []byte     { return nil }
func (m certMeta) ClientVersion() []byte { return nil }
func (m certMeta) ServerVersion() []byte { return nil }
func (m certMeta) LocalAddr() net.Addr   { return nil }

func (a *Authenticator) reload() error {
	stamp := statStamp(a.keyFiles) + "|" + statStamp(a.caFiles)
	a.mu.Lock()
	defer a.mu.Unlock()
	if stamp == a.stamp && a.keys != nil {
		return a.lastErr
	}
	keys, err := readAuthorizedKeys(a.keyFiles)
	if err == nil {
		var cas map[string]bool
		cas, err = readAuthorizedKeys(a.caFiles)
		if err == nil {
			a.keys, a.cas = keys, cas
		}
	}
	if a.keys == nil {
		a.keys, a.cas = map[string]bool{}, map[string]bool{}
	}
	a.stamp, a.lastErr = stamp, err
	return err
}

func statStamp(files []string) string {
	var b bytes.Buffer
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			fmt.Fprintf(&b, "%s:-;", f)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d;", f, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// readAuthorizedKeys reads authorized_keys-format files. A missing file is
// an empty one (a fresh account has none); a malformed line is an error
// naming file and line, never silently skipped.
func readAuthorizedKeys(files []string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f, err)
		}
		for n, line := range bytes.Split(b, []byte("\n")) {
			line = bytes.TrimSpace(line)
			if len(line) == 0 || line[0] == '#' {
				continue
			}
			k, _, opts, _, err := gossh.ParseAuthorizedKey(line)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", f, n+1, err)
			}
			if len(opts) > 0 {
				// Ignoring from= or command= would grant more than the
				// operator wrote; refuse rather than guess.
				return nil, fmt.Errorf("%s:%d: key options %q are not supported by gomux", f, n+1, opts)
			}
			out[string(k.Marshal())] = true
		}
	}
	return out, nil
}

// checkCriticalOptions enforces source-address and refuses certificates
// carrying any other critical option: gomux cannot honour force-command,
// and ignoring it would grant more than the CA meant to.
func checkCriticalOptions(cert *gossh.Certificate, remote net.Addr) error {
	for name, val := range cert.CriticalOptions {
		if name != "source-address" {
			return fmt.Errorf("certificate %q: critical option %q is not supported", cert.KeyId, name)
		}
		tcp, ok := remote.(*net.TCPAddr)
		if !ok {
			return fmt.Errorf("certificate %q: source-address needs a TCP client address", cert.KeyId)
		}
		allowed := false
		for _, s := range strings.Split(val, ",") {
			s = strings.TrimSpace(s)
			if !strings.Contains(s, "/") {
				if ip := net.ParseIP(s); ip != nil && ip.Equal(tcp.IP) {
					allowed = true
				}
				continue
			}
			if _, n, err := net.ParseCIDR(s); err == nil && n.Contains(tcp.IP) {
				allowed = true
			}
		}
		if !allowed {
			return fmt.Errorf("certificate %q: source address %s not allowed", cert.KeyId, tcp.IP)
		}
	}
	return nil
}
