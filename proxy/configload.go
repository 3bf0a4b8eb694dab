package proxy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// LoadConfig reads a YAML config file. An empty path means no file: every
// default applies. Unknown fields are errors, so a typo never silently
// becomes a default.
func LoadConfig(path string) (*Config, error) {
	if path == "" {
		return ParseConfig("", nil)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(path, b)
}

// ParseConfig is LoadConfig of the file's content b, already read: the
// file watcher applies exactly the bytes it saw settle, never a later
// read that may be half-written. path names the file in errors; "" means
// no file.
func ParseConfig(path string, b []byte) (*Config, error) {
	var c Config
	var set explicitBools
	personal := path == ""
	if path != "" {
		// One file, three readers: each key is one half's, or set's.
		if err := decodeFile(b, &c.StartConfig, &c.LiveConfig, &set); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, nameFields(b, err))
		}
		if err := checkRuleLists(b); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	// A file without targets (or with every rule commented out) is an
	// error, reported after any other: the personal default is only for
	// running with no file at all.
	noTargets := c.Targets == nil && !personal
	if err := c.applyDefaults(&set); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := c.validate(); err != nil {
		if path != "" {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	if noTargets {
		return nil, fmt.Errorf("config %s: %w", path, &FieldError{"targets", errNoTargets})
	}
	if !personal {
		for i, r := range c.Targets {
			if r.Mode == ModeAccelerate && len(r.RemoteUsers) == 0 {
				return nil, fmt.Errorf("config %s: %w", path, &FieldError{fmt.Sprintf("targets[%d].remote_users", i), errNoRemoteUsers})
			}
		}
	}
	return &c, nil
}

// errNoRemoteUsers is why a file's accelerate rule must say whom it lets
// people in as: on a shared bastion that is a decision, not a default.
var errNoRemoteUsers = errors.New(`required in a config file for an accelerate rule: list the login names on the target it lets people in as (e.g. [deploy]; ["*"] is any name but root, root only when listed literally)`)

// ruleLists is where each rule's lists are in the file. yaml.v3 decodes
// a key written with no value, or null, as it decodes an absent key (a
// nil slice); a node tells them apart.
type ruleLists struct {
	Targets []struct {
		Users       yaml.Node `yaml:"users"`
		RemoteUsers yaml.Node `yaml:"remote_users"`
		Hosts       yaml.Node `yaml:"hosts"`
		CIDRs       yaml.Node `yaml:"cidrs"`
		Ports       yaml.Node `yaml:"ports"`
	} `yaml:"targets"`
}

// checkRuleLists refuses a rule's list that is present but empty or null,
// as a list whose last entry was deleted is: absent keeps its default,
// but an empty users: must never turn into "every person".
func checkRuleLists(src []byte) error {
	var rl ruleLists
	if err := yaml.Unmarshal(src, &rl); err != nil {
		return err
	}
	for i, r := range rl.Targets {
		for _, l := range []struct {
			key, absent string
			n           *yaml.Node
		}{
			{"users", "every authenticated person", &r.Users},
			{"remote_users", "required for an accelerate rule", &r.RemoteUsers},
			{"hosts", "any name, if cidrs is set", &r.Hosts},
			{"cidrs", "any address, if hosts is set", &r.CIDRs},
			{"ports", "port 22", &r.Ports},
		} {
			n := l.n
			empty := n.Kind == yaml.SequenceNode && len(n.Content) == 0 ||
				n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
			if !empty {
				continue
			}
			return &FieldError{fmt.Sprintf("targets[%d].%s", i, l.key),
				fmt.Errorf("present but empty (line %d): list its entries, or remove the key (absent: %s)", n.Line, l.absent)}
		}
	}
	return nil
}

// explicitBools is the part of a config file where an absent key means
// something other than false: the switches that default to true, and a
// rule's agent_dial, which inherits upstream.agent_dial. It is read from
// the file beside Config and used only by applyDefaults, so Config holds
// plain resolved values and nothing else in the proxy needs to tell
// "unset" from "false".
type explicitBools struct {
	Upstream struct {
		UseSSHAgent *bool `yaml:"use_ssh_agent"`
		Agent       *bool `yaml:"agent"`
		Ansible     *bool `yaml:"ansible"`
		WarmPython  *bool `yaml:"warm_python"`
		// AgentDial lets forwards opened inside an accelerated session
		// (-L, -W, a nested -J) be dialled by the agent on the target.
		// Default false: they go through the target sshd's own
		// direct-tcpip, so its AllowTcpForwarding and PermitOpen still
		// apply. It is only the default of the rules' own agent_dial,
		// which they take here, so it lives in no half of Config and is
		// reloaded with the rules.
		AgentDial *bool `yaml:"agent_dial"`
	} `yaml:"upstream"`
	Targets []struct {
		AgentDial *bool `yaml:"agent_dial"`
	} `yaml:"targets"`
}

// orDefault is *b when the file set it, else def.
func orDefault(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

// errNoTargets is why a config file must list its rules: on a shared
// bastion no rule means no, never "every host".
var errNoTargets = errors.New("required in a config file: list the rules saying who may reach which hosts (no rule means no)")

var lineRE = regexp.MustCompile(`line (\d+): `)

// nameFields rewrites yaml's "line N: cannot unmarshal ..." into
// "FIELD (line N): ...", because an operator looks for the field.
func nameFields(src []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	var root yaml.Node
	if yaml.Unmarshal(src, &root) != nil {
		return err
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		if sm := lineRE.FindStringSubmatch(m); sm != nil {
			line, _ := strconv.Atoi(sm[1])
			if f := fieldAtLine(&root, line, ""); f != "" {
				m = f + " (" + strings.TrimSuffix(sm[0], ": ") + "): " + m[len(sm[0]):]
			}
		}
		msgs = append(msgs, m)
	}
	return errors.New(strings.Join(msgs, "; "))
}

// fieldAtLine returns the dotted path of the innermost key whose value
// starts on line.
func fieldAtLine(n *yaml.Node, line int, prefix string) string {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if f := fieldAtLine(c, line, prefix); f != "" {
				return f
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if prefix != "" {
				p = prefix + "." + k.Value
			}
			if f := fieldAtLine(v, line, p); f != "" {
				return f
			}
			if k.Line == line || v.Line == line {
				return p
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			if f := fieldAtLine(c, line, fmt.Sprintf("%s[%d]", prefix, i)); f != "" {
				return f
			}
		}
	}
	return ""
}

// applyDefaults fills every field the operator left unset with its
// documented default, half by half and section by section, then expands
// ~ in paths. set says which of the bools the file named.
func (c *Config) applyDefaults(set *explicitBools) error {
	home, _ := os.UserHomeDir()
	if err := c.StartConfig.applyDefaults(home, set); err != nil {
		return err
	}
	c.LiveConfig.applyDefaults(home, set)
	return nil
}

// applyDefaults fills the restart-only half.
func (c *StartConfig) applyDefaults(home string, set *explicitBools) error {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:2222"
	}
	if c.StateDir == "" {
		if x := os.Getenv("XDG_STATE_HOME"); x != "" {
			c.StateDir = filepath.Join(x, "gomux")
		} else if home != "" {
			c.StateDir = filepath.Join(home, ".local", "state", "gomux")
		} else {
			return &FieldError{"state_dir", errors.New("no default: neither XDG_STATE_HOME nor a home directory is set")}
		}
	}
	if c.HostCertValidity == 0 {
		c.HostCertValidity = Duration(24 * time.Hour)
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = Duration(time.Minute)
	}
	c.Upstream.applyDefaults(home, set)
	c.Limits.applyDefaults()
	c.expandPaths(home)
	return nil
}

// applyDefaults fills the half a reload replaces.
func (c *LiveConfig) applyDefaults(home string, set *explicitBools) {
	if c.Audit.RecordMaxMiB == 0 {
		c.Audit.RecordMaxMiB = 64
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = Duration(30 * time.Second)
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	c.Auth.applyDefaults(home)
	c.Limits.applyDefaults()
	c.defaultTargets(set)
	c.expandPaths(home)
}

// applyDefaults fills the auth section.
func (a *AuthConfig) applyDefaults(home string) {
	if a.AuthorizedKeys == nil && home != "" {
		a.AuthorizedKeys = []string{filepath.Join(home, ".ssh", "authorized_keys")}
	}
	if a.RecheckInterval == 0 {
		a.RecheckInterval = Duration(15 * time.Second)
	}
}

// applyDefaults fills the upstream section; set says which bools the
// file named, since their default is true.
func (u *UpstreamConfig) applyDefaults(home string, set *explicitBools) {
	if u.IdentityFiles == nil && home != "" {
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			p := filepath.Join(home, ".ssh", n)
			if _, err := os.Stat(p); err == nil {
				u.IdentityFiles = append(u.IdentityFiles, p)
			}
		}
	}
	u.UseSSHAgent = orDefault(set.Upstream.UseSSHAgent, true)
	u.Agent = orDefault(set.Upstream.Agent, true)
	u.Ansible = orDefault(set.Upstream.Ansible, true)
	u.WarmPython = orDefault(set.Upstream.WarmPython, true)
	if u.KnownHosts == nil && home != "" {
		u.KnownHosts = []string{filepath.Join(home, ".ssh", "known_hosts")}
	}
	if u.ConnectTimeout == 0 {
		u.ConnectTimeout = Duration(10 * time.Second)
	}
	if u.KeepaliveInterval == 0 {
		u.KeepaliveInterval = Duration(4 * time.Second)
	}
	if u.KeepaliveCountMax == 0 {
		u.KeepaliveCountMax = 2
	}
	if u.IdleTimeout == 0 {
		u.IdleTimeout = Duration(10 * time.Minute)
	}
	if u.WarmPythonIdle == 0 {
		u.WarmPythonIdle = Duration(5 * time.Minute)
	}
	if u.AcceptEnv == nil {
		u.AcceptEnv = []string{"LANG", "LC_*"}
	}
	if u.UserCertValidity == 0 {
		u.UserCertValidity = Duration(5 * time.Minute)
	}
}

// defaultTargets adds the personal-use rule when there is no file and
// resolves each rule's mode and agent_dial.
func (c *LiveConfig) defaultTargets(set *explicitBools) {
	if c.Targets == nil {
		// The personal default; LoadConfig refuses a file without targets.
		c.Targets = []TargetRule{{Hosts: []string{"*"}}}
	}
	for i := range c.Targets {
		r := &c.Targets[i]
		if r.Mode == "" {
			r.Mode = ModeAccelerate
		}
		var own *bool
		if i < len(set.Targets) {
			own = set.Targets[i].AgentDial
		}
		r.AgentDial = orDefault(own, orDefault(set.Upstream.AgentDial, false))
	}
}

// expandPaths turns a leading ~ into the home directory in every path.
func (c *StartConfig) expandPaths(home string) {
	c.StateDir = expandHome(c.StateDir, home)
	if c.AdminSocket != "" {
		c.AdminSocket = expandHome(c.AdminSocket, home)
	}
	u := &c.Upstream
	expandAll(u.IdentityFiles, home)
	expandAll(u.KnownHosts, home)
	u.UserCA = expandHome(u.UserCA, home)
	for n, cr := range u.Credentials {
		expandAll(cr.IdentityFiles, home)
		cr.UserCA = expandHome(cr.UserCA, home)
		u.Credentials[n] = cr
	}
}

// expandPaths turns a leading ~ into the home directory in every path.
func (c *LiveConfig) expandPaths(home string) {
	if c.Audit.RecordDir != "" {
		c.Audit.RecordDir = expandHome(c.Audit.RecordDir, home)
	}
	c.Audit.LogFile = expandHome(c.Audit.LogFile, home)
	expandAll(c.Auth.AuthorizedKeys, home)
	expandAll(c.Auth.UserCAKeys, home)
	expandAll(c.Auth.RevokedKeys, home)
}

func expandAll(ps []string, home string) {
	for i, p := range ps {
		ps[i] = expandHome(p, home)
	}
}

// AdminSocketPath is where the admin socket is: admin_socket, else
// admin.sock in the state directory (as -state set it).
func (c *StartConfig) AdminSocketPath() string {
	if c.AdminSocket != "" {
		return c.AdminSocket
	}
	return filepath.Join(c.StateDir, "admin.sock")
}

func expandHome(p, home string) string {
	if home != "" && (p == "~" || strings.HasPrefix(p, "~/")) {
		return filepath.Join(home, p[1:])
	}
	return p
}

func (c *Config) validate() error {
	if _, _, err := splitHostPort(c.Listen); err != nil {
		return &FieldError{"listen", err}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return &FieldError{"log_level", fmt.Errorf("%q is not one of debug, info, warn, error", c.LogLevel)}
	}
	if err := c.StartConfig.Limits.validate(); err != nil {
		return err
	}
	if err := c.LiveConfig.Limits.validate(); err != nil {
		return err
	}
	for _, p := range c.Auth.AuthorizedKeys {
		if _, err := expandUserPath(p, "x"); err != nil {
			return &FieldError{"auth.authorized_keys", err}
		}
	}
	if err := c.validateOps(); err != nil {
		return err
	}
	if c.Audit.RecordMaxMiB < 0 {
		return &FieldError{"audit.record_max_mib", errors.New("must be positive")}
	}
	if c.Audit.RecordQuotaMiB < 0 {
		return &FieldError{"audit.record_quota_mib", errors.New("must be positive")}
	}
	if c.Upstream.KeepaliveCountMax < 0 {
		return &FieldError{"upstream.keepalive_count_max", errors.New("must be positive")}
	}
	if err := c.validateCredentials(); err != nil {
		return err
	}
	if len(c.Targets) == 0 {
		return &FieldError{"targets", errNoTargets}
	}
	for i, r := range c.Targets {
		if err := c.validateTarget(fmt.Sprintf("targets[%d]", i), r); err != nil {
			return err
		}
	}
	for _, p := range c.Upstream.AcceptEnv {
		if err := checkPattern(p); err != nil {
			return &FieldError{"upstream.accept_env", err}
		}
	}
	return nil
}

// validateCredentials checks the named upstream credentials.
func (c *Config) validateCredentials() error {
	for n, cr := range c.Upstream.Credentials {
		f := "upstream.credentials." + n
		if n == DefaultCredential || n == "" {
			return &FieldError{f, fmt.Errorf("the name %q is reserved for upstream.identity_files", n)}
		}
		if len(cr.IdentityFiles) == 0 && !cr.UseSSHAgent && cr.UserCA == "" {
			return &FieldError{f, errors.New("names no identity_files, use_ssh_agent or user_ca")}
		}
	}
	return nil
}

// validateTarget checks one targets rule; f is its field name.
func (c *Config) validateTarget(f string, r TargetRule) error {
	if len(r.Hosts) == 0 && len(r.CIDRs) == 0 {
		return &FieldError{f + ".hosts", errors.New("at least one host pattern or cidrs network is required")}
	}
	for _, p := range r.Hosts {
		if err := checkHostPattern(p); err != nil {
			return &FieldError{f + ".hosts", err}
		}
	}
	for _, pats := range [][]string{r.Users, r.RemoteUsers} {
		for _, p := range pats {
			if err := checkPattern(p); err != nil {
				return &FieldError{f, err}
			}
		}
	}
	for _, n := range r.CIDRs {
		if _, err := parseCIDR(n); err != nil {
			return &FieldError{f + ".cidrs", err}
		}
	}
	for _, p := range r.Ports {
		if p < 1 || p > 65535 {
			return &FieldError{f + ".ports", fmt.Errorf("%d is not a TCP port", p)}
		}
	}
	switch r.Mode {
	case ModeAccelerate, ModeSplice, ModeDeny, ModeForward:
	default:
		return &FieldError{f + ".mode", fmt.Errorf("%q is not one of accelerate, splice, forward, deny", r.Mode)}
	}
	if r.Mode == ModeForward && len(r.RemoteUsers) > 0 {
		return &FieldError{f + ".remote_users", errors.New("a forward rule has no login of its own: the session it is opened in was decided by its own rule")}
	}
	if r.Mode == ModeForward && r.Credential != "" {
		return &FieldError{f + ".credential", errors.New("a forward rule has no login of its own: it is sent on by the session's upstream, with that rule's credential")}
	}
	if r.Mode == ModeSplice && len(r.RemoteUsers) > 0 {
		// A spliced connection is the client's own encrypted session
		// with the target: gomux never sees its login name, so such a
		// rule would promise what nothing enforces.
		return &FieldError{f + ".remote_users", errors.New("a splice rule cannot limit remote users: gomux does not see the login inside a spliced connection (use mode accelerate, or the target's sshd)")}
	}
	if r.Mode == ModeSplice && r.Credential != "" {
		// gomux never logs in on a spliced connection: the client does,
		// with its own key, so a credential there would do nothing.
		return &FieldError{f + ".credential", errors.New("a splice rule logs in with nothing of gomux's: the client logs in to the target itself (use mode accelerate for gomux's credential)")}
	}
	if r.Mode == ModeDeny && len(r.RemoteUsers) > 0 {
		// A deny rule refuses whatever the login name: remote_users
		// there would read as "deny only these".
		return &FieldError{f + ".remote_users", errors.New("a deny rule refuses every remote user: remove remote_users, or put an accelerate rule for the allowed names before it")}
	}
	if r.Credential != "" && r.Credential != DefaultCredential {
		if _, ok := c.Upstream.Credentials[r.Credential]; !ok {
			return &FieldError{f + ".credential", fmt.Errorf("%q is not in upstream.credentials", r.Credential)}
		}
	}
	return nil
}
