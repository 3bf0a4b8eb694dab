package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/user"
	"sync/atomic"

	glider "github.com/gliderlabs/ssh"
	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/proxy/admission"
	"github.com/gomux/gomux/proxy/audit"
	"github.com/gomux/gomux/proxy/upstream"
	"github.com/gomux/gomux/shim"
)

// Server is a running gomux front with its upstream pool.
type Server struct {
	// start is what only a restart changes, as gomux started with it.
	start StartConfig
	// rt is the config in force (Reload replaces it); s.config() reads
	// it. It holds no field of start, and start none of it, so a field
	// read anywhere is the one that runs.
	rt      atomic.Pointer[liveConfig]
	metrics *metrics
	ready   atomic.Bool // accepting, not draining (/readyz)
	log     zerolog.Logger
	ca      *HostCA
	pool    *upstream.Pool
	front   *glider.Server
	tasks   gogroup.Group
	// drain ends each connection once nothing runs on it after SIGTERM.
	drain  drainer
	limits *admission.Limiter
	noise  audit.Noise
	// recordings opens session recordings within the quota.
	recordings audit.Recordings
	budget     *shim.Budget
	// runAs is the account gomux runs as: the one name a key file
	// without %u vouches for.
	runAs string
	// conns are the logged-in front connections, for the admin socket.
	conns liveConns
	// drainDeadline is when Shutdown cuts what is still open (Unix
	// seconds; 0 before a drain), for the drain alert.
	drainDeadline atomic.Int64
}

// activityKey is where a front connection's activity is kept in its
// glider context.
type activityKey struct{}

// NewServer prepares keys, credentials and policy. Everything that can be
// wrong with the operator's setup is reported here, before listening.
func NewServer(cfg *Config, agents map[string]dist.Binary, log zerolog.Logger) (*Server, error) {
	ca, err := OpenHostCA(cfg.StateDir, cfg.HostCertValidity.D())
	if err != nil {
		return nil, err
	}
	// A file without %u vouches for the account gomux runs as; when that
	// has no name (a uid without a passwd entry), for no one.
	runAs := ""
	if me, err := user.Current(); err == nil {
		runAs = me.Username
	} else {
		log.Warn().Str("event", EventConfig).Err(err).Msg("cannot name the account gomux runs as: authorized_keys files without %u admit no one")
	}
	live := cfg.LiveConfig
	lc, err := newLiveConfig(&cfg.StartConfig, &live, runAs)
	if err != nil {
		return nil, err
	}
	m := newMetrics()
	budget := shim.NewBudget(int64(cfg.StartConfig.Limits.MaxStagedMiB) << 20)
	pool, err := upstream.NewPool(poolConfig(&cfg.StartConfig, agents, budget, m), log)
	if err != nil {
		return nil, err
	}
	s := &Server{start: cfg.StartConfig, log: log, ca: ca, pool: pool, metrics: m, runAs: runAs,
		limits: admission.NewLimiter(admissionLimits(live.Limits)), budget: budget}
	s.rt.Store(lc)
	m.gauges(s)
	frontSigners := []glider.Signer{ca.HostSigner()}
	if cs, err := ca.SignerFor(frontName()); err == nil {
		frontSigners = append(frontSigners, cs)
	}
	s.front = &glider.Server{
		HostSigners:      frontSigners,
		Version:          "gomux",
		PublicKeyHandler: s.authenticate,
		ChannelHandlers: map[string]glider.ChannelHandler{
			"direct-tcpip": s.handleForward,
			"session":      s.refuseSession,
		},
		RequestHandlers:   map[string]glider.RequestHandler{},
		SubsystemHandlers: map[string]glider.SubsystemHandler{},
		ConnCallback: func(ctx glider.Context, conn net.Conn) net.Conn {
			conn = s.admit(ctx, conn)
			if conn == nil {
				return nil
			}
			ctx.SetValue(netConnKey{}, conn)
			act := s.drain.track(func() { conn.Close() })
			ctx.SetValue(activityKey{}, act)
			// glider cancels the context when the connection ends.
			context.AfterFunc(ctx, func() { s.drain.untrack(act) })
			return conn
		},
		ServerConfigCallback: s.frontConfig,
		ConnectionFailedCallback: func(conn net.Conn, err error) {
			// A failed login was logged where it was refused; the rest is
			// noise, counted per source (LogNoise).
			s.noise.Add(admission.SourceOf(conn.RemoteAddr()), audit.NoiseHandshake)
			s.log.Debug().Str("event", EventConnection).Str("source", conn.RemoteAddr().String()).Err(err).
				Str("result", "failed").Msg("front handshake or authentication failed")
		},
	}
	return s, nil
}

// serverCiphers are the ciphers the front and the inner sessions offer.
// Every byte an accelerated session carries is deciphered twice in gomux
// (the front's jump leg, then the inner session), and an SSH client picks
// the first of its own ciphers the server offers: OpenSSH's first is
// chacha20-poly1305, which x/crypto computes in plain Go (about 0.3 GB/s
// on amd64) where AES-GCM runs on AES-NI (about 5 GB/s), so it is not
// offered. Every OpenSSH since 6.2 has AES-GCM; the CTR modes (with
// x/crypto's default MACs) are for older clients.
func serverCiphers() []string {
	return []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM,
		gossh.CipherAES128CTR, gossh.CipherAES192CTR, gossh.CipherAES256CTR}
}

// frontName is the principal of the front's own certificate, so the one
// @cert-authority line can verify gomux itself when clients use
// HostKeyAlias gomux.
func frontName() string { return "gomux" }

// KnownHostsLine is the line clients add to trust gomux's host CA.
func (s *Server) KnownHostsLine() string { return s.ca.KnownHostsLine() }

// Pool exposes the upstream pool for tests and metrics.
func (s *Server) Pool() *upstream.Pool { return s.pool }

// authenticate answers whether a key would be accepted. The client may
// only be asking (a query, before any signature), so an acceptance here is
// not a login: it is logged at debug, and verified records the login. A
// refusal is logged, as sshd logs a failed publickey attempt. glider's
// ctx.User() keeps the first name the client tried; the binding check is
// redone in verified with the name of the signed request.
func (s *Server) authenticate(ctx glider.Context, key glider.PublicKey) bool {
	_, err := s.live().auth.Check(ctx.User(), ctx.RemoteAddr(), key)
	s.metrics.auth(authMethod(key), err == nil)
	if err != nil {
		s.log.Info().Str("event", EventFrontAuth).Str("result", "refused").Bool("accepted", false).Str("user", ctx.User()).
			Str("source", ctx.RemoteAddr().String()).Str("fingerprint", gossh.FingerprintSHA256(key)).
			Str("reason", err.Error()).Msg("front public key refused")
		return false
	}
	s.log.Debug().Str("event", EventFrontAuthOffer).Str("user", ctx.User()).Str("source", ctx.RemoteAddr().String()).
		Str("fingerprint", gossh.FingerprintSHA256(key)).Msg("front public key acceptable, awaiting signature")
	return true
}

// netConnKey holds the front connection's net.Conn in the glider context,
// so the re-check can close a connection whose person lost access.
type netConnKey struct{}

// identityKey holds the *Identity that authenticated a front connection.
type identityKey struct{}

// identityFrom returns the person a front connection acts for, nil before
// authentication completed.
func identityFrom(ctx glider.Context) *Identity {
	id, _ := ctx.Value(identityKey{}).(*Identity)
	return id
}

// verified runs once the client has signed with key: the login is decided
// here, for the name in the signed request, logged as exactly one audit
// event, and watched for as long as the connection lives.
func (s *Server) verified(ctx glider.Context, conn gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	lc := s.live()
	id, err := lc.auth.Check(conn.User(), conn.RemoteAddr(), key)
	if err != nil {
		s.log.Warn().Str("event", EventFrontAuth).Str("result", "refused").Bool("accepted", false).Str("user", conn.User()).
			Str("source", conn.RemoteAddr().String()).Str("fingerprint", gossh.FingerprintSHA256(key)).Err(err).
			Msg("front login refused")
		return nil, err
	}
	fs, _ := ctx.Value(frontStateKey{}).(*admission.Front)
	if fs == nil {
		return nil, errors.New("gomux: connection state missing")
	}
	if err := fs.Login(s.limits, conn.User()); err != nil {
		s.metrics.limit("login")
		s.log.Warn().Str("event", EventLimit).Str("user", conn.User()).Str("source", conn.RemoteAddr().String()).
			Err(err).Msg("login refused")
		return nil, &gossh.BannerError{Err: err, Message: err.Error() + "\r\n"}
	}
	ctx.SetValue(identityKey{}, id)
	hs := &holdings{m: map[*held]struct{}{}}
	ctx.SetValue(holdingsKey{}, hs)
	if !s.tasks.Go(func() { s.watch(ctx, id, hs, lc) }) {
		return nil, errShuttingDown
	}
	nc, _ := ctx.Value(netConnKey{}).(net.Conn)
	s.register(ctx, id, hs, nc)
	identityFields(s.log.Info().Str("event", EventFrontAuth).Str("result", "accepted").Bool("accepted", true), id).
		Str("source", conn.RemoteAddr().String()).Str("client_version", string(conn.ClientVersion())).Msg("front login")
	return &gossh.Permissions{Extensions: map[string]string{"fingerprint": id.Fingerprint()}}, nil
}

// identityFields adds who authenticated and with what to a log event.
func identityFields(ev *zerolog.Event, id *Identity) *zerolog.Event {
	return keyFields(ev.Str("user", id.User), id)
}

// keyFields adds how id authenticated, for loggers that already name the user.
func keyFields(ev *zerolog.Event, id *Identity) *zerolog.Event {
	ev = ev.Str("method", id.Method()).Str("fingerprint", id.Fingerprint())
	if c := id.Cert(); c != nil {
		ev = ev.Str("cert_key_id", c.KeyId).Uint64("cert_serial", c.Serial).
			Str("ca_fingerprint", gossh.FingerprintSHA256(c.SignatureKey))
	}
	return ev
}

func (s *Server) refuseSession(_ *glider.Server, conn *gossh.ServerConn, nc gossh.NewChannel, _ glider.Context) {
	s.log.Info().Str("event", EventChannel).Str("user", conn.User()).Str("source", conn.RemoteAddr().String()).
		Str("result", "refused").Msg("shell on the front refused")
	s.metrics.channel("front", "session")
	nc.Reject(gossh.Prohibited, "gomux is a jump host: use ssh -J gomux <target>")
}

func (s *Server) handleForward(_ *glider.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx glider.Context) {
	fs, _ := ctx.Value(frontStateKey{}).(*admission.Front)
	act, _ := ctx.Value(activityKey{}).(*activity)
	if fs == nil || act == nil {
		nc.Reject(gossh.ResourceShortage, "gomux: connection state missing")
		return
	}
	// Counted before anything else, so a drain cannot close the
	// connection under a forward that is still starting.
	if !act.begin() {
		nc.Reject(gossh.ResourceShortage, "gomux is restarting: connect again")
		return
	}
	release, _, err := s.limits.OpenChannel(conn.User(), admission.SourceOf(conn.RemoteAddr()), fs.Channels())
	if err != nil {
		act.end()
		s.metrics.limit("channel")
		s.log.Warn().Str("event", EventLimit).Str("user", conn.User()).Str("source", conn.RemoteAddr().String()).
			Str("channel", "direct-tcpip").Err(err).Msg("channel refused")
		nc.Reject(gossh.ResourceShortage, err.Error())
		return
	}
	if !s.tasks.Go(func() {
		defer act.end()
		defer release()
		defer contain(s.log.With().Str("user", conn.User()).Str("source", conn.RemoteAddr().String()).Logger(), "front direct-tcpip", conn)
		s.forward(ctx, conn, nc)
	}) {
		release()
		act.end()
		nc.Reject(gossh.ResourceShortage, "gomux is shutting down")
	}
}

func (s *Server) forward(ctx glider.Context, conn *gossh.ServerConn, nc gossh.NewChannel) {
	var p forwardPayload
	if err := gossh.Unmarshal(nc.ExtraData(), &p); err != nil {
		s.log.Warn().Str("event", EventForward).Err(err).Msg("malformed direct-tcpip request")
		nc.Reject(gossh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	id, hs := identityFrom(ctx), holdingsFrom(ctx)
	if id == nil || hs == nil {
		nc.Reject(gossh.Prohibited, "gomux: not authenticated")
		return
	}
	d := s.decide(ctx, id.User, p.Host, int(p.Port))
	log := s.log.With().Str("user", conn.User()).Str("source", conn.RemoteAddr().String()).
		Str("target", d.HostPort()).Logger()
	logDecision(log, "front", p.Host, d)
	s.metrics.channel("front", "direct-tcpip")
	s.metrics.decision("front", d)
	h := hop{s: s, id: id, hs: hs, via: "front", requested: p.Host, d: d, log: log,
		local: conn.LocalAddr(), remote: conn.RemoteAddr()}
	switch d.Mode {
	case ModeSplice:
		h.splice(ctx, nc)
	case ModeAccelerate:
		h.accelerate(ctx, nc)
	default:
		h.refuse(nc)
	}
}

// decide asks policy about one forwarding request, bounding the name
// lookup by the connect timeout so a slow resolver cannot hold a channel.
func (s *Server) decide(ctx context.Context, person, host string, port int) Decision {
	ctx, cancel := context.WithTimeout(ctx, s.start.Upstream.ConnectTimeout.D())
	defer cancel()
	return s.live().policy.Decide(ctx, person, host, port)
}

// logDecision records one policy decision: who, what was asked, what it
// normalized and resolved to, which rule decided and how.
func logDecision(log zerolog.Logger, via, requested string, d Decision) {
	ev := log.Info()
	if d.Mode == ModeDeny {
		ev = log.Warn().Str("reason", d.Reason)
	}
	addr := ""
	if d.Addr.IsValid() {
		addr = d.Addr.String()
	}
	ev.Str("event", EventPolicyDecision).Str("via", via).Str("requested", requested).Str("host", d.Host).
		Str("addr", addr).Int("port", d.Port).Int("rule", d.Rule).Str("mode", string(d.Mode)).
		Str("credential", d.Credential).Bool("agent_dial", d.AgentDial).Msg("forwarding decision")
}

// Serve accepts clients on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.log.Info().Str("event", EventListen).Str("addr", ln.Addr().String()).Msg("gomux listening")
	ln = s.withProxyProtocol(ln)
	s.ready.Store(true)
	err := s.front.Serve(ln)
	if errors.Is(err, glider.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, lets running connections finish until ctx is
// done, then closes what is left and the upstream pool. It returns an
// error when ctx ended first and connections were cut.
func (s *Server) Shutdown(ctx context.Context) error {
	// Idle connections end now, busy ones after their last channel: a
	// client's next command connects afresh instead of being cut mid-task
	// at the drain timeout.
	s.ready.Store(false)
	if dl, ok := ctx.Deadline(); ok {
		s.drainDeadline.Store(dl.Unix())
	}
	var drained gogroup.Group
	drained.Go(s.drain.drain)
	err := s.front.Shutdown(ctx)
	if err != nil {
		s.log.Warn().Str("event", EventShutdown).Err(err).Msg("drain timeout, closing remaining connections")
		s.front.Close()
		err = fmt.Errorf("drain cut short, remaining connections closed: %w", err)
	}
	drained.Wait()
	s.tasks.CloseWait()
	s.pool.Close()
	s.log.Info().Str("event", EventShutdown).Msg("gomux stopped")
	return err
}
