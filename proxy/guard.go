package proxy

import (
	"errors"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"time"

	glider "github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/proxy/audit"
)

// frontStateKey finds a front connection's frontState in its context.
type frontStateKey struct{}

// frontState is what the limits track for one front connection: its
// startup slot until it logs in, its login slot after, its channels, and
// the login grace timer.
type frontState struct {
	chans chanCount

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

// attempt records one authentication request, for the audit of a client
// that leaves without offering a key (AuthLogCallback).
func (fs *frontState) attempt(user, method string) {
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

// login turns the startup slot into the person's connection slot and
// stops the grace timer; an error refuses the login.
func (fs *frontState) login(l *limiter, user string) error {
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
func (fs *frontState) expire() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.release != nil || fs.closed {
		return false
	}
	fs.expired = true
	return true
}

// close gives back every slot the connection held.
func (fs *frontState) close() {
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
	fs *frontState
}

func (c *guardedConn) Close() error {
	c.fs.close()
	return c.Conn.Close()
}

// admit runs when a TCP connection is accepted, before any SSH: it applies
// MaxStartups and the per-source caps, and starts the login grace timer.
// A nil return makes the front close the connection.
func (s *Server) admit(ctx glider.Context, conn net.Conn) net.Conn {
	src := conn.RemoteAddr().String()
	done, closed, err := s.limits.startup(sourceOf(conn.RemoteAddr()))
	if err != nil {
		s.metrics.frontConn("dropped")
		s.metrics.limit("startup")
		s.noise.Add(sourceOf(conn.RemoteAddr()), audit.NoiseDropped)
		s.log.Debug().Str("event", EventLimit).Str("source", src).Err(err).Msg("connection dropped before login")
		// RFC 4253 4.2 lets a server send lines before its version; the
		// client shows this one in its debug output.
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(conn, err.Error()+"\r\n")
		return nil
	}
	s.metrics.frontConn("accepted")
	s.log.Debug().Str("event", EventTCPAccept).Str("source", src).Msg("connection accepted")
	fs := &frontState{startupDone: done, closedFn: closed, keyless: func(user string) {
		s.log.Info().Str("event", EventFrontAuth).Str("result", "refused").Bool("accepted", false).Str("user", user).
			Str("source", src).Str("reason", "no public key offered").Msg("front login refused")
	}}
	grace := s.live().cfg.Limits.LoginGraceTime.D()
	fs.grace = time.AfterFunc(grace, func() {
		if fs.expire() {
			s.noise.Add(sourceOf(conn.RemoteAddr()), audit.NoiseGrace)
			s.log.Debug().Str("event", EventLoginGrace).Str("source", src).Dur("login_grace_time", grace).
				Msg("not authenticated within the login grace time; closing")
			conn.Close()
		}
	})
	ctx.SetValue(frontStateKey{}, fs)
	return &guardedConn{Conn: conn, fs: fs}
}

// frontConfig is the front's SSH config for one connection: the login is
// decided once the client has signed (verified), where a person over the
// connection limit is refused with a banner saying why.
func (s *Server) frontConfig(ctx glider.Context) *gossh.ServerConfig {
	cfg := &gossh.ServerConfig{
		VerifiedPublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey, _ *gossh.Permissions, _ string) (*gossh.Permissions, error) {
			return s.verified(ctx, meta, key)
		},
	}
	if fs, ok := ctx.Value(frontStateKey{}).(*frontState); ok {
		cfg.AuthLogCallback = func(meta gossh.ConnMetadata, method string, _ error) { fs.attempt(meta.User(), method) }
	}
	cfg.Ciphers = serverCiphers()
	return cfg
}

// contain is deferred by the goroutines gomux owns per connection or
// channel: a panic there is logged with its stack and ends only that
// connection (closed by closer), never the process.
func contain(log zerolog.Logger, what string, closer io.Closer) {
	r := recover()
	if r == nil {
		return
	}
	log.Error().Str("event", EventPanic).Str("in", what).Interface("panic", r).Str("stack", string(debug.Stack())).
		Msg("bug: panic contained; closing the connection it happened on")
	if closer != nil {
		closer.Close()
	}
}
