package admission

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Front is what the limits track for one front connection: its
// startup slot until it logs in, its login slot after, its channels, and
// the login grace timer.
type Front struct {
	chans ChanCount

	mu          sync.Mutex
	startupDone func()
	closedFn    func()
	grace       *time.Timer
	release     func() // the person's connection slot, once logged in
	user        string // whose slot release gives back
	expired     bool   // the grace time ran out first
	closed      bool
	tried       string // the last user name the client tried to log in as
	keys        int    // public keys the client offered or signed with
	// keyless is called when the connection closes without a login after
	// the client tried a name without offering any key: every other
	// failed login is logged where it is refused.
	keyless func(user string)
}

// NewFront is the state of a connection Startup admitted: startupDone
// and closed are what Startup returned; keyless, if not nil, is called
// when the connection closes without a login after the client tried a
// name without offering any key.
func NewFront(startupDone, closed func(), keyless func(user string)) *Front {
	return &Front{startupDone: startupDone, closedFn: closed, keyless: keyless}
}

// StartGrace starts the login grace timer: when d passes before a login
// (and before the connection closed), expired is called, which closes
// the connection.
func (fs *Front) StartGrace(d time.Duration, expired func()) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.grace = time.AfterFunc(d, func() {
		if fs.expire() {
			expired()
		}
	})
}

// Channels counts the connection's open channels, for OpenChannel.
func (fs *Front) Channels() *ChanCount { return &fs.chans }

// Guard wraps the connection so that closing it gives back every slot
// the connection held.
func (fs *Front) Guard(c net.Conn) net.Conn { return &guardedConn{Conn: c, fs: fs} }

// Attempt records one authentication request, for the audit of a client
// that leaves without offering a key (AuthLogCallback).
func (fs *Front) Attempt(user, method string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.tried = user
	if method == "publickey" {
		fs.keys++
	}
}

// errGraceOver is a login that came after the grace time closed the
// connection.
var errGraceOver = errors.New("gomux: login grace time is over")

// errOnePersonPerConnection refuses a second name on a connection that
// already holds a person's slot.
var errOnePersonPerConnection = errors.New("gomux: this connection already logged in as someone else")

// Login turns the startup slot into the person's connection slot and
// stops the grace timer; an error refuses the login.
func (fs *Front) Login(l *Limiter, user string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.expired || fs.closed {
		return errGraceOver
	}
	if fs.release != nil {
		// A login that failed after taking its slot may be retried on
		// the same connection, but only for the same person: another
		// name would use this slot without being counted.
		if user != fs.user {
			return errOnePersonPerConnection
		}
		return nil
	}
	rel, err := l.login(user)
	if err != nil {
		return err
	}
	fs.release, fs.user = rel, user
	fs.grace.Stop()
	fs.startupDone()
	return nil
}

// expire is the grace timer: true when the connection must be closed.
func (fs *Front) expire() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.release != nil || fs.closed {
		return false
	}
	fs.expired = true
	return true
}

// close gives back every slot the connection held.
func (fs *Front) close() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.closed {
		return
	}
	fs.closed = true
	fs.grace.Stop()
	if fs.release != nil {
		fs.release()
	} else if fs.tried != "" && fs.keys == 0 && fs.keyless != nil {
		fs.keyless(fs.tried)
	}
	fs.closedFn()
}

// guardedConn gives the connection's slots back when it closes.
type guardedConn struct {
	net.Conn
	fs *Front
}

func (c *guardedConn) Close() error {
	c.fs.close()
	return c.Conn.Close()
}
