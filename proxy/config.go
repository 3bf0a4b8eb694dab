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

	"github.com/gomux/gomux/proxy/upstream"
)

// Config is one config file: what only a restart changes (StartConfig)
// and what a reload replaces (LiveConfig), decoded from the same keys so
// the file keeps one shape (the limits section holds keys of each). The
// zero value is not usable; LoadConfig returns a Config whose every field
// holds either the operator's value or its documented default, resolved
// once into plain values, so the rest of the proxy never has to know
// which. A Server keeps the first half as it started and the second
// behind one accessor, so no code reads a replaced field from the
// start-up copy.
type Config struct {
	StartConfig
	LiveConfig
}

// StartConfig is what only a restart changes: what is bound, opened or
// sized once at start (the listeners, the state directory and its keys,
// the upstream pool and the shim's state). A reload that changes one of
// its keys logs it and keeps the running value; RestartOnlyKeys names
// them, from this type.
type StartConfig struct {
	// Listen is the front address. Default 127.0.0.1:2222, so a laptop or CI
	// runner can start gomux without exposing it.
	Listen string `yaml:"listen"`
	// StateDir holds the front host key, the host CA and the trust-on-first-use
	// known_hosts. Default $XDG_STATE_HOME/gomux, else ~/.local/state/gomux.
	StateDir string `yaml:"state_dir"`
	// HostCertValidity is how long a minted host certificate is valid. Default 24h.
	HostCertValidity Duration `yaml:"host_cert_validity"`
	// StatsInterval is how often gomux logs its own goroutines, memory
	// and open files (event "stats"), so a leak shows in the log before
	// it shows as an outage. Default 1m.
	StatsInterval Duration `yaml:"stats_interval"`
	// MetricsListen is the address of the Prometheus /metrics, /healthz
	// and /readyz endpoint, e.g. 127.0.0.1:9222. Default "": off.
	MetricsListen string `yaml:"metrics_listen"`
	// AdminSocket is the unix socket gomux sessions and gomux kill talk
	// to: mode 0600, for gomux's own user (and root) only, never on the
	// network. Default "": <state_dir>/admin.sock (AdminSocketPath); set
	// it elsewhere where state_dir is read-only (a Kubernetes Secret).
	AdminSocket string `yaml:"admin_socket"`
	// ProxyProtocol reads the real client address from a load balancer's
	// PROXY protocol header. Default off.
	ProxyProtocol ProxyProtocolConfig `yaml:"proxy_protocol"`

	Upstream UpstreamConfig `yaml:"upstream"`
	// Limits are the limits section's keys that size the upstream pool
	// and the shim's state.
	Limits LimitsConfig `yaml:"limits"`
}

// LiveConfig is what a reload replaces: who may log in, where they may
// go, what is recorded, and what the front admits. Every connection,
// forward, login and session channel reads the one in force when it
// starts, and a reload decides again what open ones hold.
type LiveConfig struct {
	// DrainTimeout is how long SIGTERM waits for running channels. Default 30s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// LogLevel is one of debug, info, warn, error. Default info.
	LogLevel string `yaml:"log_level"`

	Auth  AuthConfig  `yaml:"auth"`
	Audit AuditConfig `yaml:"audit"`
	// Limits are the limits section's keys that bound what clients may
	// hold: connections, channels and memory.
	Limits AdmissionLimits `yaml:"limits"`
	// Targets are the access rules, first match wins; a destination no
	// rule matches is denied. Required in a config file. Without a config
	// file: one rule accelerating every host on port 22, the personal-use
	// case where the operator is the only user.
	Targets []TargetRule `yaml:"targets"`
}

// AuthConfig says which client keys the front accepts.
type AuthConfig struct {
	// AuthorizedKeys files, in OpenSSH authorized_keys format. As in sshd's
	// AuthorizedKeysFile, %u expands to the login name given to gomux and
	// %% to %: a key in /etc/gomux/users/%u.keys logs in only as that
	// name. A file without %u vouches only for the account gomux runs as.
	// Default: the running user's ~/.ssh/authorized_keys.
	AuthorizedKeys []string `yaml:"authorized_keys"`
	// UserCAKeys files, each holding CA public keys (authorized_keys format)
	// whose user certificates are accepted when a principal matches the login
	// name. Default none.
	UserCAKeys []string `yaml:"user_ca_keys"`
	// RevokedKeys files, each either public keys in authorized_keys format
	// or an OpenSSH binary KRL (ssh-keygen -k), refuse keys and
	// certificates (by key, CA and serial, or key id). Re-read on change.
	// Default none.
	RevokedKeys []string `yaml:"revoked_keys"`
	// RecheckInterval is how often every open front connection is checked
	// again (key still listed, not revoked, certificate not expired); one
	// that fails is closed. Default 15s.
	RecheckInterval Duration `yaml:"recheck_interval"`
}

// AuditConfig says what gomux records beyond its log.
type AuditConfig struct {
	// LogFile, when set, receives every audit event (IsAuditEvent) as
	// one JSON line, appended, whatever log_level says; they still go to
	// the log too where the level lets them. Default "": the audit events
	// go to the log (stderr) whatever its level. A reload reopens it, so
	// logrotate's postrotate can be `systemctl reload gomux`.
	LogFile string `yaml:"log_file"`
	// RecordDir, when set, receives one asciicast v2 file (mode 0600) per
	// session with a pty: the terminal output as the person saw it, never
	// their keystrokes (which may be passwords). Default "" (off).
	RecordDir string `yaml:"record_dir"`
	// RecordMaxMiB caps one recording, so a session that prints without
	// end (`cat /dev/urandom`, `yes`) cannot fill the disk the recordings
	// share: at the cap the recording ends with a marker saying so, a
	// warning is logged, and the session goes on. Default 64.
	RecordMaxMiB int `yaml:"record_max_mib"`
	// RecordQuotaMiB caps what the recordings in record_dir hold
	// together: past it no new recording starts, and one that runs stops
	// there as at record_max_mib. Default 0: no cap beyond the disk.
	RecordQuotaMiB int `yaml:"record_quota_mib"`
	// RecordRequired refuses a session that should be recorded (one with
	// a pty, or a shell) when it cannot be (record_dir unset or not
	// writable, the disk full, record_quota_mib reached), with a message
	// to the client. Default false: such a session goes on unrecorded and
	// a "recording" error is logged.
	RecordRequired bool `yaml:"record_required"`
}

// UpstreamConfig says how gomux reaches targets. Only a restart changes
// it: the upstream pool is made with it. Its agent_dial key is not here:
// it is the default of the rules' own, which they take when the file is
// read (explicitBools), so it is reloaded with them.
type UpstreamConfig struct {
	// IdentityFiles are private keys offered to targets. Default: the
	// running user's ~/.ssh/id_ed25519, id_ecdsa and id_rsa that exist.
	IdentityFiles []string `yaml:"identity_files"`
	// UseSSHAgent offers the keys of the ssh-agent at gomux's SSH_AUTH_SOCK.
	// Default true (ignored when SSH_AUTH_SOCK is unset).
	UseSSHAgent bool `yaml:"use_ssh_agent"`
	// KnownHosts files verify target host keys (@cert-authority honoured).
	// Default ~/.ssh/known_hosts.
	KnownHosts []string `yaml:"known_hosts"`
	// TrustOnFirstUse accepts and records the key of a target that no
	// known_hosts file names, in <state_dir>/known_hosts. Default false.
	TrustOnFirstUse bool `yaml:"trust_on_first_use"`
	// ConnectTimeout bounds TCP connect plus SSH handshake. Default 10s.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// KeepaliveInterval is the SSH keepalive period. Default 4s: with
	// KeepaliveCountMax 2, a path that went silent is closed within about
	// 12 s, so a task on it fails as unreachable instead of hanging.
	KeepaliveInterval Duration `yaml:"keepalive_interval"`
	// KeepaliveCountMax unanswered keepalives close the connection. Default 2.
	KeepaliveCountMax int `yaml:"keepalive_count_max"`
	// IdleTimeout closes an upstream connection no one has used for this
	// long. Default 10m.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// Agent runs gomux-agent on targets. Default true; false serves every
	// target by forwarding channels, as in fallback.
	Agent bool `yaml:"agent"`
	// Ansible turns on the shim: gomux answers Ansible's temp-dir steps
	// itself and sends each task to the agent as one batch. Default true;
	// false passes every command through unchanged.
	Ansible bool `yaml:"ansible"`
	// WarmPython runs Ansible modules in a warm Python fork server on the
	// target (one per interpreter and user, started by the first task that
	// needs it, become tasks included) instead of a new interpreter per
	// task. Default true; needs ansible: true. false runs every module
	// with the interpreter Ansible named, as sent.
	WarmPython bool `yaml:"warm_python"`
	// WarmPythonIdle is how long a fork server waits for a task before it
	// exits. Default 5m.
	WarmPythonIdle Duration `yaml:"warm_python_idle"`
	// AcceptEnv lists the env request names passed to commands, like sshd's
	// AcceptEnv (* wildcards). Default LANG, LC_*.
	AcceptEnv []string `yaml:"accept_env"`
	// UserCA is a private key file. When set, gomux logs in to targets of
	// the default credential with a short-lived user certificate it signs
	// for each new connection: principal the remote user, key ID
	// "gomux:<person>", so the target's sshd log names who acted. Targets
	// trust it with TrustedUserCAKeys. Default none.
	UserCA string `yaml:"user_ca"`
	// UserCertValidity is how long such a certificate is valid (plus one
	// minute of clock-skew slack before now). Default 5m.
	UserCertValidity Duration `yaml:"user_cert_validity"`
	// UserPrincipalPrefix is put before the remote user in the principal
	// of the certificates user_ca signs ("gomux-" gives gomux-deploy for
	// deploy), so a target can accept gomux's certificates only for the
	// principals its AuthorizedPrincipalsFile lists, instead of any
	// certificate whose principal is the login name. Letters, digits and
	// . _ - @ + : only. Default "": the principal is the remote user.
	UserPrincipalPrefix string `yaml:"user_principal_prefix"`
	// Credentials are named upstream credentials that target rules pick
	// with `credential:`. The name "default" is reserved for the
	// identity_files, use_ssh_agent and user_ca above. Default none.
	Credentials map[string]Credential `yaml:"credentials"`
}

// DefaultCredential names the credential made of upstream.identity_files,
// upstream.use_ssh_agent and upstream.user_ca: the pool's own name for it.
const DefaultCredential = upstream.DefaultCredential

// Credential is one way of logging in to targets. Which one a connection
// uses is part of the pool's key, so targets never see a credential their
// rule does not name.
type Credential struct {
	// IdentityFiles are private keys offered, in order. Default none.
	IdentityFiles []string `yaml:"identity_files"`
	// UseSSHAgent offers the keys of the ssh-agent at gomux's
	// SSH_AUTH_SOCK after the files. Default false.
	UseSSHAgent bool `yaml:"use_ssh_agent"`
	// UserCA signs a per-person certificate offered before the keys, as
	// upstream.user_ca does for the default credential. Default none.
	UserCA string `yaml:"user_ca"`
	// UserPrincipalPrefix is upstream.user_principal_prefix for this
	// credential's certificates. Default "".
	UserPrincipalPrefix string `yaml:"user_principal_prefix"`
}

// TargetRule grants (or denies) a set of destinations. Names are compared
// lowercased and without a trailing dot; the address gomux dials is the one
// it resolved when deciding.
type TargetRule struct {
	// Hosts are shell patterns (*, ?, [..]) matched against the normalized
	// name (an IP literal in canonical form), label by label as in TLS:
	// a wildcard never crosses a dot, so *.prod.example.com does not
	// match a.b.prod.example.com (write *.*.prod.example.com, or use
	// cidrs, to go deeper on purpose). "*" alone matches every host. At
	// least one of hosts and cidrs is required; with both, both must match.
	Hosts []string `yaml:"hosts"`
	// CIDRs are networks (or single addresses) that must contain the
	// address the name resolves to, so no alias or IP literal in a network
	// escapes a rule about it. Loopback, link-local (169.254.169.254
	// included) and unspecified addresses are reached only by a rule whose
	// cidrs name them; "*" or 0.0.0.0/0 does not.
	CIDRs []string `yaml:"cidrs"`
	// Ports limits the ports. Default: 22 only.
	Ports []int `yaml:"ports"`
	// Users limits the front login names (persons). Default (key left
	// out): any authenticated user. Like every list of a rule, written
	// but empty or null it is an error, never "anyone".
	Users []string `yaml:"users"`
	// RemoteUsers limits the user names on the target (shell patterns).
	// Root is allowed only when listed literally. Required in a config
	// file for an accelerate rule, refused for splice and deny; without
	// a file (the personal rule), any but root.
	RemoteUsers []string `yaml:"remote_users"`
	// Mode is accelerate (default), splice, forward or deny.
	Mode Mode `yaml:"mode"`
	// Credential names the upstream credential (upstream.credentials) used
	// to log in to these targets. Default "default". Refused on splice and
	// forward rules, where gomux does not log in.
	Credential string `yaml:"credential"`
	// AgentDial overrides upstream.agent_dial for forwards inside
	// accelerated sessions to these destinations. Once loaded it holds
	// the rule's own value, or upstream.agent_dial when the rule sets none.
	AgentDial bool `yaml:"agent_dial"`
}

// Mode is what the front does with a forwarding request.
type Mode string

// The modes a target rule can select.
const (
	// ModeAccelerate terminates the inner SSH session in gomux.
	ModeAccelerate Mode = "accelerate"
	// ModeSplice copies bytes to the target like a plain jump host.
	ModeSplice Mode = "splice"
	// ModeDeny refuses the request.
	ModeDeny Mode = "deny"
	// ModeForward grants a forward (-L, -W) inside an accelerated
	// session, sent on from that session's target: through its sshd's
	// direct-tcpip (or by the agent with agent_dial). A database or web
	// port behind a target is reached this way, and only this way: the
	// front refuses such a destination, and inside a session nothing but
	// a forward rule is sent on from the target.
	ModeForward Mode = "forward"
)

// Duration is a time.Duration written as "10s" or "5m" in YAML.
type Duration time.Duration

// UnmarshalYAML reads Go duration syntax, so units are always explicit.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (use units, e.g. 10s or 5m)", s)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// FieldError names the config field that is wrong, so the operator does not
// have to guess which of several similar values was meant.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

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
