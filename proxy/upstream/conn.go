package upstream

import (
	"sync"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
)

// upstream is one pooled SSH connection and the agent running over it.
type upstream struct {
	pool   *Pool
	key    poolKey
	login  loginAttempt  // for the guard: who logs in where
	ready  chan struct{} // closed once client or err is set
	dead   chan struct{} // closed once the connection has ended
	err    error
	client *gossh.Client

	// cause is why the connection ended: the first reason recorded
	// (end), guarded by dmu. It is set before dead is closed.
	dmu   sync.Mutex
	cause error

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
		u.end(err)
		u.pool.forget(u)
		close(u.dead)
		close(u.ready)
		return
	}
	if u.pool.ctx.Err() != nil {
		// The pool closed while we dialled.
		c.Close()
		u.err = ErrShuttingDown
		u.end(ErrShuttingDown)
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
		u.end(ErrShuttingDown)
		c.Close()
	}

	u.startKeepalive()
	in.serve()
	u.end(waitCause(c.Wait()))
	u.stopKeepalive()
	u.pool.forget(u)
	close(u.dead)
	u.amu.Lock()
	ac := u.agent
	u.amu.Unlock()
	if ac != nil {
		ac.Close()
	}
	log.Info().Str("event", EventUpstreamClosed).AnErr("reason", u.reason()).Dur("duration", time.Since(start)).Msg("upstream connection ended")
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
