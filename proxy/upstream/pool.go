package upstream

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
	sshagent "golang.org/x/crypto/ssh/agent"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/shim"
)

// Pool keeps one SSH connection per (target, remote user, credential) and
// shares it among every downstream connection that maps to it: this is what
// turns many short-lived client sessions into one warm upstream session.
type Pool struct {
	cfg    Config
	limits Limits
	budget *shim.Budget
	// sums are the module archives' sums, shared by every target.
	sums   *shim.Sums
	agents map[string]dist.Binary
	keys   *hostKeys
	creds  map[string]*credential
	log    zerolog.Logger
	m      Metrics
	// guard holds back new logins after failed ones and paces each
	// person's dials, so no one gets gomux's address banned by a target.
	guard *loginGuard

	ctx    context.Context
	cancel context.CancelFunc
	// tasks owns every goroutine of the pool (connections, prune loop,
	// keepalives, agent stderr readers, Lease.Go work); Close refuses new
	// ones and waits for these.
	tasks gogroup.Group

	mu    sync.Mutex
	conns map[poolKey]*upstream
	hosts map[poolKey]*shim.Host // outlive connections: virtual state is the target's
	// retired sums the counters of dropped hosts, so totals only grow.
	retired shim.Counters
}

// poolKey names one pooled connection. host is the name known_hosts is
// asked about, dial the address policy checked; person is set only for a
// credential that signs per-person certificates.
type poolKey struct {
	host, dial, user, cred, person string
	// forwarding: the minted certificate permits port forwarding. Only
	// set with a user CA, where it is part of what the target is shown.
	forwarding bool
}

// Target is what an upstream connection is for: where, as whom,
// with which credential, on whose behalf.
type Target struct {
	// Host is name:port as the rule matched it, for known_hosts.
	Host string
	// Dial is ip:port, the address policy resolved and checked.
	Dial string
	// User is the remote login name.
	User string
	// Credential names the credential ("" means DefaultCredential).
	Credential string
	// Person is the front user acting, named in user certificates.
	Person string
	// Forwarding says a forward rule may send the person's forwards on
	// from this target, so a minted user certificate carries
	// permit-port-forwarding; without it, it does not.
	Forwarding bool
}

// credential is one loaded upstream credential.
type credential struct {
	name     string
	signers  []gossh.Signer
	useAgent bool
	ca       gossh.Signer // signs per-person user certificates; nil if none
	// prefix goes before the remote user in those certificates' principal.
	prefix string
}

// loadCredential reads a credential's keys. Passphrase-protected files
// cannot be used unattended and are reported, not skipped silently.
func loadCredential(field, name string, files []string, useAgent bool, caFile, prefix string) (*credential, error) {
	if err := checkPrincipalPrefix(prefix); err != nil {
		return nil, fmt.Errorf("%s.user_principal_prefix: %w", field, err)
	}
	c := &credential{name: name, useAgent: useAgent, prefix: prefix}
	for _, f := range files {
		s, err := readSigner(f)
		if err != nil {
			return nil, fmt.Errorf("%s.identity_files: %w", field, err)
		}
		c.signers = append(c.signers, s)
	}
	if caFile != "" {
		s, err := readSigner(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s.user_ca: %w", field, err)
		}
		c.ca = s
	}
	return c, nil
}

func readSigner(f string) (gossh.Signer, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, err
	}
	s, err := gossh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	return s, nil
}

// NewPool loads the upstream credentials.
func NewPool(cfg PoolConfig, log zerolog.Logger) (*Pool, error) {
	u := cfg.Upstream
	useAgent := u.UseSSHAgent
	def, err := loadCredential("upstream", DefaultCredential, u.IdentityFiles, useAgent, u.UserCA, u.UserPrincipalPrefix)
	if err != nil {
		return nil, err
	}
	creds := map[string]*credential{DefaultCredential: def}
	for n, c := range u.Credentials {
		lc, err := loadCredential("upstream.credentials."+n, n, c.IdentityFiles, c.UseSSHAgent, c.UserCA, c.UserPrincipalPrefix)
		if err != nil {
			return nil, err
		}
		creds[n] = lc
	}
	cfg.Limits.applyDefaults() // for pools made without a Config
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		cfg:    cfg.Upstream,
		limits: cfg.Limits,
		budget: cfg.Budget,
		sums:   shim.NewSums(0),
		agents: cfg.Agents,
		keys: &hostKeys{
			files:    cfg.Upstream.KnownHosts,
			tofuFile: cfg.StateDir + "/known_hosts",
			tofu:     cfg.Upstream.TrustOnFirstUse,
		},
		creds:  creds,
		log:    log,
		m:      cfg.Metrics,
		guard:  newLoginGuard(cfg.Limits, time.Now),
		ctx:    ctx,
		cancel: cancel,
		conns:  map[poolKey]*upstream{},
		hosts:  map[poolKey]*shim.Host{},
	}
	p.tasks.Go(p.pruneLoop)
	return p, nil
}

// ErrShuttingDown is what an Acquire gets once the pool has closed, and
// what a request that arrives while gomux stops is refused with.
var ErrShuttingDown = errors.New("gomux is shutting down")

// Close ends every upstream connection and waits for the pool's
// goroutines. Nothing in it can fail: connections are closed, not
// flushed, so there is no error to report.
func (p *Pool) Close() {
	p.cancel()
	p.tasks.Close()
	p.mu.Lock()
	for _, u := range p.conns {
		u.closeConn()
	}
	p.mu.Unlock()
	p.tasks.Wait()
}

// Len is the number of pooled connections, for tests and metrics.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Acquire returns a lease on the connection for t, dialling it if there is
// none. Concurrent callers for one key share a single dial. Connections are
// shared per (target, remote user, credential), and per person too when the
// credential signs certificates naming the person.
func (p *Pool) Acquire(ctx context.Context, t Target) (*Lease, error) {
	if t.Credential == "" {
		t.Credential = DefaultCredential
	}
	cred, ok := p.creds[t.Credential]
	if !ok {
		return nil, fmt.Errorf("no upstream credential %q", t.Credential)
	}
	key := poolKey{host: t.Host, dial: t.Dial, user: t.User, cred: t.Credential}
	if cred.ca != nil {
		key.person, key.forwarding = t.Person, t.Forwarding
	}
	login := loginAttempt{person: t.Person, dial: t.Dial, user: t.User, cred: t.Credential, personal: cred.ca != nil}
	for {
		p.mu.Lock()
		u, ok := p.conns[key]
		if !ok {
			wait, err := p.guard.admit(login)
			if err != nil || wait != nil {
				p.mu.Unlock()
				if err != nil {
					p.logThrottled(t, err)
					return nil, err
				}
				select {
				case <-wait:
					continue
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			u = &upstream{pool: p, key: key, login: login, ready: make(chan struct{}), dead: make(chan struct{})}
			if !p.tasks.Go(u.connect) {
				p.mu.Unlock()
				p.guard.done(login, loginNotTried)
				return nil, ErrShuttingDown
			}
			p.conns[key] = u
		}
		u.refs++
		u.stopIdleLocked()
		p.mu.Unlock()

		select {
		case <-u.ready:
		case <-ctx.Done():
			p.release(u)
			return nil, ctx.Err()
		}
		if u.err != nil {
			p.release(u)
			return nil, u.err
		}
		select {
		case <-u.dead:
			// Raced with a connection that just died; it has left the map.
			p.release(u)
			continue
		default:
		}
		return &Lease{u: u}, nil
	}
}

func (p *Pool) release(u *upstream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	u.refs--
	if u.refs > 0 {
		return
	}
	select {
	case <-u.dead:
		return
	default:
	}
	if u.err != nil {
		return
	}
	var timer *time.Timer
	timer = time.AfterFunc(p.cfg.IdleTimeout, func() {
		// Decide and unlist under one lock: once the connection has left
		// the map no Acquire can lease it, so closing it can never pull a
		// connection out from under a lease taken after the check.
		p.mu.Lock()
		if u.refs != 0 || u.idle != timer {
			p.mu.Unlock()
			return
		}
		u.idle = nil
		if p.conns[u.key] == u {
			delete(p.conns, u.key)
		}
		p.mu.Unlock()
		u.logger().Info().Str("event", EventUpstreamIdleClose).Msg("upstream idle, closing")
		u.closeConn()
	})
	u.idle = timer
}

// Lease is one downstream connection's hold on an upstream connection. The
// connection stays open at least as long as a lease on it does.
type Lease struct {
	u    *upstream
	once sync.Once
}

// Release gives the lease back; the last release starts the idle timer.
func (l *Lease) Release() {
	l.once.Do(func() { l.u.pool.release(l.u) })
}

// Client is the SSH connection, for fallback channels and dials. The
// pool refuses every channel the target opens (see incoming.serve), so
// the client's Listen and HandleChannelOpen are not for use.
func (l *Lease) Client() *gossh.Client { return l.u.client }

// Dead is closed when the SSH connection has ended.
func (l *Lease) Dead() <-chan struct{} { return l.u.dead }

// Agent returns the agent session, starting the agent if it is not
// running. A nil client with a nil error means fallback mode: the target
// cannot run the agent and is served channel by channel.
func (l *Lease) Agent(ctx context.Context) (*agent.Client, error) {
	return l.u.agentClient(ctx)
}

// Shim returns the Ansible state for this lease's (target, user), made on
// first use from what the agent reported. It outlives connections, since
// what it stages belongs to the target, not to one connection.
func (l *Lease) Shim(a *agent.Client) *shim.Host {
	p := l.u.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hosts[l.u.key]
	if h == nil {
		if max := p.limits.MaxShimStates; max > 0 && len(p.hosts) >= max {
			p.evictLocked(len(p.hosts) - max + 1)
		}
		info := a.Info()
		h = shim.NewHostLimits(info.User, info.Home, info.RealHome, shim.HostLimits{Budget: p.budget, TempDirIdle: p.limits.TempDirIdle, Sums: p.sums})
		p.hosts[l.u.key] = h
	}
	return h
}

// ShimCounters returns the shim's counters for this lease's target and
// user, and false when no Ansible step has reached it.
func (l *Lease) ShimCounters() (shim.Counters, bool) {
	p := l.u.pool
	p.mu.Lock()
	h := p.hosts[l.u.key]
	p.mu.Unlock()
	if h == nil {
		return shim.Counters{}, false
	}
	return h.Counters(), true
}

// Go runs fn as one of the pool's goroutines, which Close waits for: work
// a client need not wait for, such as removing a finished temp dir. It
// reports false, and fn does not run, once the pool is closing.
func (l *Lease) Go(fn func()) bool {
	return l.u.pool.tasks.Go(fn)
}

// Context is the pool's, cancelled when gomux shuts down.
func (l *Lease) Context() context.Context { return l.u.pool.ctx }

// upstream is one pooled SSH connection and the agent running over it.
type upstream struct {
	pool   *Pool
	key    poolKey
	login  loginAttempt  // for the guard: who logs in where
	ready  chan struct{} // closed once client or err is set
	dead   chan struct{} // closed once the connection has ended
	err    error
	client *gossh.Client

	// guarded by pool.mu
	refs int
	idle *time.Timer

	amu      sync.Mutex
	agent    *agent.Client
	fallback string
	starting chan struct{}

	// Keepalive state, guarded by kmu: a timer, not a goroutine, waits
	// between keepalives (see keepaliveTick).
	kmu        sync.Mutex
	kaTimer    *time.Timer
	kaMissed   int  // ticks since the last reply
	kaInflight bool // a keepalive awaits its reply
	kaStopped  bool
}

func (u *upstream) stopIdleLocked() {
	if u.idle != nil {
		u.idle.Stop()
		u.idle = nil
	}
}

func (u *upstream) logger() *zerolog.Logger {
	lc := u.pool.log.With().Str("target", u.key.host).Str("addr", u.key.dial).Str("remote_user", u.key.user).Str("credential", u.key.cred)
	if u.key.person != "" {
		lc = lc.Str("person", u.key.person)
	}
	l := lc.Logger()
	return &l
}

func (u *upstream) connect() {
	log := u.logger()
	start := time.Now()
	c, in, authStarted, err := u.pool.dial(u.pool.ctx, u.key)
	// Before ready is closed, so a request waiting on this one sees the
	// backoff a refusal starts.
	u.pool.guard.done(u.login, loginOutcomeOf(err, authStarted))
	u.pool.m.UpstreamDial(err)
	if err != nil {
		log.Warn().Str("event", EventUpstreamConnect).Err(err).Dur("duration", time.Since(start)).Msg("upstream connect failed")
		u.err = err
		u.pool.forget(u)
		close(u.dead)
		close(u.ready)
		return
	}
	if u.pool.ctx.Err() != nil {
		// The pool closed while we dialled.
		c.Close()
		u.err = ErrShuttingDown
		u.pool.forget(u)
		close(u.dead)
		close(u.ready)
		return
	}
	u.client = c
	log.Info().Str("event", EventUpstreamConnect).Str("server_version", string(c.ServerVersion())).Dur("duration", time.Since(start)).Msg("upstream connected")
	close(u.ready)
	if u.pool.ctx.Err() != nil {
		// Close cancelled the context after the check above, and may
		// have looked at this connection before it was ready: whichever
		// of the two saw the other last closes it.
		c.Close()
	}

	u.startKeepalive()
	in.serve()
	err = c.Wait()
	u.stopKeepalive()
	u.pool.forget(u)
	close(u.dead)
	u.amu.Lock()
	ac := u.agent
	u.amu.Unlock()
	if ac != nil {
		ac.Close()
	}
	log.Info().Str("event", EventUpstreamClosed).AnErr("reason", err).Dur("duration", time.Since(start)).Msg("upstream connection ended")
}

// closeConn closes a connected upstream. One still dialling is ended by
// the pool's context instead, which connect() checks.
func (u *upstream) closeConn() {
	select {
	case <-u.ready:
		if u.client != nil {
			u.client.Close()
		}
	default:
	}
}

// startKeepalive starts OpenSSH's keepalives (keepalive@openssh.com every
// KeepaliveInterval; KeepaliveCountMax intervals without a reply close
// the connection), so channels on a dead path end instead of hanging. An
// idle upstream holds no goroutine for them: a timer fires each interval
// and a goroutine lives only while one keepalive awaits its reply.
func (u *upstream) startKeepalive() {
	u.kmu.Lock()
	defer u.kmu.Unlock()
	if !u.kaStopped {
		u.kaTimer = time.AfterFunc(u.pool.cfg.KeepaliveInterval, u.onKeepaliveTimer)
	}
}

// onKeepaliveTimer runs keepaliveTick as one of the pool's goroutines, so
// Close waits for a tick under way and a closed pool runs none.
func (u *upstream) onKeepaliveTimer() { u.pool.tasks.Go(u.keepaliveTick) }

// stopKeepalive ends the keepalives of a connection that has ended.
func (u *upstream) stopKeepalive() {
	u.kmu.Lock()
	defer u.kmu.Unlock()
	u.kaStopped = true
	if u.kaTimer != nil {
		u.kaTimer.Stop()
	}
}

// keepaliveTick is one keepalive interval: it counts the interval as
// missed until a reply resets the count, closes a connection that missed
// more than KeepaliveCountMax, and sends a keepalive unless one is still
// awaiting its reply.
func (u *upstream) keepaliveTick() {
	u.kmu.Lock()
	if u.kaStopped {
		u.kmu.Unlock()
		return
	}
	u.kaMissed++
	if missed := u.kaMissed; missed > u.pool.cfg.KeepaliveCountMax {
		u.kaStopped = true
		u.kmu.Unlock()
		u.logger().Warn().Str("event", EventUpstreamKeepaliveTimeout).Int("missed", missed).Msg("upstream stopped answering keepalives, closing")
		u.client.Close()
		return
	}
	send := !u.kaInflight
	u.kaInflight = true
	u.kaTimer.Reset(u.pool.cfg.KeepaliveInterval)
	u.kmu.Unlock()
	if !send {
		return
	}
	// Refused once the pool is closing, which closes the connection too.
	u.pool.tasks.Go(func() {
		// Blocks until the reply, or until the connection ends.
		_, _, err := u.client.SendRequest("keepalive@openssh.com", true, nil)
		u.kmu.Lock()
		u.kaInflight = false
		if err == nil {
			u.kaMissed = 0
		}
		u.kmu.Unlock()
	})
}

func (p *Pool) forget(u *upstream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[u.key] == u {
		delete(p.conns, u.key)
	}
	u.stopIdleLocked()
}

// incoming is what a target may send unasked on an upstream connection:
// global requests and channel opens.
type incoming struct {
	reqs  <-chan *gossh.Request
	chans <-chan gossh.NewChannel
}

// serve refuses what the target sends unasked until the connection ends,
// as gossh.Client would (and OpenSSH does) but in the calling goroutine
// rather than two of its own: gomux asks targets for no forwarding, so
// every channel open is refused and every global request (keepalives,
// hostkeys-00@openssh.com) answered "no".
func (in incoming) serve() {
	reqs, chans := in.reqs, in.chans
	for reqs != nil || chans != nil {
		select {
		case r, ok := <-reqs:
			if !ok {
				reqs = nil
				continue
			}
			r.Reply(false, nil)
		case nc, ok := <-chans:
			if !ok {
				chans = nil
				continue
			}
			nc.Reject(gossh.UnknownChannelType, "unknown channel type: "+nc.ChannelType())
		}
	}
}

// dial connects and logs in. The connection's global requests and
// channel opens are returned for the caller to serve (incoming.serve),
// rather than given to gossh.Client, which would spend a goroutine on
// each: so the client's HandleChannelOpen and Listen receive nothing.
//
// authStarted reports that the target had asked for a public key, so a
// failure after it is the login's (see loginOutcomeOf).
func (p *Pool) dial(ctx context.Context, key poolKey) (_ *gossh.Client, _ incoming, authStarted bool, _ error) {
	timeout := p.cfg.ConnectTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Host keys are looked up by the name the rule matched; the TCP
	// connection goes to the address policy resolved and checked, with no
	// second lookup.
	cb, algos, err := p.keys.clientSettings(key.host)
	if err != nil {
		return nil, incoming{}, false, err
	}
	signers, closeAgent, err := p.signers(key)
	if err != nil {
		return nil, incoming{}, false, err
	}
	defer closeAgent()
	var started atomic.Bool
	auth := []gossh.AuthMethod{gossh.PublicKeysCallback(func() ([]gossh.Signer, error) {
		started.Store(true)
		return signers, nil
	})}
	var d net.Dialer
	// Errors name no target: the caller does ("cannot reach H as U"),
	// and the net and ssh packages name the step ("dial tcp A: ...",
	// "ssh: handshake failed: ...").
	nc, err := d.DialContext(ctx, "tcp", key.dial)
	if err != nil {
		return nil, incoming{}, false, err
	}
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	// Cancelling ctx (pool closing) aborts a handshake in progress.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	cfg := &gossh.ClientConfig{
		User:              key.user,
		Auth:              auth,
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
		ClientVersion:     "SSH-2.0-gomux",
		Timeout:           timeout,
	}
	conn, chans, reqs, err := gossh.NewClientConn(nc, key.host, cfg)
	if err != nil {
		nc.Close()
		return nil, incoming{}, started.Load(), err
	}
	nc.SetDeadline(time.Time{})
	noReqs, noChans := make(chan *gossh.Request), make(chan gossh.NewChannel)
	close(noReqs)
	close(noChans)
	return gossh.NewClient(conn, noChans, noReqs), incoming{reqs, chans}, true, nil
}

// signers are the keys offered, for key's credential: a fresh user
// certificate when it has a CA, then the identity files, then the
// ssh-agent's keys. The agent socket is dialled per connection so a
// restarted agent is picked up.
func (p *Pool) signers(key poolKey) ([]gossh.Signer, func(), error) {
	cred := p.creds[key.cred]
	var signers []gossh.Signer
	if cred.ca != nil {
		s, err := signUserCert(cred.ca, key.person, cred.prefix+key.user, key.forwarding, p.cfg.UserCertValidity)
		if err != nil {
			return nil, nil, err
		}
		signers = append(signers, s)
	}
	signers = append(signers, cred.signers...)
	closer := func() {}
	if cred.useAgent {
		if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
			c, err := net.Dial("unix", sock)
			if err == nil {
				closer = func() { c.Close() }
				if s, err := sshagent.NewClient(c).Signers(); err == nil {
					signers = append(signers, s...)
				}
			}
		}
	}
	if len(signers) == 0 {
		closer()
		return nil, nil, fmt.Errorf("no upstream credentials in %q: set identity_files, user_ca or run an ssh-agent", key.cred)
	}
	return signers, closer, nil
}

// signUserCert makes a throwaway key and a certificate for it, valid for
// one login with principal (the remote user, after any
// user_principal_prefix) on behalf of person: the target's sshd logs the
// key ID, so its log names who acted. Each new connection gets a fresh
// one; connections already up keep theirs.
func signUserCert(ca gossh.Signer, person, principal string, forwarding bool, validity time.Duration) (gossh.Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("user certificate key: %w", err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("user certificate key: %w", err)
	}
	var serial [8]byte
	if _, err := rand.Read(serial[:]); err != nil {
		return nil, fmt.Errorf("user certificate serial: %w", err)
	}
	now := time.Now()
	cert := &gossh.Certificate{
		Key:             s.PublicKey(),
		Serial:          binary.BigEndian.Uint64(serial[:]),
		CertType:        gossh.UserCert,
		KeyId:           "gomux:" + person,
		ValidPrincipals: []string{principal},
		ValidAfter:      uint64(now.Add(-time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(validity).Unix()),
		Permissions:     gossh.Permissions{Extensions: map[string]string{"permit-pty": ""}},
	}
	if forwarding {
		cert.Permissions.Extensions["permit-port-forwarding"] = ""
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		return nil, fmt.Errorf("sign user certificate for %s as %s: %w", person, principal, err)
	}
	cs, err := gossh.NewCertSigner(cert, s)
	if err != nil {
		return nil, fmt.Errorf("user certificate signer: %w", err)
	}
	return cs, nil
}

// Sums are the module archives' sums, shared by every target: the shim
// reads them to split a module archive into parts the agent may have.
func (p *Pool) Sums() *shim.Sums { return p.sums }

// PublicKeys lists the fingerprints of a credential's key files, for a
// fix (gomux check) that says which key the target must accept.
func (p *Pool) PublicKeys(cred string) string {
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

// FallbackReason is why this lease's target is served without an agent,
// "" while it is not (gomux check reports it).
func (l *Lease) FallbackReason() string {
	l.u.amu.Lock()
	defer l.u.amu.Unlock()
	return l.u.fallback
}
