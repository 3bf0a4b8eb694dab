package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/gomux/gomux/agent/dist"
)

// HostCAExists reports whether stateDir already holds a host CA, so
// `gomux ca` can refuse to mint a new one by accident: a new CA would not
// match the @cert-authority line clients already have.
func HostCAExists(stateDir string) bool {
	_, err := os.Stat(filepath.Join(stateDir, "host_ca_ed25519"))
	return err == nil
}

// CheckStep is one step of what a connection to a target does, as
// `gomux check` runs it: its result and, when it failed, what to change.
type CheckStep struct {
	// Name is the step: policy, connect, host_key, login, agent, python,
	// sudo.
	Name string
	// Status is ok, fail, warn or skip.
	Status string
	// Detail says what happened.
	Detail string
	// Fix says what to change when Status is fail or warn.
	Fix string
}

// Check runs against one target what an accelerated connection for
// person would: the policy decision, the upstream connection (TCP, host
// key, login), the agent start or upload (and why it fell back), then
// looks for Python and passwordless sudo as Ansible would need them. It
// uses the same code as a connection (Policy.Decide, Pool.Acquire,
// Lease.Agent), so what it reports is what a client would meet. target is
// [user@]host[:port]; the default user is person's name.
func Check(ctx context.Context, cfg *Config, agents map[string]dist.Binary, person, target string) []CheckStep {
	var steps []CheckStep
	add := func(name, status, detail, fix string) {
		steps = append(steps, CheckStep{Name: name, Status: status, Detail: detail, Fix: fix})
	}
	user, hostport := person, target
	if i := strings.LastIndex(target, "@"); i >= 0 {
		user, hostport = target[:i], target[i+1:]
	}
	host, port := hostport, 22
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil {
			add("policy", "fail", fmt.Sprintf("bad port in %q", target), "write the target as [user@]host[:port]")
			return steps
		}
		host, port = h, n
	}

	lc, err := newLiveConfig(cfg, "")
	if err != nil {
		add("policy", "fail", err.Error(), "fix the config file (gomux serve would refuse it too)")
		return steps
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.Upstream.ConnectTimeout.D())
	d := lc.policy.Decide(dctx, person, host, port)
	cancel()
	rule := "no rule"
	if d.Rule >= 0 {
		rule = fmt.Sprintf("targets[%d]", d.Rule)
	}
	switch {
	case d.Mode == ModeDeny:
		add("policy", "fail", fmt.Sprintf("%s may not reach %s: %s (%s)", person, joinHostPort(host, port), d.Reason, rule),
			fmt.Sprintf("add a targets rule before any that denies it, allowing hosts %q (or its cidrs) for users [%s] on port %d", d.Host, person, port))
		return steps
	case !d.AllowsRemoteUser(user):
		add("policy", "fail", fmt.Sprintf("%s may reach %s (%s) but not as %s", person, d.HostPort(), rule, user),
			fmt.Sprintf("list %q in that rule's remote_users (root only literally)", user))
		return steps
	}
	add("policy", "ok", fmt.Sprintf("%s as %s to %s (%s): %s, credential %s", person, user, d.HostPort(), d.DialAddr(), rule+" "+string(d.Mode), d.Credential), "")
	if d.Mode == ModeSplice {
		var dl net.Dialer
		cctx, cancel := context.WithTimeout(ctx, cfg.Upstream.ConnectTimeout.D())
		c, err := dl.DialContext(cctx, "tcp", d.DialAddr())
		cancel()
		if err != nil {
			add("connect", "fail", err.Error(), "check that the target listens on "+d.DialAddr()+" and that no firewall drops gomux's connections")
			return steps
		}
		c.Close()
		add("connect", "ok", "spliced: gomux only copies bytes; the client checks the host key and logs in itself", "")
		return steps
	}

	// The pool logs as a connection would; the log explains an agent
	// that fell back, so keep it.
	var logBuf lockedBuffer
	pool, err := NewPool(PoolConfig{Upstream: cfg.Upstream, StateDir: cfg.StateDir, Agents: agents, Limits: cfg.Limits}, zerolog.New(&logBuf))
	if err != nil {
		add("connect", "fail", err.Error(), "fix the upstream credentials in the config")
		return steps
	}
	defer pool.Close()
	actx, cancel := context.WithTimeout(ctx, 2*cfg.Upstream.ConnectTimeout.D()+time.Minute)
	defer cancel()
	lease, err := pool.Acquire(actx, UpstreamTarget{Host: d.HostPort(), Dial: d.DialAddr(), User: user, Credential: d.Credential, Person: person})
	if err != nil {
		steps = append(steps, connectFailure(err, d, user, pool)...)
		return steps
	}
	defer lease.Release()
	add("connect", "ok", "TCP to "+d.DialAddr(), "")
	add("host_key", "ok", fmt.Sprintf("verified for %q against %s", d.HostPort(), strings.Join(cfg.Upstream.KnownHosts, ", ")), "")
	add("login", "ok", fmt.Sprintf("as %s with credential %s (%s)", user, d.Credential, string(lease.Client().ServerVersion())), "")

	a, err := lease.Agent(actx)
	switch {
	case err != nil:
		add("agent", "fail", err.Error(), "gomux will retry per channel; see the agent_start log lines")
	case a == nil:
		reason := lease.fallbackReason()
		fix := agentFix(reason)
		if strings.Contains(reason, "Permission denied") || strings.Contains(reason, "did not start") {
			if opts := remote(actx, lease, `findmnt -no OPTIONS -T "$HOME/.cache" 2>/dev/null || findmnt -no OPTIONS -T "$HOME"`); hasMountOpt(opts, "noexec") {
				reason = "the agent cache ~/.cache/gomux is on a noexec filesystem (" + strings.TrimSpace(opts) + "): " + reason
				fix = "mount the home directory (or ~/.cache) without noexec, or accept fallback: gomux then serves this target through its sshd, channel by channel, without acceleration"
			}
		}
		add("agent", "warn", "fell back to the target's sshd: "+reason, fix)
	default:
		info := a.Info()
		how := "cached copy verified and started"
		if strings.Contains(logBuf.String(), `"event":"`+EventAgentUpload+`"`) {
			how = "uploaded to ~/.cache/gomux, verified and started"
		}
		add("agent", "ok", fmt.Sprintf("%s (agent %s, %s, home %s)", how, info.AgentVersion, info.Arch, info.Home), "")
	}

	if out := remote(actx, lease, `for p in python3 /usr/bin/python3 python /usr/libexec/platform-python; do command -v "$p" >/dev/null 2>&1 && { command -v "$p"; "$p" -c 'import sys; print(sys.version.split()[0])'; exit 0; }; done; exit 1`); out != "" {
		add("python", "ok", strings.Join(strings.Fields(out), " "), "")
	} else {
		add("python", "fail", "no python3 in the login shell's PATH", "install python3 on the target, or set ansible_python_interpreter for it (only raw works without Python)")
	}
	if out, err := remoteErr(actx, lease, `sudo -n true`); err == nil {
		add("sudo", "ok", "sudo -n true works: become without a password", "")
	} else {
		add("sudo", "warn", "sudo -n true failed: "+strings.Join(strings.Fields(out+" ("+err.Error()+")"), " "),
			"only needed for become: give "+user+" NOPASSWD in sudoers, or run ansible-playbook with --ask-become-pass")
	}
	return steps
}

// connectFailure says which part of the upstream connection failed.
func connectFailure(err error, d Decision, user string, pool *Pool) []CheckStep {
	var ke *knownhosts.KeyError
	msg := err.Error()
	switch {
	case errors.As(err, &ke) && len(ke.Want) > 0:
		return []CheckStep{{Name: "connect", Status: "ok", Detail: "TCP to " + d.DialAddr()},
			{Name: "host_key", Status: "fail", Detail: "the target's host key does not match known_hosts: " + msg,
				Fix: "if the target was rebuilt, replace its line in upstream.known_hosts (ssh-keyscan " + d.Host + "); otherwise do not connect: this is what an attack looks like"}}
	case errors.As(err, &ke):
		return []CheckStep{{Name: "connect", Status: "ok", Detail: "TCP to " + d.DialAddr()},
			{Name: "host_key", Status: "fail", Detail: "the target's host key is in no known_hosts file: " + msg,
				Fix: "add it to upstream.known_hosts (verify ssh-keyscan " + d.Host + " out of band, or use an @cert-authority line), or set upstream.trust_on_first_use"}}
	case strings.Contains(msg, "unable to authenticate") || strings.Contains(msg, "no supported methods remain"):
		fps := pool.publicKeys(d.Credential)
		return []CheckStep{{Name: "connect", Status: "ok", Detail: "TCP to " + d.DialAddr()},
			{Name: "host_key", Status: "ok", Detail: "verified against known_hosts"},
			{Name: "login", Status: "fail", Detail: msg,
				Fix: fmt.Sprintf("put one of credential %s's keys (%s) in ~%s/.ssh/authorized_keys on the target, or trust its user_ca there (TrustedUserCAKeys)", d.Credential, fps, user)}}
	case strings.HasPrefix(msg, "connect to "):
		return []CheckStep{{Name: "connect", Status: "fail", Detail: msg,
			Fix: "check that sshd listens on " + d.DialAddr() + ", and that no firewall drops connections from gomux"}}
	}
	return []CheckStep{{Name: "connect", Status: "fail", Detail: msg, Fix: "see the message; gomux serve would fail the same way"}}
}

// publicKeys lists the fingerprints of a credential's key files, for a
// fix that says which key the target must accept.
func (p *Pool) publicKeys(cred string) string {
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

// agentFix is the fix for an agent fallback reason.
func agentFix(reason string) string {
	switch {
	case strings.Contains(reason, "disabled in config"):
		return "set upstream.agent: true to accelerate"
	case strings.Contains(reason, "embeds no agent"):
		return "build gomux with make, which embeds the agent binaries"
	case strings.Contains(reason, "no agent build"):
		return "this machine type has no agent build; gomux serves it through sshd"
	case strings.Contains(reason, "unsafe agent cache"), strings.Contains(reason, "not owned"), strings.Contains(reason, "writable by others"):
		return "make the home directory and ~/.cache owned by the user and not group- or world-writable (as sshd's StrictModes wants)"
	case strings.Contains(reason, "cannot install"):
		return "give the user a writable home (~/.cache/gomux), or accept fallback through sshd"
	}
	return "see the reason; gomux serves this target through its sshd, channel by channel, without acceleration"
}

func hasMountOpt(opts, want string) bool {
	for _, o := range strings.Split(strings.TrimSpace(opts), ",") {
		if o == want {
			return true
		}
	}
	return false
}

// remote runs cmd on the lease's connection in a plain session (the way
// fallback would) and returns its stdout, "" on failure.
func remote(ctx context.Context, l *Lease, cmd string) string {
	out, err := remoteErr(ctx, l, cmd)
	if err != nil {
		return ""
	}
	return out
}

func remoteErr(ctx context.Context, l *Lease, cmd string) (string, error) {
	sess, err := l.Client().NewSession()
	if err != nil {
		return "", err
	}
	defer sess.Close()
	var out, errb bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errb
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Close()
		<-done
		return "", ctx.Err()
	}
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// fallbackReason is why this lease's target is served without an agent.
func (l *Lease) fallbackReason() string {
	l.u.amu.Lock()
	defer l.u.amu.Unlock()
	return l.u.fallback
}

// lockedBuffer is a log sink safe for the pool's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
