package proxy

import (
	"context"
	"time"
)

// flushFirst writes to the target, before a step's reply, whatever the shim
// holds for it only in gomux's memory (temp dirs not yet made, staged
// uploads, modes), when the step is the first session of its inner
// connection.
//
// Holding that state back is what saves round trips, and is safe as long
// as the client's next step comes back to this gomux: over one
// ControlMaster connection it does. A client without ControlPersist makes
// a new connection per step, which behind a load balancer may reach
// another replica that knows nothing of this one's memory; a step that
// comes first on its connection is therefore settled on the target before
// its client sees the reply. A ControlMaster's first session is nearly
// always Ansible's `echo ~`, which owes nothing, so this costs it no round
// trip; the steps multiplexed after it stay deferred.
func (s *session) flushFirst() {
	if !s.first || s.exec.Host() == nil || s.a == nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.lease.Context(), s.ic.s.start.Upstream.ConnectTimeout.D()+30*time.Second)
	defer cancel()
	if err := flush(ctx, s.a, s.exec.Host()); err != nil {
		s.log.Warn().Str("event", EventShimSettle).Err(err).
			Msg("could not write staged temp dirs to the target before replying; a step on another gomux may not find them")
	}
}
