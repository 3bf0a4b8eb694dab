package proxy

import (
	"fmt"
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
