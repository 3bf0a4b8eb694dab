package proxy

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// krlFixture is a CA, a user key, and certificates of that key.
type krlFixture struct {
	dir       string
	ca, user  gossh.Signer
	caPub     string
	userPub   string
	certOf    func(serial uint64, id string) *gossh.Certificate
	revokedAs func(t *testing.T, spec string, withCA bool) *Authenticator
}

func newKRLFixture(t *testing.T) *krlFixture {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed")
	}
	f := &krlFixture{dir: t.TempDir(), ca: newSigner(t), user: newSigner(t)}
	f.caPub = filepath.Join(f.dir, "ca.pub")
	f.userPub = filepath.Join(f.dir, "user.pub")
	os.WriteFile(f.caPub, gossh.MarshalAuthorizedKey(f.ca.PublicKey()), 0o600)
	os.WriteFile(f.userPub, gossh.MarshalAuthorizedKey(f.user.PublicKey()), 0o600)
	f.certOf = func(serial uint64, id string) *gossh.Certificate {
		c := &gossh.Certificate{Key: f.user.PublicKey(), Serial: serial, CertType: gossh.UserCert, KeyId: id,
			ValidPrincipals: []string{"alice"}, ValidAfter: uint64(time.Now().Add(-time.Hour).Unix()),
			ValidBefore: uint64(time.Now().Add(time.Hour).Unix()),
			Permissions: gossh.Permissions{Extensions: map[string]string{"permit-port-forwarding": ""}}}
		if err := c.SignCert(rand.Reader, f.ca); err != nil {
			t.Fatal(err)
		}
		return c
	}
	n := 0
	f.revokedAs = func(t *testing.T, spec string, withCA bool) *Authenticator {
		t.Helper()
		n++
		specFile := filepath.Join(f.dir, "spec"+string(rune('a'+n)))
		krl := specFile + ".krl"
		os.WriteFile(specFile, []byte(spec), 0o600)
		args := []string{"-k", "-f", krl}
		if withCA {
			args = append(args, "-s", f.caPub)
		}
		if out, err := exec.Command("ssh-keygen", append(args, specFile)...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
		}
		a, err := NewAuthenticator(AuthOptions{CAFiles: []string{f.caPub}, RevokedFiles: []string{krl}})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	return f
}

func TestKRLFromSSHKeygen(t *testing.T) {
	f := newKRLFixture(t)
	userLine, _ := os.ReadFile(f.userPub)
	other := newSigner(t)
	cases := []struct {
		name    string
		spec    string
		withCA  bool
		revoked []*gossh.Certificate
		allowed []*gossh.Certificate
	}{
		{"serial list", "serial: 5\nserial: 9\n", true,
			[]*gossh.Certificate{f.certOf(5, "a"), f.certOf(9, "a")}, []*gossh.Certificate{f.certOf(6, "a")}},
		{"serial range", "serial: 100-200\n", true,
			[]*gossh.Certificate{f.certOf(100, "a"), f.certOf(150, "a"), f.certOf(200, "a")},
			[]*gossh.Certificate{f.certOf(99, "a"), f.certOf(201, "a")}},
		{"serial bitmap", bitmapSpec(), true,
			[]*gossh.Certificate{f.certOf(1001, "a"), f.certOf(1049, "a")},
			[]*gossh.Certificate{f.certOf(1002, "a"), f.certOf(1100, "a")}},
		{"key id", "id: alice@laptop\n", true,
			[]*gossh.Certificate{f.certOf(7, "alice@laptop")}, []*gossh.Certificate{f.certOf(7, "bob@laptop")}},
		{"plain key (sha1)", string(userLine), false, []*gossh.Certificate{f.certOf(7, "a")}, nil},
		{"explicit key", "key: " + string(userLine), false, []*gossh.Certificate{f.certOf(7, "a")}, nil},
		{"sha256 hash", "hash: " + gossh.FingerprintSHA256(f.user.PublicKey()) + "\n", false,
			[]*gossh.Certificate{f.certOf(7, "a")}, nil},
		{"CA key", string(gossh.MarshalAuthorizedKey(f.ca.PublicKey())), false, []*gossh.Certificate{f.certOf(7, "a")}, nil},
	}
	for _, c := range cases {
		a := f.revokedAs(t, c.spec, c.withCA)
		for _, cert := range c.revoked {
			if _, err := a.Check("alice", testAddr, cert); !errors.Is(err, ErrKeyRevoked) {
				t.Errorf("%s: serial %d id %q: %v, want revoked", c.name, cert.Serial, cert.KeyId, err)
			}
		}
		for _, cert := range c.allowed {
			if _, err := a.Check("alice", testAddr, cert); err != nil {
				t.Errorf("%s: serial %d id %q: %v, want accepted", c.name, cert.Serial, cert.KeyId, err)
			}
		}
		if why := a.revoked.check(other.PublicKey()); why != "" {
			t.Errorf("%s: unrelated key revoked: %s", c.name, why)
		}
	}
	// A plain key revoked by KRL is refused even where authorized_keys lists it.
	ak := filepath.Join(f.dir, "%u.keys")
	os.WriteFile(filepath.Join(f.dir, "alice.keys"), userLine, 0o600)
	krl := filepath.Join(f.dir, "plain.krl")
	if out, err := exec.Command("ssh-keygen", "-k", "-f", krl, f.userPub).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	a, err := NewAuthenticator(AuthOptions{KeyFiles: []string{ak}, RevokedFiles: []string{krl}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Check("alice", testAddr, f.user.PublicKey()); !errors.Is(err, ErrKeyRevoked) {
		t.Errorf("plain key in KRL: %v", err)
	}
}

// bitmapSpec lists every other serial from 1001 to 1099, which ssh-keygen
// encodes as a bitmap section.
func bitmapSpec() string {
	s := ""
	for i := 1001; i < 1100; i += 2 {
		s += "serial: " + strconv.Itoa(i) + "\n"
	}
	return s
}

func TestRevokedKeysPlainFileAndReload(t *testing.T) {
	dir := t.TempDir()
	k := newSigner(t)
	os.WriteFile(filepath.Join(dir, "root.keys"), gossh.MarshalAuthorizedKey(k.PublicKey()), 0o600)
	rev := filepath.Join(dir, "revoked")
	os.WriteFile(rev, nil, 0o600)
	a, err := NewAuthenticator(AuthOptions{KeyFiles: []string{filepath.Join(dir, "%u.keys")}, RevokedFiles: []string{rev}})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Check("root", testAddr, k.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(rev, append([]byte("# revoked\n"), gossh.MarshalAuthorizedKey(k.PublicKey())...), 0o600)
	if err := a.Recheck(id); !errors.Is(err, ErrKeyRevoked) {
		t.Errorf("recheck after revocation: %v", err)
	}
	k2 := newSigner(t)
	os.WriteFile(filepath.Join(dir, "bob.keys"), gossh.MarshalAuthorizedKey(k2.PublicKey()), 0o600)
	id2, err := a.Check("bob", testAddr, k2.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	// A broken revocation file refuses every new login rather than
	// readmitting; open connections keep the last good list.
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(rev, []byte("SSHKRL\n\x00broken"), 0o600)
	if _, err := a.Check("bob", testAddr, k2.PublicKey()); err == nil {
		t.Errorf("broken KRL: login accepted")
	}
	if err := a.Recheck(id2); err != nil {
		t.Errorf("broken KRL cut an open connection: %v", err)
	}
	if err := a.Recheck(id); !errors.Is(err, ErrKeyRevoked) {
		t.Errorf("broken KRL readmitted a revoked key: %v", err)
	}
	// Likewise a broken authorized_keys file.
	os.WriteFile(rev, nil, 0o600)
	os.WriteFile(filepath.Join(dir, "bob.keys"), []byte("ssh-ed25519 not-base64!\n"), 0o600)
	if _, err := a.Check("bob", testAddr, k2.PublicKey()); err == nil {
		t.Errorf("broken authorized_keys: login accepted")
	}
	if err := a.Recheck(id2); err != nil {
		t.Errorf("broken authorized_keys cut an open connection: %v", err)
	}
}

func TestParseKRLRejectsMalformed(t *testing.T) {
	for name, b := range map[string]string{
		"truncated header": krlMagic + "\x00\x00\x00\x01",
		"wrong version":    krlMagic + "\x00\x00\x00\x02" + string(make([]byte, 32)),
		"unknown section":  krlMagic + "\x00\x00\x00\x01" + string(make([]byte, 32)) + "\x09\x00\x00\x00\x00",
		"section too long": krlMagic + "\x00\x00\x00\x01" + string(make([]byte, 32)) + "\x02\x00\x00\x00\x09",
	} {
		if err := newRevocations().parseKRL([]byte(b)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	empty := krlMagic + "\x00\x00\x00\x01" + string(make([]byte, 32))
	if err := newRevocations().parseKRL([]byte(empty)); err != nil {
		t.Errorf("empty KRL: %v", err)
	}
}

// FuzzParseKRL feeds arbitrary bytes to the KRL parser: it must return an
// error or a result, never panic or allocate without bound.
func FuzzParseKRL(f *testing.F) {
	empty := krlMagic + "\x00\x00\x00\x01" + string(make([]byte, 32))
	f.Add([]byte(empty))
	f.Add([]byte(empty + "\x01\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x22\x00\x00\x00\x04\x00\x00\x00\x00"))
	f.Add([]byte(empty + "\x05\x00\x00\x00\x04\x00\x00\x00\x00"))
	ca, _ := gossh.NewSignerFromKey(ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)))
	cert := &gossh.Certificate{Key: ca.PublicKey(), Serial: 1 << 40, CertType: gossh.UserCert, KeyId: "fuzz"}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := newRevocations()
		if r.parseKRL(b) == nil {
			r.check(cert)
			r.check(ca.PublicKey())
		}
	})
}

// TestRevokedKeysListedButMissingRefusesLogins: a revoked_keys file that
// is listed but missing (deleted, renamed, not yet deployed) refuses new
// logins as an unreadable one does, instead of revoking nothing; an open
// connection keeps the last good list.
func TestRevokedKeysListedButMissingRefusesLogins(t *testing.T) {
	dir := t.TempDir()
	k := newSigner(t)
	os.WriteFile(filepath.Join(dir, "bob.keys"), gossh.MarshalAuthorizedKey(k.PublicKey()), 0o600)
	keys := []string{filepath.Join(dir, "%u.keys")}
	rev := filepath.Join(dir, "revoked")
	// Missing at start: refused there, naming the file.
	if _, err := NewAuthenticator(AuthOptions{KeyFiles: keys, RevokedFiles: []string{rev}}); err == nil || !strings.Contains(err.Error(), rev) {
		t.Errorf("missing revoked_keys at start: %v", err)
	}
	os.WriteFile(rev, nil, 0o600)
	a, err := NewAuthenticator(AuthOptions{KeyFiles: keys, RevokedFiles: []string{rev}})
	if err != nil {
		t.Fatal(err)
	}
	id, err := a.Check("bob", testAddr, k.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	// Removed while running: new logins refused, open ones kept.
	os.Remove(rev)
	if _, err := a.Check("bob", testAddr, k.PublicKey()); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("login with revoked_keys missing: %v", err)
	}
	if err := a.Recheck(id); err != nil {
		t.Errorf("missing revoked_keys cut an open connection: %v", err)
	}
	// Back: logins again.
	os.WriteFile(rev, []byte("# none\n"), 0o600)
	if _, err := a.Check("bob", testAddr, k.PublicKey()); err != nil {
		t.Errorf("login after revoked_keys is back: %v", err)
	}
}
