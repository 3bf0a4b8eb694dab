package proxy

import (
	"io"
	"net"
	"runtime/debug"
	"time"

	glider "github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/proxy/admission"
	"github.com/gomux/gomux/proxy/audit"
)

// frontStateKey finds a front connection's admission.Front in its
// context.
type frontStateKey struct{}

// admit runs when a TCP connection is accepted, before any SSH: it applies
// MaxStartups and the per-source caps, and starts the login grace timer.
// A nil return makes the front close the connection.
func (s *Server) admit(ctx glider.Context, conn net.Conn) net.Conn {
	src := conn.RemoteAddr().String()
	done, closed, err := s.limits.Startup(admission.SourceOf(conn.RemoteAddr()))
	if err != nil {
		s.metrics.frontConn("dropped")
		s.metrics.limit("startup")
		s.noise.Add(admission.SourceOf(conn.RemoteAddr()), audit.NoiseDropped)
		s.log.Debug().Str("event", EventLimit).Str("source", src).Err(err).Msg("connection dropped before login")
		// RFC 4253 4.2 lets a server send lines before its version; the
		// client shows this one in its debug output.
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(conn, err.Error()+"\r\n")
		return nil
	}
	s.metrics.frontConn("accepted")
	s.log.Debug().Str("event", EventTCPAccept).Str("source", src).Msg("connection accepted")
	fs := admission.NewFront(done, closed, func(user string) {
		s.log.Info().Str("event", EventFrontAuth).Str("result", "refused").Bool("accepted", false).Str("user", user).
			Str("source", src).Str("reason", "no public key offered").Msg("front login refused")
	})
	grace := s.live().cfg.Limits.LoginGraceTime.D()
	fs.StartGrace(grace, func() {
		s.noise.Add(admission.SourceOf(conn.RemoteAddr()), audit.NoiseGrace)
		s.log.Debug().Str("event", EventLoginGrace).Str("source", src).Dur("login_grace_time", grace).
			Msg("not authenticated within the login grace time; closing")
		conn.Close()
	})
	ctx.SetValue(frontStateKey{}, fs)
	return fs.Guard(conn)
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
	if fs, ok := ctx.Value(frontStateKey{}).(*admission.Front); ok {
		cfg.AuthLogCallback = func(meta gossh.ConnMetadata, method string, _ error) { fs.Attempt(meta.User(), method) }
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
