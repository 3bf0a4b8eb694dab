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
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Identity is the person a front connection acts for, settled once by the
// key or certificate that signed the front login. Every later decision and
// log line names it; the inner session of an accelerated forward inherits
// it rather than deciding again.
type Identity struct {
	// User is the login name given to gomux (ssh -J alice@gomux).
	User string
	// Key is the public key exactly as the client presented it: a plain
	// key or a user certificate.
	Key gossh.PublicKey
	// Source is the client address, for source-address and for logs.
	Source net.Addr
}

// Cert returns the user certificate that authenticated, or nil for a plain key.
func (id *Identity) Cert() *gossh.Certificate {
	c, _ := id.Key.(*gossh.Certificate)
	return c
}

// Method names how the person authenticated, for the audit log.
func (id *Identity) Method() string {
	if id.Cert() != nil {
		return "publickey-cert"
	}
	return "publickey"
}

// Fingerprint is the SHA-256 fingerprint of the key that signed (for a
// certificate, of the key inside it, as OpenSSH logs it).
func (id *Identity) Fingerprint() string {
	if c := id.Cert(); c != nil {
		return gossh.FingerprintSHA256(c.Key)
	}
	return gossh.FingerprintSHA256(id.Key)
}

// SameKey says whether key is the very key (same bytes) that authenticated
// this identity, so an inner session cannot switch to another credential.
func (id *Identity) SameKey(key gossh.PublicKey) bool {
	return bytes.Equal(id.Key.Marshal(), key.Marshal())
}

// AuthOptions are the files and facts the Authenticator decides from.
type AuthOptions struct {
	// KeyFiles are authorized_keys paths; %u expands to the login name and
	// %% to %. A path without %u vouches only for RunAs.
	KeyFiles []string
	// CAFiles hold user CA public keys.
	CAFiles []string
	// RevokedFiles are plain public key lists or OpenSSH KRLs.
	RevokedFiles []string
	// RunAs is the name of the account gomux runs as.
	RunAs string
}

// Authenticator decides whether a client key may log in under a name. It
// re-reads its files when they change, so removing a key from
// authorized_keys or adding it to revoked_keys takes effect without a
// restart, for new logins and (through Recheck) for open connections.
type Authenticator struct {
	opt AuthOptions

	mu      sync.Mutex
	files   map[string]*keyFile // expanded authorized_keys path → contents
	caStamp string
	cas     map[string]bool
	caErr   error
	revoked *revocations
	revErr  error
	rvStamp string
}

// keyFile is one authorized_keys file as last read.
type keyFile struct {
	stamp string
	keys  map[string]bool
	err   error
}

// maxCachedKeyFiles bounds the per-name cache, so a client spraying login
// names cannot grow it without limit.
const maxCachedKeyFiles = 4096

// NewAuthenticator checks the paths and reads the files once, so a broken
// file is reported at start rather than at the first login.
func NewAuthenticator(opt AuthOptions) (*Authenticator, error) {
	for _, p := range opt.KeyFiles {
		if _, err := expandUserPath(p, "x"); err != nil {
			return nil, err
		}
	}
	a := &Authenticator{opt: opt, files: map[string]*keyFile{}}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.reloadLocked(); err != nil {
		return nil, err
	}
	for _, p := range opt.KeyFiles {
		if !strings.Contains(p, "%u") {
			if _, err := a.keyFileLocked(p); err != nil {
				return nil, err
			}
		}
	}
	return a, nil
}

// Errors a refused login wraps, so callers and tests can tell them apart.
var (
	// ErrKeyNotAuthorized is returned for a key no file and no CA vouches
	// for under the given name.
	ErrKeyNotAuthorized = errors.New("public key not authorized")
	// ErrKeyRevoked is returned for a key or certificate in revoked_keys.
	ErrKeyRevoked = errors.New("key revoked")
	// ErrBadLoginName is returned for a name that cannot be a user name.
	ErrBadLoginName = errors.New("invalid login name")
)

// Check authenticates key for the login name user and returns the person.
// Certificates must be signed by a configured user CA, name user as a
// principal and permit port forwarding; plain keys must be in an
// authorized_keys file that is for user.
func (a *Authenticator) Check(user string, remote net.Addr, key gossh.PublicKey) (*Identity, error) {
	return a.check(user, remote, key, true)
}

// Recheck says whether an identity settled earlier would still be admitted
// now: the key still listed, not revoked, the certificate not expired. A
// file that cannot be read right now (an operator half way through
// editing it) keeps its last good contents here, so a typo refuses new
// logins but does not cut every open connection.
func (a *Authenticator) Recheck(id *Identity) error {
	_, err := a.check(id.User, id.Source, id.Key, false)
	return err
}

// check decides a login; strict refuses it when any file is broken.
func (a *Authenticator) check(user string, remote net.Addr, key gossh.PublicKey, strict bool) (*Identity, error) {
	if err := ValidLoginName(user); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.reloadLocked(); err != nil && strict {
		return nil, err
	}
	if why := a.revoked.check(key); why != "" {
		return nil, fmt.Errorf("%w: %s", ErrKeyRevoked, why)
	}
	if cert, ok := key.(*gossh.Certificate); ok {
		if err := a.checkCert(user, remote, cert); err != nil {
			return nil, err
		}
		return &Identity{User: user, Key: key, Source: remote}, nil
	}
	for _, tmpl := range a.opt.KeyFiles {
		if !strings.Contains(tmpl, "%u") && user != a.opt.RunAs {
			// A shared file says nothing about who a key belongs to:
			// it vouches only for the account gomux runs as, as
			// ~/.ssh/authorized_keys does for sshd.
			continue
		}
		p, err := expandUserPath(tmpl, user)
		if err != nil {
			return nil, err
		}
		kf, err := a.keyFileLocked(p)
		if err != nil && strict {
			return nil, err
		}
		if kf.keys[string(key.Marshal())] {
			return &Identity{User: user, Key: key, Source: remote}, nil
		}
	}
	return nil, ErrKeyNotAuthorized
}

func (a *Authenticator) checkCert(user string, remote net.Addr, cert *gossh.Certificate) error {
	if cert.CertType != gossh.UserCert {
		return fmt.Errorf("certificate %q: %w (not a user certificate)", cert.KeyId, ErrKeyNotAuthorized)
	}
	if !a.cas[string(cert.SignatureKey.Marshal())] {
		return fmt.Errorf("certificate %q: %w (unknown CA)", cert.KeyId, ErrKeyNotAuthorized)
	}
	// x/crypto reads an empty principal list as "anyone"; sshd refuses
	// such certificates, and so does gomux.
	if len(cert.ValidPrincipals) == 0 {
		return fmt.Errorf("certificate %q: %w (no principals)", cert.KeyId, ErrKeyNotAuthorized)
	}
	if _, ok := cert.Extensions["permit-port-forwarding"]; !ok {
		return fmt.Errorf("certificate %q: %w (no permit-port-forwarding extension, and forwarding is all gomux does)", cert.KeyId, ErrKeyNotAuthorized)
	}
	checker := gossh.CertChecker{
		IsUserAuthority: func(auth gossh.PublicKey) bool { return a.cas[string(auth.Marshal())] },
		Clock:           time.Now,
	}
	// Authenticate checks the principal and validity period.
	if _, err := checker.Authenticate(certMeta{user: user, remote: remote}, cert); err != nil {
		return fmt.Errorf("certificate %q: %w", cert.KeyId, err)
	}
	return checkCriticalOptions(cert, remote)
}

// ValidLoginName refuses names that could not be a user name and could
// escape a directory when put into a path by %u: empty, too long, with a
// slash, starting with a dot or dash, or with characters outside
// [A-Za-z0-9._@-].
func ValidLoginName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("%w %q: must be 1 to 64 characters", ErrBadLoginName, name)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("%w %q: must not start with . or -", ErrBadLoginName, name)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-', r == '@':
		default:
			return fmt.Errorf("%w %q: only letters, digits and . _ - @ are allowed", ErrBadLoginName, name)
		}
	}
	return nil
}

// expandUserPath expands %u (the login name) and %% in an
// authorized_keys path, as sshd's AuthorizedKeysFile does.
func expandUserPath(tmpl, user string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(tmpl); i++ {
		c := tmpl[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(tmpl) {
			return "", fmt.Errorf("authorized_keys path %q: %% at the end", tmpl)
		}
		i++
		switch tmpl[i] {
		case '%':
			b.WriteByte('%')
		case 'u':
			if err := ValidLoginName(user); err != nil {
				return "", err
			}
			b.WriteString(user)
		default:
			return "", fmt.Errorf("authorized_keys path %q: unknown token %%%c (only %%u and %%%% are supported)", tmpl, tmpl[i])
		}
	}
	return b.String(), nil
}

// certMeta is what CertChecker needs of a connection: the person's name
// and the source address for the source-address critical option.
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

// keyFileLocked returns path's keys, re-reading the file when its stat
// stamp changed. A file that fails to parse keeps its last good keys
// beside the error.
func (a *Authenticator) keyFileLocked(path string) (*keyFile, error) {
	stamp := statStamp([]string{path})
	prev, ok := a.files[path]
	if ok && prev.stamp == stamp {
		return prev, prev.err
	}
	keys, err := readAuthorizedKeys([]string{path})
	if err != nil && ok {
		keys = prev.keys
	}
	if len(a.files) >= maxCachedKeyFiles {
		a.files = map[string]*keyFile{}
	}
	kf := &keyFile{stamp: stamp, keys: keys, err: err}
	a.files[path] = kf
	return kf, err
}

// reloadLocked re-reads the CA and revocation files when they changed. A
// broken revocation file refuses every new login until fixed (failing
// open would readmit what the operator revoked); its last good contents
// stay in force for Recheck.
func (a *Authenticator) reloadLocked() error {
	if stamp := statStamp(a.opt.CAFiles); stamp != a.caStamp || a.cas == nil {
		cas, err := readAuthorizedKeys(a.opt.CAFiles)
		if err == nil {
			a.cas = cas
		} else if a.cas == nil {
			a.cas = map[string]bool{}
		}
		a.caStamp, a.caErr = stamp, err
	}
	if stamp := statStamp(a.opt.RevokedFiles); stamp != a.rvStamp || a.revoked == nil {
		r, err := readRevocations(a.opt.RevokedFiles)
		if err == nil {
			a.revoked = r
		} else if a.revoked == nil {
			a.revoked = &revocations{}
		}
		a.rvStamp, a.revErr = stamp, err
	}
	if a.caErr != nil {
		return fmt.Errorf("user_ca_keys: %w", a.caErr)
	}
	if a.revErr != nil {
		return fmt.Errorf("revoked_keys: %w", a.revErr)
	}
	return nil
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
			return nil, err // names the file: "open F: permission denied"
		}
		keys, err := parseKeyLines(f, b, false)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			out[string(k.Marshal())] = true
		}
	}
	return out, nil
}

// parseKeyLines parses authorized_keys lines. Options are refused unless
// ignoreOpts: ignoring from= or command= would grant more than the
// operator wrote.
func parseKeyLines(f string, b []byte, ignoreOpts bool) ([]gossh.PublicKey, error) {
	var out []gossh.PublicKey
	for n, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		k, _, opts, _, err := gossh.ParseAuthorizedKey(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", f, n+1, err)
		}
		if len(opts) > 0 && !ignoreOpts {
			return nil, fmt.Errorf("%s:%d: key options %q are not supported by gomux", f, n+1, opts)
		}
		out = append(out, k)
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
