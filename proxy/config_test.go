package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gomux.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigDefaults(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_STATE_HOME", "")
	c, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:2222" {
		t.Errorf("listen %q", c.Listen)
	}
	if c.StateDir != filepath.Join(home, ".local/state/gomux") {
		t.Errorf("state dir %q", c.StateDir)
	}
	if got := c.Auth.AuthorizedKeys; len(got) != 1 || got[0] != filepath.Join(home, ".ssh/authorized_keys") {
		t.Errorf("authorized keys %v", got)
	}
	if c.Upstream.IdleTimeout.D() != 10*time.Minute || c.Upstream.ConnectTimeout.D() != 10*time.Second {
		t.Errorf("timeouts %v %v", c.Upstream.IdleTimeout, c.Upstream.ConnectTimeout)
	}
	if len(c.Targets) != 1 || c.Targets[0].Mode != ModeAccelerate || c.Targets[0].Hosts[0] != "*" {
		t.Errorf("targets %+v", c.Targets)
	}
	t.Setenv("XDG_STATE_HOME", "/xdg")
	c, err = LoadConfig("")
	if err != nil || c.StateDir != "/xdg/gomux" {
		t.Errorf("xdg state dir %q %v", c.StateDir, err)
	}
}

func TestConfigIdentityDefaultsOnlyExisting(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh/id_ecdsa"), nil, 0o600)
	c, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Upstream.IdentityFiles; len(got) != 1 || !strings.HasSuffix(got[0], "id_ecdsa") {
		t.Errorf("identity files %v", got)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, tc := range []struct{ body, want string }{
		{"listen: [1]\n", "listen"},
		{"bogus: 1\n", "field bogus not found"},
		{"upstream:\n  idle_timeout: 10\n", "invalid duration"},
		{"upstream:\n  idle_timeout: soon\n", "invalid duration \"soon\""},
		{"targets:\n  - hosts: []\n", "targets[0].hosts"},
		{"targets:\n  - hosts: [a]\n    mode: fast\n", "targets[0].mode"},
		{"targets:\n  - hosts: ['[']\n", "bad pattern"},
		{"targets:\n  - hosts: [a]\n    ports: [0]\n", "targets[0].ports"},
		{"log_level: loud\n", "log_level"},
		{"listen: nohostport\n", "listen"},
	} {
		_, err := LoadConfig(writeConfig(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to mention %q", tc.body, err, tc.want)
		}
	}
}

func TestConfigEmptyFileIsDefaults(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	c, err := LoadConfig(writeConfig(t, ""))
	if err != nil || c.Listen != "127.0.0.1:2222" {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestPolicy(t *testing.T) {
	p := NewPolicy([]TargetRule{
		{Hosts: []string{"db*.example.com"}, Mode: ModeDeny},
		{Hosts: []string{"*.example.com"}, Users: []string{"alice"}, RemoteUsers: []string{"deploy"}, Mode: ModeAccelerate},
		{Hosts: []string{"10.0.0.*"}, Ports: []int{22}, Mode: ModeSplice},
	})
	for _, tc := range []struct {
		user, host string
		port       int
		mode       Mode
	}{
		{"alice", "db1.example.com", 22, ModeDeny},
		{"alice", "web.example.com", 22, ModeAccelerate},
		{"bob", "web.example.com", 22, ModeDeny},
		{"bob", "10.0.0.7", 22, ModeSplice},
		{"bob", "10.0.0.7", 2222, ModeDeny},
		{"bob", "elsewhere", 22, ModeDeny},
	} {
		if d := p.Decide(tc.user, tc.host, tc.port); d.Mode != tc.mode {
			t.Errorf("%s→%s:%d = %s, want %s", tc.user, tc.host, tc.port, d.Mode, tc.mode)
		}
	}
	d := p.Decide("alice", "web.example.com", 22)
	if !d.AllowsRemoteUser("deploy") || d.AllowsRemoteUser("root") {
		t.Errorf("remote user limits not applied: %+v", d)
	}
}

func TestConfigAuthAndAudit(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	c, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.RecheckInterval.D() != 15*time.Second || c.Auth.RevokedKeys != nil || c.Audit.RecordDir != "" {
		t.Errorf("defaults: recheck %v revoked %v record %q", c.Auth.RecheckInterval, c.Auth.RevokedKeys, c.Audit.RecordDir)
	}
	c, err = LoadConfig(writeConfig(t, `auth:
  authorized_keys: [/etc/gomux/users/%u.keys]
  revoked_keys: [~/revoked.krl]
  recheck_interval: 2s
audit:
  record_dir: ~/casts
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.RecheckInterval.D() != 2*time.Second || c.Auth.RevokedKeys[0] != filepath.Join(home, "revoked.krl") ||
		c.Audit.RecordDir != filepath.Join(home, "casts") || c.Auth.AuthorizedKeys[0] != "/etc/gomux/users/%u.keys" {
		t.Errorf("loaded: %+v %+v", c.Auth, c.Audit)
	}
	_, err = LoadConfig(writeConfig(t, "auth:\n  authorized_keys: [/etc/gomux/%h.keys]\n"))
	if err == nil || !strings.Contains(err.Error(), "auth.authorized_keys") {
		t.Errorf("unknown token: %v", err)
	}
}
