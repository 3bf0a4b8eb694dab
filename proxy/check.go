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
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/proxy/upstream"
	"github.com/gomux/gomux/target"
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
	c := &checkRun{ctx: ctx, cfg: cfg, person: person}
	host, port, ok := c.parseTarget(target)
	if !ok {
		return c.steps
	}
	d, ok := c.policy(host, port)
	if !ok {
		return c.steps
	}
	if d.Mode == ModeSplice {
		c.splice(d)
		return c.steps
	}
	c.accelerated(agents, d)
	return c.steps
}

// checkRun is one Check: what it checks and the steps found so far.
type checkRun struct {
	ctx    context.Context
	cfg    *Config
	person string
	user   string // the remote user, from the target or the person
	steps  []CheckStep
}

func (c *checkRun) add(name, status, detail, fix string) {
	c.steps = append(c.steps, CheckStep{Name: name, Status: status, Detail: detail, Fix: fix})
}

// parseTarget splits [user@]host[:port], setting c.user.
func (c *checkRun) parseTarget(target string) (string, int, bool) {
	user, hostport := c.person, target
	if i := strings.LastIndex(target, "@"); i >= 0 {
		user, hostport = target[:i], target[i+1:]
	}
	c.user = user
	host, port := hostport, 22
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil {
			c.add("policy", "fail", fmt.Sprintf("bad port in %q", target), "write the target as [user@]host[:port]")
			return "", 0, false
		}
		host, port = h, n
	}
	return host, port, true
}

// policy decides as a connection would, and reports false when the
// person may not go there as the user.
func (c *checkRun) policy(host string, port int) (Decision, bool) {
	lc, err := newLiveConfig(&c.cfg.StartConfig, &c.cfg.LiveConfig, "")
	if err != nil {
		c.add("policy", "fail", err.Error(), "fix the config file (gomux serve would refuse it too)")
		return Decision{}, false
	}
	dctx, cancel := context.WithTimeout(c.ctx, c.cfg.Upstream.ConnectTimeout.D())
	d := lc.policy.Decide(dctx, c.person, host, port)
	cancel()
	rule := "no rule"
	if d.Rule >= 0 {
		rule = fmt.Sprintf("targets[%d]", d.Rule)
	}
	nameErr := ValidLoginName(c.user)
	switch {
	case d.Mode == ModeDeny:
		c.add("policy", "fail", fmt.Sprintf("%s may not reach %s: %s (%s)", c.person, joinHostPort(host, port), d.Reason, rule),
			fmt.Sprintf("add a targets rule before any that denies it, allowing hosts %q (or its cidrs) for users [%s] on port %d, with remote_users [%s]", d.Host, c.person, port, c.user))
		return d, false
	case d.Mode == ModeForward:
		c.add("policy", "fail", fmt.Sprintf("%s may reach %s only by a forward inside an accelerated session (%s forward)", c.person, d.HostPort(), rule),
			"open it as ssh -L or -W inside a session to a target an accelerate rule allows")
		return d, false
	case nameErr != nil:
		c.add("policy", "fail", fmt.Sprintf("%s may reach %s (%s) but not as %q: %v", c.person, d.HostPort(), rule, c.user, nameErr),
			"give the login name alone: sshd reads \"root:x\" as root")
		return d, false
	case !d.AllowsRemoteUser(c.user):
		c.add("policy", "fail", fmt.Sprintf("%s may reach %s (%s) but not as %s", c.person, d.HostPort(), rule, c.user),
			fmt.Sprintf("list %q in that rule's remote_users (root only literally)", c.user))
		return d, false
	}
	c.add("policy", "ok", fmt.Sprintf("%s as %s to %s (%s): %s, credential %s", c.person, c.user, d.HostPort(), d.DialAddr(), rule+" "+string(d.Mode), d.Credential), "")
	return d, true
}

// splice checks a spliced target: gomux only connects to it.
func (c *checkRun) splice(d Decision) {
	var dl net.Dialer
	cctx, cancel := context.WithTimeout(c.ctx, c.cfg.Upstream.ConnectTimeout.D())
	conn, err := dl.DialContext(cctx, "tcp", d.DialAddr())
	cancel()
	if err != nil {
		c.add("connect", "fail", err.Error(), "check that the target listens on "+d.DialAddr()+" and that no firewall drops gomux's connections")
		return
	}
	conn.Close()
	c.add("connect", "ok", "spliced: gomux only copies bytes; the client checks the host key and logs in itself", "")
}

// accelerated checks an accelerated target: the upstream connection,
// the agent, and what Ansible needs there.
func (c *checkRun) accelerated(agents map[string]dist.Binary, d Decision) {
	cfg := c.cfg
	// The pool logs as a connection would; the log explains an agent
	// that fell back, so keep it.
	var logBuf lockedBuffer
	pool, err := upstream.NewPool(poolConfig(&cfg.StartConfig, agents, nil, nil), zerolog.New(&logBuf))
	if err != nil {
		c.add("connect", "fail", err.Error(), "fix the upstream credentials in the config")
		return
	}
	defer pool.Close()
	actx, cancel := context.WithTimeout(c.ctx, 2*cfg.Upstream.ConnectTimeout.D()+time.Minute)
	defer cancel()
	lease, err := pool.Acquire(actx, upstream.Target{Host: d.HostPort(), Dial: d.DialAddr(), User: c.user, Credential: d.Credential, Person: c.person})
	if err != nil {
		c.steps = append(c.steps, connectFailure(err, d, c.user, pool)...)
		return
	}
	defer lease.Release()
	c.add("connect", "ok", "TCP to "+d.DialAddr(), "")
	c.add("host_key", "ok", fmt.Sprintf("verified for %q against %s", d.HostPort(), strings.Join(cfg.Upstream.KnownHosts, ", ")), "")
	c.add("login", "ok", fmt.Sprintf("as %s with credential %s (%s)", c.user, d.Credential, string(lease.Client().ServerVersion())), "")
	c.agent(actx, lease, &logBuf)
	c.python(actx, lease)
	c.sudo(actx, lease)
}

// agent starts the agent as a connection would and says how it went;
// logs holds what the pool logged meanwhile.
func (c *checkRun) agent(ctx context.Context, lease *upstream.Lease, logs *lockedBuffer) {
	st, err := lease.Agent(ctx)
	switch {
	case err != nil:
		c.add("agent", "fail", err.Error(), "gomux will retry per channel; see the "+upstream.EventAgentStart+" log lines")
	case st.Mode == upstream.ModeFallback:
		reason := st.Reason
		fix := agentFix(reason)
		if strings.Contains(reason, "Permission denied") || strings.Contains(reason, "did not start") {
			if opts := remote(ctx, lease, target.CacheMountOptions()); hasMountOpt(opts, "noexec") {
				reason = "the agent cache ~/" + target.CacheDir + " is on a noexec filesystem (" + strings.TrimSpace(opts) + "): " + reason
				fix = "mount the home directory (or ~/.cache) without noexec, or accept fallback: gomux then serves this target through its sshd, channel by channel, without acceleration"
			}
		}
		c.add("agent", "warn", "fell back to the target's sshd: "+reason, fix)
	default:
		info := st.Agent.Info()
		how := "cached copy verified and started"
		if strings.Contains(logs.String(), `"event":"`+upstream.EventAgentUpload+`"`) {
			how = "uploaded to ~/" + target.CacheDir + ", verified and started"
		}
		c.add("agent", "ok", fmt.Sprintf("%s (agent %s, %s, home %s)", how, info.AgentVersion, info.Arch, info.Home), "")
	}
}

// python looks for the interpreter Ansible would use, through the login
// shell's PATH as Ansible's discovery does (so not a fixed PATH): it runs
// as the login user, and reports what Ansible would find.
func (c *checkRun) python(ctx context.Context, lease *upstream.Lease) {
	if out := remote(ctx, lease, `for p in python3 /usr/bin/python3 python /usr/libexec/platform-python; do command -v "$p" >/dev/null 2>&1 && { command -v "$p"; "$p" -c 'import sys; print(sys.version.split()[0])'; exit 0; }; done; exit 1`); out != "" {
		c.add("python", "ok", strings.Join(strings.Fields(out), " "), "")
	} else {
		c.add("python", "fail", "no python3 in the login shell's PATH", "install python3 on the target, or set ansible_python_interpreter for it (only raw works without Python)")
	}
}

// sudo checks become without a password, running sudo by name as
// Ansible does (the login user's PATH, as the login user).
func (c *checkRun) sudo(ctx context.Context, lease *upstream.Lease) {
	if out, err := remoteErr(ctx, lease, `sudo -n true`); err == nil {
		c.add("sudo", "ok", "sudo -n true works: become without a password", "")
	} else {
		c.add("sudo", "warn", "sudo -n true failed: "+strings.Join(strings.Fields(out+" ("+err.Error()+")"), " "),
			"only needed for become: give "+c.user+" NOPASSWD in sudoers, or run ansible-playbook with --ask-become-pass")
	}
}

// connectFailure says which part of the upstream connection failed.
func connectFailure(err error, d Decision, user string, pool *upstream.Pool) []CheckStep {
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
		fps := pool.PublicKeys(d.Credential)
		return []CheckStep{{Name: "connect", Status: "ok", Detail: "TCP to " + d.DialAddr()},
			{Name: "host_key", Status: "ok", Detail: "verified against known_hosts"},
			{Name: "login", Status: "fail", Detail: msg,
				Fix: fmt.Sprintf("put one of credential %s's keys (%s) in ~%s/.ssh/authorized_keys on the target, or trust its user_ca there (TrustedUserCAKeys)", d.Credential, fps, user)}}
	case isDialError(err):
		return []CheckStep{{Name: "connect", Status: "fail", Detail: msg,
			Fix: "check that sshd listens on " + d.DialAddr() + ", and that no firewall drops connections from gomux"}}
	}
	return []CheckStep{{Name: "connect", Status: "fail", Detail: msg, Fix: "see the message; gomux serve would fail the same way"}}
}

// isDialError says whether err is the TCP connect's, before any SSH.
func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
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
		return "give the user a writable home (~/" + target.CacheDir + "), or accept fallback through sshd"
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
func remote(ctx context.Context, l *upstream.Lease, cmd string) string {
	out, err := remoteErr(ctx, l, cmd)
	if err != nil {
		return ""
	}
	return out
}

func remoteErr(ctx context.Context, l *upstream.Lease, cmd string) (string, error) {
	sess, err := l.NewSession()
	if err != nil {
		return "", err
	}
	defer sess.Close()
	var out, errb bytes.Buffer
	sess.Stdout, sess.Stderr = &out, &errb
	done := make(chan error, 1)
	var run gogroup.Group
	defer run.CloseWait()
	run.Go(func() { done <- sess.Run(cmd) })
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Close()
		return "", ctx.Err()
	}
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
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
