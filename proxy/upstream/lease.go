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

// Client is the SSH connection, for fallback channels and dials. The
// pool refuses every channel the target opens (see incoming.serve), so
// the client's Listen and HandleChannelOpen are not for use.
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

// FallbackReason is why this lease's target is served without an agent,
// "" while it is not (gomux check reports it).
func (l *Lease) FallbackReason() string {
	l.u.amu.Lock()
	defer l.u.amu.Unlock()
	return l.u.fallback
}
