package proxy

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
)

// ProxyProtocolConfig lets gomux sit behind a TCP load balancer (HAProxy,
// an AWS NLB, a Kubernetes Service with a proxy-protocol annotation) and
// still see each client's own address: in its logs, its per-source
// limits and a certificate's source-address option.
type ProxyProtocolConfig struct {
	// TrustedNetworks are the load balancers' addresses. A connection from
	// one must start with a PROXY protocol v1 or v2 header (as HAProxy and
	// nginx require once it is on), or it is closed. A connection from any
	// other address is served as it is, with its own address, and is
	// closed if it sends a PROXY header: nobody else may claim a source.
	// Default none: PROXY protocol off.
	TrustedNetworks []string `yaml:"trusted_networks"`
}

// validateOps checks the fields of running gomux for a team: metrics and
// the PROXY protocol.
func (c *Config) validateOps() error {
	if c.MetricsListen != "" {
		if _, _, err := splitHostPort(c.MetricsListen); err != nil {
			return &FieldError{"metrics_listen", err}
		}
	}
	nets, err := c.ProxyProtocol.networks()
	if err != nil {
		return err
	}
	if len(nets) == 0 {
		return nil
	}
	own, err := ownAddrs()
	if err != nil {
		return &FieldError{"proxy_protocol.trusted_networks", fmt.Errorf("cannot list gomux's own addresses to check against: %w", err)}
	}
	return checkTrustedNetworks(nets, c.Targets, c.Listen, own)
}

// ownAddrs are the addresses of this machine's interfaces.
func ownAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// checkTrustedNetworks refuses a trusted network from which a person
// could send gomux a PROXY header of their choosing, and so any client
// address (past per-source limits, a certificate's source-address, the
// logs): one that a non-deny rule's cidrs reach (a host there is one a
// person may log in to, then connect to gomux from), or one holding
// gomux's own listen or interface address (a splice to gomux's own
// listener arrives from it). Loopback is allowed, for a balancer on the
// same machine: no rule reaches loopback unless its cidrs name it, which
// the first check refuses.
func checkTrustedNetworks(nets []netip.Prefix, rules []TargetRule, listen string, own []netip.Addr) error {
	type self struct {
		what string
		addr netip.Addr
	}
	var selves []self
	if h, _, err := splitHostPort(listen); err == nil {
		if a, err := netip.ParseAddr(h); err == nil {
			selves = append(selves, self{"listen address", a.Unmap()})
		}
	}
	for _, a := range own {
		selves = append(selves, self{"own address", a})
	}
	for i, n := range nets {
		f := fmt.Sprintf("proxy_protocol.trusted_networks[%d]", i)
		for j, r := range rules {
			if r.Mode == ModeDeny || r.Mode == ModeForward {
				// A forward rule's destination is dialled from the
				// session's target, where its addresses (its loopback)
				// are the target's own.
				continue
			}
			for _, c := range r.CIDRs {
				if rn, err := parseCIDR(c); err == nil && rn.Overlaps(n) {
					return &FieldError{f, fmt.Errorf("%s overlaps targets[%d].cidrs %s: a person that rule lets reach a host there could connect to gomux from it with a forged PROXY header; list only the balancers' own addresses", n, j, rn)}
				}
			}
		}
		for _, s := range selves {
			if s.addr.IsLoopback() || s.addr.IsUnspecified() || !n.Contains(s.addr) {
				continue
			}
			return &FieldError{f, fmt.Errorf("%s holds gomux's %s %s: a connection gomux itself makes (a splice to its own listener) would come from a trusted address and could carry a forged PROXY header; list only the balancers' own addresses", n, s.what, s.addr)}
		}
	}
	return nil
}

func (p ProxyProtocolConfig) networks() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, n := range p.TrustedNetworks {
		pr, err := parseCIDR(n)
		if err != nil {
			return nil, &FieldError{fmt.Sprintf("proxy_protocol.trusted_networks[%d]", i), err}
		}
		out = append(out, pr)
	}
	return out, nil
}

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

// proxyListener reads the PROXY header of each connection from a trusted
// balancer before handing it to the front, in a goroutine per
// connection with the login grace time as its deadline, so a slow or
// silent balancer connection never holds up the others. It runs before
// the front's admission, so the per-source limits count real clients.
type proxyListener struct {
	net.Listener
	s       *Server
	trusted []netip.Prefix
	// headerTimeout bounds the wait for a trusted connection's header.
	headerTimeout time.Duration

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

// withProxyProtocol wraps ln when proxy_protocol lists trusted networks.
func (s *Server) withProxyProtocol(ln net.Listener) net.Listener {
	nets, _ := s.start.ProxyProtocol.networks() // validated with the config
	if len(nets) == 0 {
		return ln
	}
	return newProxyListener(s, ln, nets, defaultProxyHeaderTimeout)
}

// newProxyListener starts reading headers from ln's connections; a
// trusted one's header must arrive within headerTimeout.
func newProxyListener(s *Server, ln net.Listener, nets []netip.Prefix, headerTimeout time.Duration) *proxyListener {
	ctx, cancel := context.WithCancel(context.Background())
	pl := &proxyListener{Listener: ln, s: s, trusted: nets, headerTimeout: headerTimeout, ctx: ctx, cancel: cancel,
		out: make(chan acceptResult), pending: map[net.Conn]struct{}{}}
	pl.tasks.Go(pl.acceptLoop)
	return pl
}

func (pl *proxyListener) acceptLoop() {
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
func (pl *proxyListener) readHeader(c net.Conn) {
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
func (pl *proxyListener) handshake(c net.Conn) net.Conn {
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
	wait := min(pl.headerTimeout, pl.s.live().cfg.Limits.LoginGraceTime.D())
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
		pl.s.metrics.proxyHeader(result)
		pl.s.log.Warn().Str("event", EventProxyProtocol).Str("balancer", peer.String()).Str("result", result).Err(err).
			Msg("connection from a trusted balancer without a valid PROXY header; closing")
		c.Close()
		return nil
	}
	pc := &proxiedConn{Conn: c, br: br, remote: peer}
	if h.Local {
		pl.s.metrics.proxyHeader("local")
	} else {
		pl.s.metrics.proxyHeader("ok")
		pc.remote = net.TCPAddrFromAddrPort(h.Src)
	}
	pl.s.log.Debug().Str("event", EventProxyProtocol).Str("balancer", peer.String()).Str("source", pc.remote.String()).
		Bool("local", h.Local).Msg("PROXY header read")
	return pc
}

// startupSlot counts a balancer connection waiting for its header as
// an unauthenticated connection from the balancer; release gives the
// slot back. Over the limit, the connection is refused (ok false) with
// the limit's message and closed.
func (pl *proxyListener) startupSlot(c net.Conn, peer net.Addr) (release func(), ok bool) {
	_, closed, err := pl.s.limits.startup(sourceOf(peer))
	if err == nil {
		return closed, true
	}
	pl.s.metrics.frontConn("dropped")
	pl.s.metrics.limit("startup")
	pl.s.log.Warn().Str("event", EventLimit).Str("balancer", peer.String()).Err(err).
		Msg("balancer connection dropped while waiting for its PROXY header")
	c.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(c, err.Error()+"\r\n")
	c.Close()
	return nil, false
}

// Accept returns the next connection whose header, if it needed one, has
// been read.
func (pl *proxyListener) Accept() (net.Conn, error) {
	select {
	case r := <-pl.out:
		return r.conn, r.err
	case <-pl.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting and waits for the header readers.
func (pl *proxyListener) Close() error {
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
	pl      *proxyListener
	checked bool
}

func (c *sniffConn) Read(p []byte) (int, error) {
	if !c.checked {
		c.checked = true
		if b, _ := c.br.Peek(5); bytes.Equal(b, proxyproto.SIGV1) || bytes.Equal(b, proxyproto.SIGV2[:5]) {
			c.pl.s.metrics.proxyHeader("untrusted")
			c.pl.s.log.Warn().Str("event", EventProxyProtocol).Str("source", c.Conn.RemoteAddr().String()).Str("result", "untrusted").
				Msg("PROXY header from an address not in proxy_protocol.trusted_networks; closing")
			c.Conn.Close()
			return 0, errors.New("gomux: PROXY header from an untrusted address")
		}
	}
	return c.br.Read(p)
}
