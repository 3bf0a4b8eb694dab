package proxy

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
)

// hop is one direct-tcpip request that policy has decided, from the front
// or from inside an accelerated session: the path does not matter. A
// destination under an accelerate rule is terminated by gomux, a splice
// destination is dialled by gomux, and only a forward rule sends the
// request on from the session's target.
type hop struct {
	s         *Server
	id        *Identity // the front person, whatever the path
	hs        *holdings // what the person's front connection holds open
	via       string    // "front" or "inner"
	requested string    // the host as the client asked for it
	d         Decision
	log       zerolog.Logger
	// local and remote are the front connection's addresses, which a
	// terminated session reports as its own.
	local, remote net.Addr
}

// refuse rejects a request policy denies, or a forward rule's destination
// asked for where there is no session to send it from.
func (h hop) refuse(nc gossh.NewChannel) {
	reason := h.d.Reason
	if h.d.Mode == ModeForward {
		reason = fmt.Sprintf("targets[%d] is reached only by a forward inside an accelerated session", h.d.Rule)
	}
	h.log.Warn().Str("event", EventForward).Str("via", h.via).Str("result", "denied").Str("reason", reason).
		Msg("target not allowed by policy")
	nc.Reject(gossh.Prohibited, fmt.Sprintf("gomux: %s may not reach %s: %s", h.id.User, joinHostPort(h.requested, h.d.Port), reason))
}

// hold registers what is being opened, so a reload or recheck that no
// longer allows it can cut it; the returned function drops it. It is
// decided again at once against the live policy: a reload that came
// while it was dialled or accepted found nothing to cut, and must not be
// outlived.
func (h hop) hold(what string, cut func()) (*held, func()) {
	x := &held{what: what, via: h.via, d: h.d, cut: cut, log: h.log}
	drop := h.hs.add(x)
	h.s.recheckHeld(h.s.live(), h.id.User, x)
	return x, drop
}

// splice dials the checked address from gomux and copies bytes, as a
// plain jump host does.
func (h hop) splice(ctx context.Context, nc gossh.NewChannel) {
	var dialer net.Dialer
	dctx, cancel := context.WithTimeout(ctx, h.s.start.Upstream.ConnectTimeout.D())
	tc, err := dialer.DialContext(dctx, "tcp", h.d.DialAddr())
	cancel()
	if err != nil {
		h.log.Warn().Str("event", EventForward).Str("via", h.via).Err(err).Msg("splice connect failed")
		nc.Reject(gossh.ConnectionFailed, fmt.Sprintf("gomux: connect to %s: %v", h.d.DialAddr(), err))
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		tc.Close()
		return
	}
	if !h.s.tasks.Go(func() { gossh.DiscardRequests(reqs) }) {
		ch.Close() // shutting down
		tc.Close()
		return
	}
	x, drop := h.hold("splice", func() { ch.Close(); tc.Close() })
	defer drop()
	start := time.Now()
	h.log.Info().Str("event", EventForward).Str("via", h.via).Str("result", "spliced").Msg("splice open")
	in, out := splice(countedChannel{ch, x}, tc)
	h.log.Info().Str("event", EventForwardClosed).Str("via", h.via).Int64("bytes_in", in).Int64("bytes_out", out).
		Dur("duration", time.Since(start)).Msg("splice closed")
}

// accelerate terminates the client's SSH session to the destination in
// gomux and serves it from the pooled upstream, for the same person.
func (h hop) accelerate(ctx context.Context, nc gossh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	if !h.s.tasks.Go(func() { gossh.DiscardRequests(reqs) }) {
		ch.Close() // shutting down
		return
	}
	x, drop := h.hold("inner session", func() { ch.Close() })
	defer drop()
	start := time.Now()
	h.log.Info().Str("event", EventForward).Str("via", h.via).Str("result", "accelerated").Msg("inner session starting")
	ic := &innerConn{s: h.s, host: h.requested, addr: h.d.HostPort(), frontUser: h.id.User, id: h.id,
		decision: h.d, held: x, hs: h.hs, local: h.local, remote: h.remote, log: h.log}
	ic.serve(ctx, channelConn{Channel: countedChannel{ch, x}, local: h.local, remote: h.remote})
	h.log.Info().Str("event", EventForwardClosed).Str("via", h.via).Dur("duration", time.Since(start)).Msg("inner session ended")
}
