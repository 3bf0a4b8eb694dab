package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/proxy/admission"
	"github.com/gomux/gomux/proxy/upstream"
)

// innerConn is one accelerated forwarding: the client's second SSH session,
// terminated in gomux and served from the pooled upstream for its target.
type innerConn struct {
	s         *Server
	host      string // as the client requested it
	addr      string // normalized host:port, for messages
	frontUser string
	id        *Identity // the front person; the inner session acts for them
	decision  Decision
	// held is this session as the front connection holds it: the remote
	// user is recorded on it once known, so rechecks include it.
	held *held
	// hs is what the person's front connection holds open; hops made
	// inside this session are added to it.
	hs *holdings
	// local and remote are the front connection's addresses.
	local, remote net.Addr
	log           zerolog.Logger

	remoteUser string
	tasks      gogroup.Group
	sessions   atomic.Int32 // session channels opened, for flushFirst

	mu    sync.Mutex
	lease *upstream.Lease
}

// channelConn lets an SSH channel carry a nested SSH connection.
type channelConn struct {
	gossh.Channel
	local, remote net.Addr
}

// errChannelDeadline: x/crypto's Channel has no deadlines, so neither has
// the net.Conn made of one. Nothing relies on them: x/crypto's
// NewServerConn sets none, and serve bounds the inner handshake with a
// timer that closes the channel (the login grace time) instead. A caller
// that sets one learns it had no effect, as net.Pipe's would not.
var errChannelDeadline = fmt.Errorf("gomux: an SSH channel has no deadlines: %w", errors.ErrUnsupported)

func (c channelConn) LocalAddr() net.Addr { return c.local }

func (c channelConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline fails with errChannelDeadline.
func (c channelConn) SetDeadline(time.Time) error { return errChannelDeadline }

// SetReadDeadline fails with errChannelDeadline.
func (c channelConn) SetReadDeadline(time.Time) error { return errChannelDeadline }

// SetWriteDeadline fails with errChannelDeadline.
func (c channelConn) SetWriteDeadline(time.Time) error { return errChannelDeadline }

// errRemoteUserDenied is shown to the client as an auth banner.
var errRemoteUserDenied = errors.New("remote user not allowed by policy")

// serve runs the inner SSH server on the accepted direct-tcpip channel until
// the client closes it: the handshake, then one loop that dispatches each
// new channel to its handler (dispatchChannel).
func (ic *innerConn) serve(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	sc, chans, reqs, ok := ic.handshake(conn)
	if !ok {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	act := ic.s.drain.track(func() {
		ic.log.Info().Str("event", EventInnerDrain).Msg("gomux is draining: inner session idle, closing")
		ic.flushOnClose(ctx)
		sc.Close()
	})
	defer ic.s.drain.untrack(act)
	ic.tasks.Go(func() { gossh.DiscardRequests(reqs) })
	var open admission.ChanCount // this inner connection's open channels
	for nc := range chans {
		ic.dispatchChannel(ctx, sc, act, &open, nc)
	}
	cancel()
	sc.Close()
	ic.tasks.CloseWait()
	ic.closed()
}

// handshake runs the inner SSH handshake on conn, presenting the host
// certificate for the requested name, within the login grace time.
func (ic *innerConn) handshake(conn net.Conn) (*gossh.ServerConn, <-chan gossh.NewChannel, <-chan *gossh.Request, bool) {
	signer, err := ic.s.ca.SignerFor(ic.host)
	if err != nil {
		ic.log.Error().Err(err).Msg("cannot mint host certificate")
		return nil, nil, nil, false
	}
	cfg := &gossh.ServerConfig{
		ServerVersion:             "SSH-2.0-gomux",
		PublicKeyCallback:         ic.offeredKey,
		VerifiedPublicKeyCallback: ic.verifiedKey,
	}
	cfg.Ciphers = serverCiphers()
	cfg.AddHostKey(signer)
	// The inner login has the front's grace time too, so a forward that
	// never logs in does not hold its channel for ever.
	grace := time.AfterFunc(ic.s.live().cfg.Limits.LoginGraceTime.D(), func() {
		ic.log.Warn().Str("event", EventLoginGrace).Msg("inner session not authenticated within the login grace time; closing")
		conn.Close()
	})
	sc, chans, reqs, err := gossh.NewServerConn(conn, cfg)
	grace.Stop()
	if err != nil {
		ic.log.Info().Str("event", EventInnerHandshake).Err(err).Msg("inner handshake failed")
		return nil, nil, nil, false
	}
	ic.remoteUser = sc.User()
	ic.held.setRemoteUser(ic.remoteUser)
	// A reload may have come since the remote user was checked at login,
	// before the watch could see it.
	if !ic.s.recheckHeld(ic.s.live(), ic.frontUser, ic.held) {
		sc.Close()
		return nil, nil, nil, false
	}
	ic.log = ic.log.With().Str("remote_user", ic.remoteUser).Logger()
	ic.log.Debug().Str("event", EventInnerConnect).Msg("inner session established")
	return sc, chans, reqs, true
}

// offeredKey answers a key the client offers for the inner login: the
// remote user must be one the policy allows, the key the front one.
func (ic *innerConn) offeredKey(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	if !ic.decision.AllowsRemoteUser(meta.User()) {
		why := "not allowed by policy"
		if err := ValidLoginName(meta.User()); err != nil {
			why = err.Error()
		}
		ic.log.Warn().Str("event", EventInnerAuth).Str("remote_user", meta.User()).Str("result", "denied").
			Str("reason", why).Msg("remote user not allowed by policy")
		return nil, &gossh.BannerError{
			Err:     errRemoteUserDenied,
			Message: fmt.Sprintf("gomux: user %s may not log in to %s as %q: %s\r\n", ic.frontUser, ic.host, meta.User(), why),
		}
	}
	if err := ic.checkInnerKey(key); err != nil {
		ic.log.Info().Str("event", EventInnerAuth).Str("result", "refused").Bool("accepted", false).Str("remote_user", meta.User()).
			Str("fingerprint", gossh.FingerprintSHA256(key)).Str("reason", err.Error()).Msg("inner public key refused")
		return nil, err
	}
	return &gossh.Permissions{}, nil
}

// verifiedKey admits the inner login once the client signed with the key.
func (ic *innerConn) verifiedKey(meta gossh.ConnMetadata, key gossh.PublicKey, _ *gossh.Permissions, _ string) (*gossh.Permissions, error) {
	if err := ic.checkInnerKey(key); err != nil {
		ic.log.Warn().Str("event", EventInnerAuth).Str("result", "refused").Bool("accepted", false).Str("remote_user", meta.User()).
			Err(err).Msg("inner login refused")
		return nil, err
	}
	keyFields(ic.log.Info().Str("event", EventInnerAuth).Str("result", "accepted").Bool("accepted", true), ic.id).
		Str("remote_user", meta.User()).Msg("inner login")
	return &gossh.Permissions{}, nil
}

// dispatchChannel hands a new channel to the handler of its type, within
// the channel limits and unless gomux is draining or shutting down.
func (ic *innerConn) dispatchChannel(ctx context.Context, sc *gossh.ServerConn, act *activity, open *admission.ChanCount, nc gossh.NewChannel) {
	// Every new channel rides on this session's decision (a forward rule
	// sends on from its target, with its login): decided again now.
	if why := ic.s.live().policy.Recheck(ic.frontUser, ic.decision, ic.remoteUser); why != "" {
		ic.log.Warn().Str("event", EventPolicyRevoked).Str("held", nc.ChannelType()+" channel").Str("reason", why).
			Msg("policy no longer allows this session: channel refused")
		nc.Reject(gossh.Prohibited, fmt.Sprintf("gomux: %s may no longer reach %s as %s: %s", ic.frontUser, ic.addr, ic.remoteUser, why))
		return
	}
	var handle func(context.Context, gossh.NewChannel)
	switch nc.ChannelType() {
	case "session":
		handle = ic.handleSession
	case "direct-tcpip":
		handle = ic.handleDirect
	default:
		nc.Reject(gossh.UnknownChannelType, "unsupported channel type")
		return
	}
	release, freeMemory, err := ic.s.limits.OpenChannel(ic.frontUser, admission.SourceOf(sc.RemoteAddr()), open)
	ic.s.metrics.channel("inner", nc.ChannelType())
	if err != nil {
		ic.s.metrics.limit("channel")
		ic.log.Warn().Str("event", EventLimit).Str("channel", nc.ChannelType()).Err(err).Msg("channel refused")
		nc.Reject(gossh.ResourceShortage, err.Error())
		return
	}
	ctx = admission.WithChannelMemory(ctx, freeMemory)
	if !act.begin() {
		release()
		nc.Reject(gossh.ResourceShortage, "gomux is restarting: connect again")
		return
	}
	if !ic.tasks.Go(func() {
		defer act.end()
		defer release()
		defer contain(ic.log, "inner "+nc.ChannelType(), sc)
		handle(ctx, nc)
	}) {
		release()
		act.end()
		nc.Reject(gossh.ResourceShortage, "gomux is shutting down")
	}
}

// closed logs the inner connection's end, with the shim's counters, and
// gives its lease back.
func (ic *innerConn) closed() {
	ev := ic.log.Info().Str("event", EventInnerDisconnect)
	ic.mu.Lock()
	if ic.lease != nil {
		if c, ok := ic.lease.ShimCounters(); ok {
			ev = ev.Int64("round_trips", c.RoundTrips).Int64("local_steps", c.Local)
		}
		ic.lease.Release()
		ic.lease = nil
	}
	ic.mu.Unlock()
	ev.Msg("inner session closed")
}

// flushOnClose writes to the target what the shim holds for it only in
// gomux's memory (temp dirs not yet made, staged uploads, modes), so the
// gomux, or the plain sshd, that serves the client's next step of a task
// begun here finds them where Ansible put them.
func (ic *innerConn) flushOnClose(ctx context.Context) {
	ic.mu.Lock()
	l := ic.lease
	ic.mu.Unlock()
	if l == nil || !ic.s.start.Upstream.Ansible {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, ic.s.start.Upstream.ConnectTimeout.D()+30*time.Second)
	defer cancel()
	st, err := l.Agent(ctx)
	if err != nil || st.Mode != upstream.ModeAgent {
		return
	}
	a := st.Agent
	if err := flush(ctx, a, l.Shim(a)); err != nil {
		ic.log.Warn().Str("event", EventInnerDrain).Err(err).Msg("could not write staged temp dirs to the target before closing")
	}
}

// errInnerKeyMismatch refuses an inner login by any key but the front one.
var errInnerKeyMismatch = errors.New("the inner session must be authenticated with the key that authenticated to gomux")

// checkInnerKey admits the inner login only with the very key or
// certificate that authenticated the front connection, still valid now:
// the person was settled there, and a second credential cannot change it.
func (ic *innerConn) checkInnerKey(key gossh.PublicKey) error {
	if !ic.id.SameKey(key) {
		return errInnerKeyMismatch
	}
	return ic.s.live().auth.Recheck(ic.id)
}

// upstreamLease returns a live lease for this connection's target,
// replacing one whose connection has died so the next channel reconnects.
func (ic *innerConn) upstreamLease(ctx context.Context) (*upstream.Lease, error) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if ic.lease != nil {
		select {
		case <-ic.lease.Dead():
			ic.lease.Release()
			ic.lease = nil
		default:
			return ic.lease, nil
		}
	}
	d := ic.decision
	l, err := ic.s.pool.Acquire(ctx, upstream.Target{
		Host: d.HostPort(), Dial: d.DialAddr(), User: ic.remoteUser, Credential: d.Credential, Person: ic.frontUser,
		Forwarding: ic.s.live().policy.GrantsForwarding(ic.frontUser),
	})
	if err != nil {
		return nil, err
	}
	ic.lease = l
	return l, nil
}

// backend returns the lease and how its target is served: by its agent,
// or in fallback mode. Errors are phrased for the client, who sees them
// in "open failed".
func (ic *innerConn) backend(ctx context.Context) (*upstream.Lease, upstream.Start, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*ic.s.start.Upstream.ConnectTimeout.D()+time.Minute)
	defer cancel()
	l, err := ic.upstreamLease(ctx)
	if err != nil {
		return nil, upstream.Start{}, fmt.Errorf("gomux: cannot reach %s as %s: %w", ic.addr, ic.remoteUser, err)
	}
	st, err := l.Agent(ctx)
	if err != nil {
		return nil, upstream.Start{}, fmt.Errorf("gomux: cannot start agent on %s: %w", ic.addr, err)
	}
	return l, st, nil
}

// handleDirect serves a direct-tcpip request inside the session (-L, -W,
// a nested -J) exactly as the same request through the front: the same
// decision for the same person, a destination under an accelerate rule
// terminated by gomux (remote_users, recording and gomux's own upstream
// apply), a splice destination dialled from gomux. Only a forward rule's
// destination is dialled from this session's target.
func (ic *innerConn) handleDirect(ctx context.Context, nc gossh.NewChannel) {
	var p forwardPayload
	if err := gossh.Unmarshal(nc.ExtraData(), &p); err != nil {
		nc.Reject(gossh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	d := ic.s.decide(ctx, ic.frontUser, p.Host, int(p.Port))
	log := ic.s.log.With().Str("user", ic.frontUser).Str("source", ic.id.Source.String()).
		Str("target", d.HostPort()).Str("inside", ic.addr).Str("inside_remote_user", ic.remoteUser).Logger()
	logDecision(log, "inner", p.Host, d)
	ic.s.metrics.decision("inner", d)
	h := hop{s: ic.s, id: ic.id, hs: ic.hs, via: "inner", requested: p.Host, d: d, log: log,
		local: ic.local, remote: ic.remote}
	switch d.Mode {
	case ModeAccelerate:
		h.accelerate(ctx, nc)
	case ModeSplice:
		h.splice(ctx, nc)
	case ModeForward:
		ic.forwardFromTarget(ctx, h, nc)
	default:
		h.refuse(nc)
	}
}

// forwardFromTarget sends a forward rule's request on from this session's
// target: through its sshd's own direct-tcpip, so its AllowTcpForwarding
// and PermitOpen still apply, or by the agent where the rule says
// agent_dial.
func (ic *innerConn) forwardFromTarget(ctx context.Context, h hop, nc gossh.NewChannel) {
	d, log := h.d, h.log.With().Str("event", EventForward).Str("via", "inner").Logger()
	dest := d.DialAddr()
	start := time.Now()
	l, st, err := ic.backend(ctx)
	if err != nil {
		log.Warn().Err(err).Msg("forward failed")
		nc.Reject(gossh.ConnectionFailed, err.Error())
		return
	}
	dctx, cancel := context.WithTimeout(ctx, ic.s.start.Upstream.ConnectTimeout.D())
	var conn net.Conn
	if d.AgentDial && st.Mode == upstream.ModeAgent {
		conn, err = st.Agent.Dial(dctx, "tcp", dest)
	} else {
		conn, err = l.DialContext(dctx, "tcp", dest)
	}
	cancel()
	if err != nil {
		log.Warn().Err(err).Msg("forward failed")
		nc.Reject(gossh.ConnectionFailed, fmt.Sprintf("gomux: connect to %s from %s: %v", d.HostPort(), ic.host, err))
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	ic.tasks.Go(func() { gossh.DiscardRequests(reqs) })
	x, drop := h.hold("forward", func() { ch.Close(); conn.Close() })
	defer drop()
	log.Info().Str("result", "forwarded").Msg("forward open")
	in, out := splice(countedChannel{ch, x}, conn)
	log.Info().Int64("bytes_in", in).Int64("bytes_out", out).Dur("duration", time.Since(start)).Msg("forward closed")
}

// forwardPayload is RFC 4254's direct-tcpip channel data.
type forwardPayload struct {
	Host       string
	Port       uint32
	OriginHost string
	OriginPort uint32
}

// halfCloser is a connection that can signal EOF while still reading.
type halfCloser interface {
	CloseWrite() error
}

// splice copies both ways, passing each EOF on as a half-close, and returns
// the bytes that went from a to b and from b to a.
func splice(a, b io.ReadWriteCloser) (ab, ba int64) {
	var copies gogroup.Group
	cp := func(dst, src io.ReadWriteCloser, n *int64) {
		*n, _ = io.Copy(dst, src)
		if hc, ok := dst.(halfCloser); ok {
			hc.CloseWrite()
		} else {
			dst.Close()
		}
	}
	copies.Go(func() { cp(b, a, &ab) })
	copies.Go(func() { cp(a, b, &ba) })
	copies.Wait()
	a.Close()
	b.Close()
	return ab, ba
}
