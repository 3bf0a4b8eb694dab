package admission

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/gomux/gomux/internal/gogroup"
	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
)

// proxyHeader is what a PROXY protocol header said.
type proxyHeader struct {
	// Local is a connection the balancer made itself (a health check: v2
	// LOCAL, v1 UNKNOWN); it keeps the balancer's own address.
	Local    bool
	Src, Dst netip.AddrPort
}

// defaultProxyHeaderTimeout is how long a connection from a trusted
// balancer may take to send its PROXY header. HAProxy, nginx and cloud
// balancers send it as the first bytes of the connection, before any of
// the client's, so it arrives within one round trip of the accept; 5s
// also covers two retransmissions of a lost first segment (TCP's initial
// retransmission timeout is 1s, then 2s). Any longer only lets a silent
// connection hold its max_startups slot.
const defaultProxyHeaderTimeout = 5 * time.Second

// maxProxyV2Len bounds a v2 header's address and TLV block; a balancer
// sends tens of bytes, a few hundred with TLS TLVs.
const maxProxyV2Len = 4096

// maxProxyV1Len is the longest v1 header line, CRLF included (the spec's
// bound).
const maxProxyV1Len = 107

// proxyV1Sig is the start of a v1 header: the signature and the space
// that must follow it.
const proxyV1Sig = "PROXY "

// errNotProxy is a connection that did not start with a PROXY header.
var errNotProxy = errors.New("no PROXY protocol header")

// parseProxyHeader reads one PROXY protocol v1 or v2 header from r and
// nothing after it, so r then yields the SSH stream. The header's bytes
// are framed here, and parsed by github.com/pires/go-proxyproto: gomux
// frames them itself so that a header may arrive in several reads (the
// library refuses a v1 line not already buffered whole), that no byte of
// the client's stream is read, and that a v2 block is bounded before it
// is read.
func parseProxyHeader(r *bufio.Reader) (proxyHeader, error) {
	frame, err := readProxyFrame(r)
	if err != nil {
		return proxyHeader{}, err
	}
	if frame[0] == proxyproto.SIGV2[0] {
		// gomux keeps the balancer's own address for a LOCAL header
		// whatever its address block says, and for a PROXY header of
		// family UNSPEC (the spec lets a receiver accept it so; the
		// library refuses it): both are parsed as LOCAL, UNSPEC.
		if cmd := frame[12] & 0xf; cmd == 0 || cmd == 1 && frame[13] == 0 {
			frame[12], frame[13] = frame[12]&0xf0, 0
		}
	}
	h, err := proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(frame), len(frame)))
	if err != nil {
		return proxyHeader{}, fmt.Errorf("PROXY v%d header: %w", proxyVersion(frame), err)
	}
	if h.Command.IsLocal() {
		return proxyHeader{Local: true}, nil
	}
	src, dst, ok := h.TCPAddrs()
	if !ok {
		return proxyHeader{}, fmt.Errorf("PROXY v%d header: address family 0x%02x is not TCP", proxyVersion(frame), byte(h.TransportProtocol))
	}
	return proxyHeader{Src: tcpAddrPort(src), Dst: tcpAddrPort(dst)}, nil
}

func proxyVersion(frame []byte) int {
	if frame[0] == proxyproto.SIGV2[0] {
		return 2
	}
	return 1
}

func tcpAddrPort(a *net.TCPAddr) netip.AddrPort {
	ip, _ := netip.AddrFromSlice(a.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.Port))
}

// readProxyFrame reads the bytes of one PROXY header: a v1 line up to its
// LF (at most maxProxyV1Len bytes), or a v2 header's 16 fixed bytes and
// the block they announce (at most maxProxyV2Len). It returns errNotProxy
// when r does not start with either signature.
func readProxyFrame(r *bufio.Reader) ([]byte, error) {
	first, err := r.Peek(1)
	if err != nil {
		return nil, fmt.Errorf("read PROXY header: %w", err)
	}
	switch first[0] {
	case proxyproto.SIGV2[0]:
		frame := make([]byte, 16, 16+maxProxyV2Len)
		if _, err := io.ReadFull(r, frame); err != nil {
			return nil, fmt.Errorf("read PROXY v2 header: %w", err)
		}
		if !bytes.Equal(frame[:12], proxyproto.SIGV2) {
			return nil, errNotProxy
		}
		n := int(binary.BigEndian.Uint16(frame[14:]))
		if n > maxProxyV2Len {
			return nil, fmt.Errorf("PROXY v2 header: %d bytes of addresses (max %d): %w", n, maxProxyV2Len, proxyproto.ErrInvalidLength)
		}
		frame = frame[:16+n]
		if _, err := io.ReadFull(r, frame[16:]); err != nil {
			return nil, fmt.Errorf("read PROXY v2 addresses: %w", err)
		}
		return frame, nil
	case proxyV1Sig[0]:
		var line []byte
		for len(line) < maxProxyV1Len {
			b, err := r.ReadByte()
			if err != nil {
				return nil, fmt.Errorf("read PROXY v1 header: %w", err)
			}
			line = append(line, b)
			if b == '\n' {
				break
			}
		}
		if !bytes.HasPrefix(line, []byte(proxyV1Sig)) {
			return nil, errNotProxy
		}
		return line, nil
	}
	return nil, errNotProxy
}

// Listener reads the PROXY header of each connection from a trusted
// balancer before handing it to the front, in a goroutine per
// connection with the login grace time as its deadline, so a slow or
// silent balancer connection never holds up the others. It runs before
// the front's admission, so the per-source limits count real clients.
type Listener struct {
	net.Listener
	trusted []netip.Prefix
	// headerTimeout bounds the wait for a trusted connection's header.
	headerTimeout time.Duration
	grace         func() time.Duration
	limits        *Limiter
	metrics       Metrics
	log           zerolog.Logger
	events        Events

	ctx    context.Context
	cancel context.CancelFunc
	tasks  gogroup.Group // the accept loop and the header readers
	out    chan acceptResult
	once   sync.Once

	mu      sync.Mutex
	pending map[net.Conn]struct{} // headers being read, closed by Close
}

type acceptResult struct {
	conn net.Conn
	err  error
}

// ListenerConfig is what a Listener needs from the front: package
// proxy fills it from its config, metrics and logger.
type ListenerConfig struct {
	// Trusted are the balancers' networks (proxy_protocol.trusted_networks).
	Trusted []netip.Prefix
	// HeaderTimeout bounds the wait for a trusted connection's header;
	// zero means defaultProxyHeaderTimeout.
	HeaderTimeout time.Duration
	// Grace is the login grace time in force, which bounds that wait too.
	Grace func() time.Duration
	// Limits counts a connection waiting for its header as a startup.
	Limits *Limiter
	// Metrics counts headers and drops; nil counts nothing.
	Metrics Metrics
	// Log gets one line per refused connection and per header read.
	Log zerolog.Logger
	// Events names the log lines' events (proxy/events.go declares them).
	Events Events
}

// Events are the names of the events a Listener logs: package proxy
// declares every event name in one file, so it passes them in.
type Events struct {
	// ProxyProtocol is a header read or refused.
	ProxyProtocol string
	// Limit is a connection dropped by max_startups or a per-source cap.
	Limit string
}

// Metrics is what a Listener counts, implemented by proxy's Prometheus
// metrics: an interface, so this package needs no registry.
type Metrics interface {
	// ProxyHeader counts one header by result: ok, local, missing,
	// invalid, untrusted.
	ProxyHeader(result string)
	// FrontConn counts one front connection by result (dropped).
	FrontConn(result string)
	// Limit counts one refusal by a limit, by stage (startup).
	Limit(stage string)
}

// noMetrics counts nothing.
type noMetrics struct{}

func (noMetrics) ProxyHeader(string) {}
func (noMetrics) FrontConn(string)   {}
func (noMetrics) Limit(string)       {}

// NewListener starts reading headers from ln's connections; a trusted
// one's header must arrive within cfg.HeaderTimeout and the grace time.
func NewListener(ln net.Listener, cfg ListenerConfig) *Listener {
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = defaultProxyHeaderTimeout
	}
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	pl := &Listener{Listener: ln, trusted: cfg.Trusted, headerTimeout: cfg.HeaderTimeout, grace: cfg.Grace,
		limits: cfg.Limits, metrics: cfg.Metrics, log: cfg.Log, events: cfg.Events, ctx: ctx, cancel: cancel,
		out: make(chan acceptResult), pending: map[net.Conn]struct{}{}}
	pl.tasks.Go(pl.acceptLoop)
	return pl
}

func (pl *Listener) acceptLoop() {
	for {
		c, err := pl.Listener.Accept()
		if err != nil {
			select {
			case pl.out <- acceptResult{err: err}:
			case <-pl.ctx.Done():
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !pl.tasks.Go(func() { pl.readHeader(c) }) {
			c.Close() // the listener is closing
		}
	}
}

// readHeader reads a new connection's PROXY header and hands the
// connection to Accept, or closes it when the listener closes first.
func (pl *Listener) readHeader(c net.Conn) {
	c = pl.handshake(c)
	if c == nil {
		return
	}
	select {
	case pl.out <- acceptResult{conn: c}:
	case <-pl.ctx.Done():
		c.Close()
	}
}

// handshake returns the connection to serve, with the client's address,
// or nil when it was refused (and closed).
func (pl *Listener) handshake(c net.Conn) net.Conn {
	peer := c.RemoteAddr()
	ap, err := netip.ParseAddrPort(peer.String())
	trusted := err == nil && containsAddr(pl.trusted, ap.Addr().Unmap())
	if !trusted {
		return &sniffConn{Conn: c, br: bufio.NewReader(c), pl: pl}
	}
	// Until its header is read the connection is an unauthenticated
	// one from the balancer's address: it holds a max_startups slot and
	// one of that address's, so silent connections cannot pile up here.
	// admit counts it again, under the client's address, once known.
	release, ok := pl.startupSlot(c, peer)
	if !ok {
		return nil
	}
	wait := min(pl.headerTimeout, pl.grace())
	pl.mu.Lock()
	if pl.ctx.Err() != nil {
		pl.mu.Unlock()
		release()
		c.Close()
		return nil
	}
	pl.pending[c] = struct{}{}
	pl.mu.Unlock()
	c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(c)
	h, err := parseProxyHeader(br)
	c.SetReadDeadline(time.Time{})
	release()
	pl.mu.Lock()
	delete(pl.pending, c)
	pl.mu.Unlock()
	if pl.ctx.Err() != nil {
		c.Close()
		return nil
	}
	if err != nil {
		result := "invalid"
		if errors.Is(err, errNotProxy) {
			result = "missing"
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("no PROXY header within %v (header timeout): %w", wait, err)
		}
		pl.metrics.ProxyHeader(result)
		pl.log.Warn().Str("event", pl.events.ProxyProtocol).Str("balancer", peer.String()).Str("result", result).Err(err).
			Msg("connection from a trusted balancer without a valid PROXY header; closing")
		c.Close()
		return nil
	}
	pc := &proxiedConn{Conn: c, br: br, remote: peer}
	if h.Local {
		pl.metrics.ProxyHeader("local")
	} else {
		pl.metrics.ProxyHeader("ok")
		pc.remote = net.TCPAddrFromAddrPort(h.Src)
	}
	pl.log.Debug().Str("event", pl.events.ProxyProtocol).Str("balancer", peer.String()).Str("source", pc.remote.String()).
		Bool("local", h.Local).Msg("PROXY header read")
	return pc
}

// startupSlot counts a balancer connection waiting for its header as
// an unauthenticated connection from the balancer; release gives the
// slot back. Over the limit, the connection is refused (ok false) with
// the limit's message and closed.
func (pl *Listener) startupSlot(c net.Conn, peer net.Addr) (release func(), ok bool) {
	_, closed, err := pl.limits.Startup(SourceOf(peer))
	if err == nil {
		return closed, true
	}
	pl.metrics.FrontConn("dropped")
	pl.metrics.Limit("startup")
	pl.log.Warn().Str("event", pl.events.Limit).Str("balancer", peer.String()).Err(err).
		Msg("balancer connection dropped while waiting for its PROXY header")
	c.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(c, err.Error()+"\r\n")
	c.Close()
	return nil, false
}

// Accept returns the next connection whose header, if it needed one, has
// been read.
func (pl *Listener) Accept() (net.Conn, error) {
	select {
	case r := <-pl.out:
		return r.conn, r.err
	case <-pl.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting and waits for the header readers.
func (pl *Listener) Close() error {
	var err error
	pl.once.Do(func() {
		pl.mu.Lock()
		pl.cancel()
		for c := range pl.pending {
			c.Close()
		}
		pl.mu.Unlock()
		err = pl.Listener.Close()
		pl.tasks.CloseWait()
	})
	return err
}

// proxiedConn is a balancer's connection seen as the client's.
type proxiedConn struct {
	net.Conn
	br     *bufio.Reader
	remote net.Addr
}

func (c *proxiedConn) Read(p []byte) (int, error) { return c.br.Read(p) }
func (c *proxiedConn) RemoteAddr() net.Addr       { return c.remote }

// sniffConn is a connection from an untrusted address: served as it is,
// unless it starts with a PROXY header, which only a trusted balancer may
// send. The check is on the first read, after gomux has sent its SSH
// version, so no client waits for it.
type sniffConn struct {
	net.Conn
	br      *bufio.Reader
	pl      *Listener
	checked bool
}

func (c *sniffConn) Read(p []byte) (int, error) {
	if !c.checked {
		c.checked = true
		if b, _ := c.br.Peek(5); bytes.Equal(b, proxyproto.SIGV1) || bytes.Equal(b, proxyproto.SIGV2[:5]) {
			c.pl.metrics.ProxyHeader("untrusted")
			c.pl.log.Warn().Str("event", c.pl.events.ProxyProtocol).Str("source", c.Conn.RemoteAddr().String()).Str("result", "untrusted").
				Msg("PROXY header from an address not in proxy_protocol.trusted_networks; closing")
			c.Conn.Close()
			return 0, errors.New("gomux: PROXY header from an untrusted address")
		}
	}
	return c.br.Read(p)
}

// containsAddr says whether one of nets holds a (as proxy's policy does).
func containsAddr(nets []netip.Prefix, a netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}
