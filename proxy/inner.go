package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
)

// innerConn is one accelerated forwarding: the client's second SSH session,
// terminated in gomux and served from the pooled upstream for its target.
type innerConn struct {
	s         *Server
	host      string // as the client requested it
	addr      string // host:port dialled upstream
	frontUser string
	id        *Identity // the front person; the inner session acts for them
	decision  Decision
	log       zerolog.Logger

	remoteUser string
	tasks      tracker

	mu    sync.Mutex
	lease *Lease
}

// channelConn lets an SSH channel carry a nested SSH connection.
type channelConn struct {
	gossh.Channel
	local, remote net.Addr
}

func (c channelConn) LocalAddr() net.Addr              { return c.local }
func (c channelConn) RemoteAddr() net.Addr             { return c.remote }
func (c channelConn) SetDeadline(time.Time) error      { return nil }
func (c channelConn) SetReadDeadline(time.Time) error  { return nil }
func (c channelConn) SetWriteDeadline(time.Time) error { return nil }

// errRemoteUserDenied is shown to the client as an auth banner.
var errRemoteUserDenied = errors.New("remote user not allowed by policy")

// serve runs the inner SSH server on the accepted direct-tcpip channel until
// the client closes it.
func (ic *innerConn) serve(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	signer, err := ic.s.ca.SignerFor(ic.host)
	if err != nil {
		ic.log.Error().Err(err).Msg("cannot mint host certificate")
		return
	}
	cfg := &gossh.ServerConfig{
		ServerVersion: "SSH-2.0-gomux",
		PublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
			if !ic.decision.AllowsRemoteUser(meta.User()) {
				ic.log.Warn().Str("event", "inner_auth").Str("remote_user", meta.User()).Str("result", "denied").
					Msg("remote user not allowed by policy")
				return nil, &gossh.BannerError{
					Err:     errRemoteUserDenied,
					Message: fmt.Sprintf("gomux: user %s may not log in to %s as %s\r\n", ic.frontUser, ic.host, meta.User()),
				}
			}
			if err := ic.checkInnerKey(key); err != nil {
				ic.log.Info().Str("event", "inner_auth").Str("result", "refused").Bool("accepted", false).Str("remote_user", meta.User()).
					Str("fingerprint", gossh.FingerprintSHA256(key)).Str("reason", err.Error()).Msg("inner public key refused")
				return nil, err
			}
			return &gossh.Permissions{}, nil
		},
		VerifiedPublicKeyCallback: func(meta gossh.ConnMetadata, key gossh.PublicKey, _ *gossh.Permissions, _ string) (*gossh.Permissions, error) {
			if err := ic.checkInnerKey(key); err != nil {
				ic.log.Warn().Str("event", "inner_auth").Str("result", "refused").Bool("accepted", false).Str("remote_user", meta.User()).
					Err(err).Msg("inner login refused")
				return nil, err
			}
			keyFields(ic.log.Info().Str("event", "inner_auth").Str("result", "accepted").Bool("accepted", true), ic.id).
				Str("remote_user", meta.User()).Msg("inner login")
			return &gossh.Permissions{}, nil
		},
	}
	cfg.AddHostKey(signer)
	sc, chans, reqs, err := gossh.NewServerConn(conn, cfg)
	if err != nil {
		ic.log.Info().Str("event", "inner_handshake").Err(err).Msg("inner handshake failed")
		return
	}
	ic.remoteUser = sc.User()
	ic.log = ic.log.With().Str("remote_user", ic.remoteUser).Logger()
	ic.log.Debug().Str("event", "inner_connect").Msg("inner session established")

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ic.tasks.Go(func() { gossh.DiscardRequests(reqs) })
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			if !ic.tasks.Go(func() { ic.handleSession(ctx, nc) }) {
				nc.Reject(gossh.ResourceShortage, "gomux is shutting down")
			}
		case "direct-tcpip":
			if !ic.tasks.Go(func() { ic.handleDirect(ctx, nc) }) {
				nc.Reject(gossh.ResourceShortage, "gomux is shutting down")
			}
		default:
			nc.Reject(gossh.UnknownChannelType, "unsupported channel type")
		}
	}
	cancel()
	sc.Close()
	ic.tasks.Close()
	ic.tasks.Wait()
	ev := ic.log.Info().Str("event", "inner_disconnect")
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

// errInnerKeyMismatch refuses an inner login by any key but the front one.
var errInnerKeyMismatch = errors.New("the inner session must be authenticated with the key that authenticated to gomux")

// checkInnerKey admits the inner login only with the very key or
// certificate that authenticated the front connection, still valid now:
// the person was settled there, and a second credential cannot change it.
func (ic *innerConn) checkInnerKey(key gossh.PublicKey) error {
	if !ic.id.SameKey(key) {
		return errInnerKeyMismatch
	}
	return ic.s.auth.Recheck(ic.id)
}

// upstreamLease returns a live lease for this connection's target,
// replacing one whose connection has died so the next channel reconnects.
func (ic *innerConn) upstreamLease(ctx context.Context) (*Lease, error) {
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
	l, err := ic.s.pool.Acquire(ctx, ic.addr, ic.remoteUser)
	if err != nil {
		return nil, err
	}
	ic.lease = l
	return l, nil
}

// backend returns the lease and, unless the target is in fallback mode, its
// agent. Errors are phrased for the client, who sees them in "open failed".
func (ic *innerConn) backend(ctx context.Context) (*Lease, *agent.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*ic.s.cfg.Upstream.ConnectTimeout.D()+time.Minute)
	defer cancel()
	l, err := ic.upstreamLease(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("gomux: cannot reach %s as %s: %w", ic.addr, ic.remoteUser, err)
	}
	a, err := l.Agent(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("gomux: cannot start agent on %s: %w", ic.addr, err)
	}
	return l, a, nil
}

func (ic *innerConn) handleDirect(ctx context.Context, nc gossh.NewChannel) {
	var p forwardPayload
	if err := gossh.Unmarshal(nc.ExtraData(), &p); err != nil {
		nc.Reject(gossh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	dest := joinHostPort(p.Host, int(p.Port))
	log := ic.log.With().Str("event", "forward").Str("dest", dest).Logger()
	start := time.Now()
	l, a, err := ic.backend(ctx)
	if err != nil {
		log.Warn().Err(err).Msg("forward failed")
		nc.Reject(gossh.ConnectionFailed, err.Error())
		return
	}
	dctx, cancel := context.WithTimeout(ctx, ic.s.cfg.Upstream.ConnectTimeout.D())
	var conn net.Conn
	if a != nil {
		conn, err = a.Dial(dctx, "tcp", dest)
	} else {
		conn, err = l.Client().DialContext(dctx, "tcp", dest)
	}
	cancel()
	if err != nil {
		log.Warn().Err(err).Msg("forward failed")
		nc.Reject(gossh.ConnectionFailed, fmt.Sprintf("gomux: connect to %s from %s: %v", dest, ic.host, err))
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	ic.tasks.Go(func() { gossh.DiscardRequests(reqs) })
	in, out := splice(ch, conn)
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
	var wg sync.WaitGroup
	wg.Add(2)
	cp := func(dst, src io.ReadWriteCloser, n *int64) {
		defer wg.Done()
		*n, _ = io.Copy(dst, src)
		if hc, ok := dst.(halfCloser); ok {
			hc.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go cp(b, a, &ab)
	go cp(a, b, &ba)
	wg.Wait()
	a.Close()
	b.Close()
	return ab, ba
}

// tracker owns a set of goroutines and refuses new ones once closed, so a
// shutdown can wait for every one it started without racing a late start.
type tracker struct {
	mu     sync.Mutex
	closed bool
	n      int
	done   chan struct{}
}

// Go runs fn in a goroutine unless the tracker is closed.
func (t *tracker) Go(fn func()) bool {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return false
	}
	t.n++
	t.mu.Unlock()
	go func() {
		defer t.finish()
		fn()
	}()
	return true
}

func (t *tracker) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 && t.done != nil {
		close(t.done)
		t.done = nil
	}
}

// Close refuses further goroutines.
func (t *tracker) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
}

// Wait returns when every started goroutine has returned.
func (t *tracker) Wait() {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return
	}
	if t.done == nil {
		t.done = make(chan struct{})
	}
	ch := t.done
	t.mu.Unlock()
	<-ch
}
