package proxy

import (
	"context"
	"errors"
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
		{"targets:\n  - ports: [22]\n", "targets[0].hosts"},
		{"targets:\n  - cidrs: [10.0.0.0/33]\n", "targets[0].cidrs"},
		{"targets:\n  - cidrs: [db.example.com]\n", "targets[0].cidrs"},
		{"targets:\n  - hosts: [a]\n    credential: ops\n", "targets[0].credential"},
		{"upstream:\n  credentials:\n    default: {identity_files: [k]}\ntargets:\n  - hosts: [a]\n", "upstream.credentials.default"},
		{"upstream:\n  credentials:\n    ops: {}\ntargets:\n  - hosts: [a]\n", "upstream.credentials.ops"},
		{"targets:\n  - hosts: [a]\n    mode: fast\n", "targets[0].mode"},
		{"targets:\n  - hosts: [a]\n    mode: splice\n    remote_users: [deploy]\n", "targets[0].remote_users"},
		{"upstream:\n  credentials:\n    ops: {identity_files: [k]}\ntargets:\n  - hosts: [a]\n    mode: splice\n    credential: ops\n", "targets[0].credential: a splice rule"},
		{"targets:\n  - hosts: [a]\n    mode: splice\n    credential: default\n", "targets[0].credential: a splice rule"},
		{"targets:\n  - hosts: ['[']\n", "bad host pattern"},
		{"targets:\n  - hosts: ['web[.-]lab']\n", "targets[0].hosts: bad host pattern"},
		{"targets:\n  - hosts: [a]\n    ports: [0]\n", "targets[0].ports"},
		{"log_level: loud\ntargets: [{hosts: [a]}]\n", "log_level"},
		{"listen: nohostport\ntargets: [{hosts: [a]}]\n", "listen"},
	} {
		_, err := LoadConfig(writeConfig(t, tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to mention %q", tc.body, err, tc.want)
		}
	}
}

func TestConfigMinimalFileIsDefaults(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	c, err := LoadConfig(writeConfig(t, "targets:\n  - hosts: [web]\n    remote_users: [deploy]\n"))
	if err != nil || c.Listen != "127.0.0.1:2222" {
		t.Fatalf("%v %+v", err, c)
	}
	if c.Upstream.UserCertValidity.D() != 5*time.Minute || c.Targets[0].AgentDial {
		t.Errorf("upstream defaults %+v", c.Upstream)
	}
}

// A config file is a shared bastion's: leaving the rules out, or
// commenting every one out, must not open every host.
func TestConfigFileWithoutTargetsIsAnError(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, body := range []string{"", "listen: 127.0.0.1:2022\n", "targets:\n#  - hosts: ['*']\n", "targets: []\n"} {
		_, err := LoadConfig(writeConfig(t, body))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "targets" {
			t.Errorf("%q: error %v, want a FieldError for targets", body, err)
		}
	}
}

// The shipped example documents every field; it must stay loadable.
func TestConfigExampleLoads(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	c, err := LoadConfig(filepath.Join("..", "deploy", "gomux.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Targets) == 0 || c.Upstream.Credentials["legacy"].IdentityFiles == nil {
		t.Errorf("example not read in full: %+v", c)
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
targets:
  - hosts: ["*"]
    remote_users: ["*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Auth.RecheckInterval.D() != 2*time.Second || c.Auth.RevokedKeys[0] != filepath.Join(home, "revoked.krl") ||
		c.Audit.RecordDir != filepath.Join(home, "casts") || c.Auth.AuthorizedKeys[0] != "/etc/gomux/users/%u.keys" {
		t.Errorf("loaded: %+v %+v", c.Auth, c.Audit)
	}
	_, err = LoadConfig(writeConfig(t, "auth:\n  authorized_keys: [/etc/gomux/%h.keys]\ntargets:\n  - hosts: [\"*\"]\n"))
	if err == nil || !strings.Contains(err.Error(), "auth.authorized_keys") {
		t.Errorf("unknown token: %v", err)
	}
}

// Each switch whose default is true is resolved once at load: absent (or
// null) means the default, and an explicit false or true is kept as written.
func TestConfigSwitchesUnsetFalseTrue(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, f := range []struct {
		key string
		def bool
		get func(*Config) bool
	}{
		{"use_ssh_agent", true, func(c *Config) bool { return c.Upstream.UseSSHAgent }},
		{"agent", true, func(c *Config) bool { return c.Upstream.Agent }},
		{"ansible", true, func(c *Config) bool { return c.Upstream.Ansible }},
		{"warm_python", true, func(c *Config) bool { return c.Upstream.WarmPython }},
		{"agent_dial", false, func(c *Config) bool { return c.Targets[0].AgentDial }}, // the rules take it
	} {
		for _, tc := range []struct {
			upstream string
			want     bool
		}{
			{"upstream: {}\n", f.def},
			{"upstream:\n  " + f.key + ": null\n", f.def},
			{"upstream:\n  " + f.key + ": false\n", false},
			{"upstream:\n  " + f.key + ": true\n", true},
		} {
			c, err := LoadConfig(writeConfig(t, tc.upstream+"targets: [{hosts: [a], remote_users: [deploy]}]\n"))
			if err != nil {
				t.Fatalf("%q: %v", tc.upstream, err)
			}
			if got := f.get(c); got != tc.want {
				t.Errorf("%q: upstream.%s = %v, want %v", tc.upstream, f.key, got, tc.want)
			}
		}
		// No file at all is the same as the key left out.
		c, err := LoadConfig("")
		if err != nil {
			t.Fatal(err)
		}
		if got := f.get(c); got != f.def {
			t.Errorf("no file: upstream.%s = %v, want %v", f.key, got, f.def)
		}
	}
}

// A rule's agent_dial, when left out, takes upstream.agent_dial; when
// written, false or true, it wins over it.
func TestConfigRuleAgentDialInherits(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, tc := range []struct {
		upstream, rule string
		want           bool
	}{
		{"", "", false},
		{"", "false", false},
		{"", "true", true},
		{"false", "", false},
		{"false", "false", false},
		{"false", "true", true},
		{"true", "", true},
		{"true", "false", false},
		{"true", "true", true},
	} {
		body := "targets:\n  - hosts: [a]\n    remote_users: [deploy]\n  - hosts: [b]\n    remote_users: [deploy]\n"
		if tc.rule != "" {
			body += "    agent_dial: " + tc.rule + "\n"
		}
		if tc.upstream != "" {
			// After the rules, so the order in the file does not matter.
			body += "upstream:\n  agent_dial: " + tc.upstream + "\n"
		}
		c, err := LoadConfig(writeConfig(t, body))
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		wantFirst := tc.upstream == "true"
		if c.Targets[0].AgentDial != wantFirst || c.Targets[1].AgentDial != tc.want {
			t.Errorf("upstream %q rule %q: agent_dial %v %v, want %v %v", tc.upstream, tc.rule,
				c.Targets[0].AgentDial, c.Targets[1].AgentDial, wantFirst, tc.want)
		}
	}
	c, err := LoadConfig("")
	if err != nil || c.Targets[0].AgentDial {
		t.Errorf("personal rule agent_dial: %v %+v", err, c)
	}
}

// TestConfigEmptyListIsAnError: a rule's list that is present but empty
// or null (the key is there, its last entry was deleted) is an error
// naming the field, never "anyone"; the key left out keeps its default.
func TestConfigEmptyListIsAnError(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, field := range []string{"users", "remote_users", "hosts", "cidrs", "ports"} {
		for _, empty := range []string{"", " []", " null", " ~"} {
			body := "targets:\n  - hosts: [web]\n    cidrs: [10.0.0.0/8]\n    remote_users: [deploy]\n    users: [alice]\n    ports: [22]\n"
			body = strings.Replace(body, "    "+field+":", "    "+field+":"+empty+"\n    x:", 1)
			body = strings.Replace(body, "  - hosts:", "  - hosts:", 1)
			body = removeKey(body, "x")
			if field == "hosts" {
				body = strings.Replace(body, "  - hosts: [web]\n", "  - cidrs: [10.0.0.0/8]\n    hosts:"+empty+"\n", 1)
				body = strings.Replace(body, "    cidrs: [10.0.0.0/8]\n    remote_users", "    remote_users", 1)
			}
			_, err := LoadConfig(writeConfig(t, body))
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "targets[0]."+field || !strings.Contains(err.Error(), "empty") {
				t.Errorf("%s:%q: error %v, want a FieldError for targets[0].%s saying it is empty\n%s", field, empty, err, field, body)
			}
		}
	}
	// Absent keeps today's meaning.
	c, err := LoadConfig(writeConfig(t, "targets:\n  - hosts: [web]\n    remote_users: [deploy]\n"))
	if err != nil || c.Targets[0].Users != nil || c.Targets[0].Ports != nil {
		t.Errorf("absent lists: %v %+v", err, c)
	}
}

// removeKey drops the line "    KEY:..." that the test used as a marker.
func removeKey(body, key string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, "    "+key+":") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestConfigAccelerateRuleNamesRemoteUsers: in a file, a rule that
// accelerates says whom it lets in as; other modes take no remote_users.
// The personal default (no file) is unchanged.
func TestConfigAccelerateRuleNamesRemoteUsers(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, body := range []string{
		"targets:\n  - hosts: [web]\n",
		"targets:\n  - hosts: [web]\n    mode: accelerate\n",
		"targets:\n  - hosts: [db]\n    mode: deny\n  - hosts: [web]\n",
	} {
		_, err := LoadConfig(writeConfig(t, body))
		var fe *FieldError
		if !errors.As(err, &fe) || !strings.HasSuffix(fe.Field, ".remote_users") || !strings.Contains(err.Error(), "required") {
			t.Errorf("%q: error %v, want remote_users required", body, err)
		}
	}
	for _, body := range []string{
		"targets:\n  - hosts: [web]\n    remote_users: [deploy]\n",
		"targets:\n  - hosts: [web]\n    remote_users: ['*']\n",
		"targets:\n  - hosts: [db]\n    mode: deny\n  - hosts: [web]\n    mode: splice\n",
	} {
		if _, err := LoadConfig(writeConfig(t, body)); err != nil {
			t.Errorf("%q: %v", body, err)
		}
	}
	for _, body := range []string{
		"targets:\n  - hosts: [db]\n    mode: deny\n    remote_users: [deploy]\n",
		"targets:\n  - hosts: [web]\n    mode: splice\n    remote_users: [deploy]\n",
	} {
		_, err := LoadConfig(writeConfig(t, body))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "targets[0].remote_users" {
			t.Errorf("%q: error %v, want targets[0].remote_users refused", body, err)
		}
	}
	// ["*"] still never means root.
	c, err := LoadConfig(writeConfig(t, "targets:\n  - hosts: [web]\n    remote_users: ['*']\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := NewPolicy(c.Targets, fakeResolver{"web": {"192.0.2.1"}})
	if d := p.Decide(context.Background(), "alice", "web", 22); d.AllowsRemoteUser("root") || !d.AllowsRemoteUser("deploy") {
		t.Errorf("remote_users ['*']: root %v deploy %v", d.AllowsRemoteUser("root"), d.AllowsRemoteUser("deploy"))
	}
	if c, err := LoadConfig(""); err != nil || c.Targets[0].RemoteUsers != nil {
		t.Errorf("personal default: %v %+v", err, c)
	}
}
