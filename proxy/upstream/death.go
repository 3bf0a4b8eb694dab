package upstream

import (
	"errors"
	"fmt"
	"io"
)

// ErrEnded is wrapped, with the reason, by every error a lease returns
// once its connection has ended, as yamux's shutdownErr: the caller that
// arrives after the death learns why it happened, not only that it did.
var ErrEnded = errors.New("upstream connection ended")

// ErrIdleTimeout is why a connection no lease held for idle_timeout
// ended.
var ErrIdleTimeout = errors.New("unused for idle_timeout, closed by gomux")

// ErrKeepaliveTimeout is why a connection whose target stopped answering
// keepalives ended (keepalive_count_max intervals without a reply).
var ErrKeepaliveTimeout = errors.New("the target stopped answering keepalives")

// end records why the connection ended, unless a reason is already
// recorded: the first one is the cause, what follows (the client's Wait
// returning after gomux closed it) only its consequence. Call it before
// closing the connection.
func (u *upstream) end(cause error) {
	u.dmu.Lock()
	defer u.dmu.Unlock()
	if u.cause == nil {
		u.cause = cause
	}
}

// endWith closes a connected upstream for cause. One still dialling is
// ended by the pool's context instead, which connect() checks.
func (u *upstream) endWith(cause error) {
	select {
	case <-u.ready:
		if u.client != nil {
			u.end(cause)
			u.client.Close()
		}
	default:
	}
}

// reason is the recorded cause, for the log line of the end.
func (u *upstream) reason() error {
	u.dmu.Lock()
	defer u.dmu.Unlock()
	return u.cause
}

// ended returns ErrEnded with the cause once the connection has ended,
// and nil while it is up.
func (u *upstream) ended() error {
	select {
	case <-u.dead:
		return fmt.Errorf("%w: %w", ErrEnded, u.reason())
	default:
		return nil
	}
}

// explain turns err, from an operation on the connection, into the
// connection's death when it died: io.EOF is what x/crypto returns for
// anything tried on a connection whose transport has gone, and the reason
// is recorded as soon as the connection's own goroutine sees it end
// (connect), so an EOF waits for that instead of racing it. Any other
// error is returned as it is while the connection is up.
func (u *upstream) explain(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) {
		select {
		case <-u.dead:
		case <-u.pool.ctx.Done():
		}
	}
	if e := u.ended(); e != nil {
		if errors.Is(err, io.EOF) {
			return e
		}
		return fmt.Errorf("%w (%w)", e, err)
	}
	return err
}

// waitCause is why a connection whose Wait returned ended, when nothing
// in gomux ended it: the target or the network did.
func waitCause(err error) error {
	if err == nil {
		err = io.EOF
	}
	return fmt.Errorf("closed by the target or the network: %w", err)
}
