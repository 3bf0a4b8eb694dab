package proxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	glider "github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
)

// held is one open thing that a policy decision let through: a front
// forward (spliced or accelerated), or a forward inside an accelerated
// session. A decision holds only while the policy that made it does, so
// each is decided again on every reload and recheck tick, and cut once the
// live policy would no longer open it as it is.
type held struct {
	// what names it for the log: "splice", "inner session", "forward".
	what string
	via  string // "front" or "inner": where it was asked for
	d    Decision
	// remoteUser is the login on the target, once the inner session
	// named it ("" for what has no login of its own).
	remoteUser atomic.Pointer[string]
	cut        func()
	log        zerolog.Logger

	// in and out are the bytes from and to the client so far, and runs
	// what runs in it now (an inner session's commands), for gomux
	// sessions (admin.go).
	in, out atomic.Int64
	runsMu  sync.Mutex
	runs    map[*running]struct{}
}

// setRemoteUser records the inner login, which every later check includes.
func (h *held) setRemoteUser(u string) { h.remoteUser.Store(&u) }

func (h *held) user() string {
	if u := h.remoteUser.Load(); u != nil {
		return *u
	}
	return ""
}

// holdings is what one front connection holds open, its inner sessions'
// forwards included: the person is the front connection's.
type holdings struct {
	mu sync.Mutex
	m  map[*held]struct{}
}

// holdingsKey finds a front connection's holdings in its context.
type holdingsKey struct{}

// holdingsFrom returns the front connection's holdings, nil before the
// login made them.
func holdingsFrom(ctx glider.Context) *holdings {
	hs, _ := ctx.Value(holdingsKey{}).(*holdings)
	return hs
}

// add keeps h until the returned function drops it.
func (hs *holdings) add(h *held) (drop func()) {
	hs.mu.Lock()
	hs.m[h] = struct{}{}
	hs.mu.Unlock()
	return func() {
		hs.mu.Lock()
		delete(hs.m, h)
		hs.mu.Unlock()
	}
}

func (hs *holdings) list() []*held {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	out := make([]*held, 0, len(hs.m))
	for h := range hs.m {
		out = append(out, h)
	}
	return out
}

// watch checks an open front connection again on every recheck tick and
// at once after every reload: the person must still be admitted (key
// listed, not revoked, certificate valid) or the connection closes, inner
// sessions and all; and each thing it holds open must still be what the
// live policy would open, or that one is cut. The interval is the live
// one, read again for each wait. lc is the config the login was decided
// by: each wait is on the replacement of the config the last check used,
// so no reload can land between a check and the wait unnoticed.
func (s *Server) watch(ctx glider.Context, id *Identity, hs *holdings, lc *liveConfig) {
	for {
		t := time.NewTimer(lc.cfg.Auth.RecheckInterval.D())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-lc.replaced:
			t.Stop()
		}
		lc = s.live()
		if err := lc.auth.Recheck(id); err != nil {
			identityFields(s.log.Warn().Str("event", EventFrontRevoked), id).Str("source", id.Source.String()).
				Str("reason", err.Error()).Msg("access withdrawn: closing the connection")
			if c, ok := ctx.Value(netConnKey{}).(net.Conn); ok {
				c.Close()
			}
			return
		}
		for _, h := range hs.list() {
			s.recheckHeld(lc, id.User, h)
		}
	}
}

// recheckHeld cuts h, with a log line naming the person and the reason,
// when lc's policy would no longer open it as it is; it says whether h
// may stay.
func (s *Server) recheckHeld(lc *liveConfig, person string, h *held) bool {
	why := lc.policy.Recheck(person, h.d, h.user())
	if why == "" {
		return true
	}
	h.log.Warn().Str("event", EventPolicyRevoked).Str("user", person).Str("via", h.via).Str("held", h.what).
		Str("target", h.d.HostPort()).Str("remote_user", h.user()).Str("reason", why).
		Msg("policy no longer allows this: closing it")
	h.cut()
	return false
}
