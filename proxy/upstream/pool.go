package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

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
		u.endWith(ErrShuttingDown)
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
		u.endWith(ErrIdleTimeout)
	})
	u.idle = timer
}

func (p *Pool) forget(u *upstream) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns[u.key] == u {
		delete(p.conns, u.key)
	}
	u.stopIdleLocked()
}

// Sums are the module archives' sums, shared by every target: the shim
// reads them to split a module archive into parts the agent may have.
func (p *Pool) Sums() *shim.Sums { return p.sums }
