package upstream

import (
	"fmt"
	"time"
)

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
		u.end(fmt.Errorf("%w (%d intervals unanswered)", ErrKeepaliveTimeout, missed))
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
