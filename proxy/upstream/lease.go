package upstream

import (
	"context"
	"net"
	"sync"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/shim"
)

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

// Client is the SSH connection, for what the lease's own methods do not
// cover (its server version): channels and dials go through OpenChannel,
// NewSession and DialContext, whose errors say why a connection that has
// ended ended. The pool refuses every channel the target opens (see
// incoming.serve), so the client's Listen and HandleChannelOpen are not
// for use.
func (l *Lease) Client() *gossh.Client { return l.u.client }

// Dead is closed when the SSH connection has ended; Err then says why.
func (l *Lease) Dead() <-chan struct{} { return l.u.dead }

// Err is nil while the connection is up; once it has ended, ErrEnded
// with the reason it ended (the first one recorded: a keepalive timeout,
// the idle timer, the pool closing, the target hanging up), the error
// every later call on this lease returns.
func (l *Lease) Err() error { return l.u.ended() }

// OpenChannel opens a channel on the connection (a fallback session).
// On a connection that has ended, the error is Err's.
func (l *Lease) OpenChannel(name string, data []byte) (gossh.Channel, <-chan *gossh.Request, error) {
	if err := l.u.ended(); err != nil {
		return nil, nil, err
	}
	ch, reqs, err := l.u.client.OpenChannel(name, data)
	return ch, reqs, l.u.explain(err)
}

// NewSession opens a session on the connection (gomux check's probes).
// On a connection that has ended, the error is Err's.
func (l *Lease) NewSession() (*gossh.Session, error) {
	if err := l.u.ended(); err != nil {
		return nil, err
	}
	s, err := l.u.client.NewSession()
	return s, l.u.explain(err)
}

// DialContext has the target's sshd connect to addr (direct-tcpip), for
// a forward sent on from the target. On a connection that has ended, the
// error is Err's.
func (l *Lease) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := l.u.ended(); err != nil {
		return nil, err
	}
	c, err := l.u.client.DialContext(ctx, network, addr)
	return c, l.u.explain(err)
}

// Agent says how the target is served, starting the agent if it is not
// running: ModeAgent with the agent session, or ModeFallback with the
// reason the target cannot run it (then it is served channel by channel
// through its sshd, for as long as the connection lasts). An error is
// for this attempt only: the next call tries again.
func (l *Lease) Agent(ctx context.Context) (Start, error) {
	return l.u.agentClient(ctx)
}

// Mode is how a target is served.
type Mode int

// The modes of Start.
const (
	// ModeAgent: gomux-agent runs on the target and serves it.
	ModeAgent Mode = iota + 1
	// ModeFallback: the agent cannot run there (Start.Reason says why);
	// every channel is forwarded to the target's sshd.
	ModeFallback
)

// String names the mode, for logs and test failures.
func (m Mode) String() string {
	switch m {
	case ModeAgent:
		return "agent"
	case ModeFallback:
		return "fallback"
	}
	return "unknown"
}

// Start is how a lease's target is served: an explicit result, so
// fallback is never confused with a missing agent.
type Start struct {
	Mode Mode
	// Agent is the agent session in ModeAgent, nil otherwise.
	Agent *agent.Client
	// Reason is why in ModeFallback ("agent disabled in config", "no
	// agent build for machine ..."), "" otherwise.
	Reason string
}

// fallback is the Start of a target served without the agent.
func fallback(reason string) Start { return Start{Mode: ModeFallback, Reason: reason} }

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
