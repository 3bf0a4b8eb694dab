package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
)

func proxyV2(cmd, fam byte, addrs []byte, tlv []byte) []byte {
	b := append([]byte{}, proxyproto.SIGV2...)
	b = append(b, 0x20|cmd, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)+len(tlv)))
	b = append(b, addrs...)
	return append(b, tlv...)
}

func v4Addrs(src, dst string, sp, dp uint16) []byte {
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	b := append(s[:], d[:]...)
	b = binary.BigEndian.AppendUint16(b, sp)
	return binary.BigEndian.AppendUint16(b, dp)
}

func TestParseProxyHeader(t *testing.T) {
	v6 := func() []byte {
		s, d := netip.MustParseAddr("2001:db8::1").As16(), netip.MustParseAddr("2001:db8::2").As16()
		b := append(s[:], d[:]...)
		return append(b, 0x1f, 0x90, 0, 22)
	}()
	for _, tc := range []headerCase{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.7 10.0.0.1 51234 2222\r\nSSH-2.0-x\r\n"), "192.0.2.7:51234", false, "", nil},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 8080 22\r\nSSH"), "[2001:db8::1]:8080", false, "", nil},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\nSSH"), "", true, "", nil},
		{"v1 family mismatch", []byte("PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"), "", false, "", proxyproto.ErrInvalidAddress},
		{"v1 bad port", []byte("PROXY TCP4 192.0.2.7 10.0.0.1 70000 22\r\n"), "", false, "", proxyproto.ErrInvalidPortNumber},
		{"v1 leading zero port", []byte("PROXY TCP4 192.0.2.7 10.0.0.1 022 22\r\n"), "", false, "", proxyproto.ErrInvalidPortNumber},
		{"v1 too long", []byte("PROXY TCP4 " + strings.Repeat("1", 120) + "\r\n"), "", false, "", proxyproto.ErrVersion1HeaderTooLong},
		{"v1 no crlf", []byte("PROXY TCP4 192.0.2.7 10.0.0.1 1 22\n"), "", false, "", proxyproto.ErrLineMustEndWithCrlf},
		{"v1 fields", []byte("PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n"), "", false, "", proxyproto.ErrCantReadAddressFamilyAndProtocol},
		{"v2 tcp4", append(proxyV2(1, 0x11, v4Addrs("198.51.100.9", "10.0.0.1", 40000, 2222), []byte{0x04, 0, 1, 0}), "SSH"...), "198.51.100.9:40000", false, "", nil},
		{"v2 tcp6", proxyV2(1, 0x21, v6, nil), "[2001:db8::1]:8080", false, "", nil},
		{"v2 local", proxyV2(0, 0, nil, nil), "", true, "", nil},
		{"v2 unspec", proxyV2(1, 0, nil, nil), "", true, "", nil},
		{"v2 udp", proxyV2(1, 0x12, v4Addrs("198.51.100.9", "10.0.0.1", 1, 2), nil), "", false, "not TCP", nil},
		{"v2 short", proxyV2(1, 0x11, []byte{1, 2, 3}, nil), "", false, "", proxyproto.ErrInvalidLength},
		{"v2 truncated", proxyV2(1, 0x11, v4Addrs("198.51.100.9", "10.0.0.1", 1, 2), nil)[:20], "", false, "EOF", nil},
		{"v2 version 1", append(append([]byte{}, proxyproto.SIGV2...), 0x11, 0x11, 0, 0), "", false, "", proxyproto.ErrUnsupportedProtocolVersionAndCommand},
		{"v2 huge", append(append([]byte{}, proxyproto.SIGV2...), 0x21, 0x11, 0xff, 0xff), "", false, "max", proxyproto.ErrInvalidLength},
		{"v2 local odd family", proxyV2(0, 0x13, []byte{1, 2, 3}, nil), "", true, "", nil},
		{"v2 unix", proxyV2(1, 0x31, make([]byte, 216), nil), "", false, "not TCP", nil},
		{"v1 not PROXY", []byte("PROXYjunk TCP4\r\n"), "", false, "no PROXY protocol header", nil},
		{"ssh", []byte("SSH-2.0-OpenSSH_9.2\r\n"), "", false, "no PROXY protocol header", nil},
		{"empty", nil, "", false, "EOF", nil},
	} {
		// Split: the header arrives one byte per read, as a balancer's
		// header split over segments would; gomux waits for the rest.
		for _, split := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s split %v", tc.name, split), func(t *testing.T) {
				var in io.Reader = bytes.NewReader(tc.in)
				if split {
					in = iotest.OneByteReader(in)
				}
				parseOne(t, bufio.NewReader(in), tc)
			})
		}
	}
}

// headerCase is one input to parseProxyHeader and what it must give.
type headerCase struct {
	name  string
	in    []byte
	src   string
	local bool
	err   string // part of the error gomux's wrapper writes
	is    error  // the library's error it wraps
}

func parseOne(t *testing.T, br *bufio.Reader, tc headerCase) {
	t.Helper()
	h, err := parseProxyHeader(br)
	if tc.err != "" || tc.is != nil {
		if err == nil || !strings.Contains(err.Error(), tc.err) || tc.is != nil && !errors.Is(err, tc.is) {
			t.Fatalf("err %v, want %q (%v)", err, tc.err, tc.is)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if h.Local != tc.local || (!tc.local && h.Src.String() != tc.src) {
		t.Fatalf("got %+v, want src %s local %v", h, tc.src, tc.local)
	}
	// Nothing after the header is consumed.
	rest, _ := io.ReadAll(br)
	if len(tc.in) > 0 && !bytes.HasSuffix(tc.in, rest) {
		t.Fatalf("rest %q", rest)
	}
	if strings.HasPrefix(tc.name, "v1 tcp4") && string(rest) != "SSH-2.0-x\r\n" {
		t.Fatalf("rest %q", rest)
	}
}

// FuzzParseProxyHeader: any bytes give a header or an error, never a
// panic, and never consume more than the header's own length.
func FuzzParseProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.0.2.7 10.0.0.1 51234 2222\r\nSSH-2.0-x\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(proxyV2(1, 0x11, v4Addrs("198.51.100.9", "10.0.0.1", 40000, 2222), nil))
	f.Add(proxyV2(0, 0, nil, nil))
	f.Add([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		br := bufio.NewReader(r)
		h, err := parseProxyHeader(br)
		consumed := len(b) - r.Len() - br.Buffered()
		if err == nil {
			if consumed > 107 && consumed > 16+maxProxyV2Len {
				t.Fatalf("consumed %d bytes", consumed)
			}
			if !h.Local && !h.Src.IsValid() {
				t.Fatalf("no source in %+v", h)
			}
		}
		if consumed > 16+maxProxyV2Len {
			t.Fatalf("read %d bytes of header", consumed)
		}
	})
}

// TestProxyListener: a trusted balancer's header sets RemoteAddr; a
// trusted connection without one is closed; an untrusted connection is
// served as it is, and closed if it sends a header.
func TestProxyListener(t *testing.T) {
	var logBuf lockedBuffer
	t.Setenv("HOME", t.TempDir())
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ProxyProtocol.TrustedNetworks = []string{"127.0.0.1/32"}
	cfg.LiveConfig.Limits.LoginGraceTime = Duration(2 * time.Second)
	s := proxyTestServer(cfg, zerolog.New(&logBuf))
	listen := func(s *Server) (net.Listener, func(string) net.Conn) {
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln := s.withProxyProtocol(inner)
		t.Cleanup(func() { ln.Close() })
		return ln, func(send string) net.Conn {
			c, err := net.Dial("tcp", inner.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if send != "" {
				c.Write([]byte(send))
			}
			return c
		}
	}
	ln, dial := listen(s)
	dial("PROXY TCP4 203.0.113.5 10.0.0.1 40001 2222\r\nSSH-2.0-x\r\n")
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if got := sc.RemoteAddr().String(); got != "203.0.113.5:40001" {
		t.Fatalf("RemoteAddr %s", got)
	}
	if _, ok := sc.RemoteAddr().(*net.TCPAddr); !ok {
		t.Fatalf("RemoteAddr is %T, want *net.TCPAddr for source-address checks", sc.RemoteAddr())
	}
	line, _ := bufio.NewReader(sc).ReadString('\n')
	if line != "SSH-2.0-x\r\n" {
		t.Fatalf("stream after header %q", line)
	}
	sc.Close()

	// Trusted, no header: closed, never accepted.
	c2 := dial("SSH-2.0-x\r\n")
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatalf("trusted connection without a header was served")
	}
	if !strings.Contains(logBuf.String(), `"result":"missing"`) {
		t.Fatalf("no log line for the missing header: %s", logBuf.String())
	}

	// Untrusted: served with its own address; a header there is refused.
	cfg2 := *cfg
	cfg2.ProxyProtocol.TrustedNetworks = []string{"10.0.0.0/8"}
	s2 := proxyTestServer(&cfg2, zerolog.New(&logBuf))
	ln, dial = listen(s2)
	dial("PROXY TCP4 203.0.113.5 10.0.0.1 40001 2222\r\n")
	sc3, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(sc3.RemoteAddr().String(), "203.0.113.5") {
		t.Fatalf("untrusted header believed")
	}
	if _, err := sc3.Read(make([]byte, 10)); err == nil || !strings.Contains(err.Error(), "untrusted") {
		t.Fatalf("untrusted header read: %v", err)
	}
	dial("SSH-2.0-y\r\n")
	sc4, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	line, _ = bufio.NewReader(sc4).ReadString('\n')
	if line != "SSH-2.0-y\r\n" || !strings.HasPrefix(sc4.RemoteAddr().String(), "127.0.0.1:") {
		t.Fatalf("untrusted plain connection: %q from %s", line, sc4.RemoteAddr())
	}
	sc4.Close()
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

// TestProxyListenerCloseDoesNotWaitForSilentBalancers: a balancer
// connection that never sends its header does not hold up Close (and so
// a drain) for the login grace time.
func TestProxyListenerCloseDoesNotWaitForSilentBalancers(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ProxyProtocol.TrustedNetworks = []string{"127.0.0.0/8"}
	cfg.LiveConfig.Limits.LoginGraceTime = Duration(time.Hour)
	s := proxyTestServer(cfg, zerolog.Nop())
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := s.withProxyProtocol(inner)
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Wait until the header reader holds the connection.
	pl := ln.(*proxyListener)
	for i := 0; ; i++ {
		pl.mu.Lock()
		n := len(pl.pending)
		pl.mu.Unlock()
		if n == 1 {
			break
		}
		if i > 1000 {
			t.Fatal("connection never pending")
		}
		time.Sleep(5 * time.Millisecond)
	}
	closed := make(chan struct{})
	go func() {
		ln.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close waited for a silent balancer connection")
	}
}

// TestTrustedNetworksRefusedWhereAPersonCouldForge: a trusted network
// that a rule lets people reach, or that holds gomux's own address (so
// a connection gomux makes arrives from it), would let a person send a
// PROXY header of their choosing. Loopback stays allowed: no rule reaches
// it unless its cidrs name it, which the first check refuses.
func TestTrustedNetworksRefusedWhereAPersonCouldForge(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("10.9.0.5")}
	rules := []TargetRule{
		{CIDRs: []string{"10.50.0.0/16"}, Mode: ModeDeny},
		{Hosts: []string{"*.lab"}, CIDRs: []string{"10.20.0.0/16"}, Mode: ModeAccelerate},
		{CIDRs: []string{"192.0.2.0/24"}, Mode: ModeSplice},
		{CIDRs: []string{"127.0.0.1/32", "10.60.0.0/16"}, Ports: []int{5432}, Mode: ModeForward},
	}
	for _, tc := range []struct {
		trusted []string
		listen  string
		want    string // "" allowed, else part of the error
	}{
		{[]string{"10.30.0.0/24"}, "0.0.0.0:2222", ""},
		{[]string{"127.0.0.1/32"}, "127.0.0.1:2222", ""},
		{[]string{"::1"}, "[::1]:2222", ""},
		{[]string{"10.50.0.0/24"}, "0.0.0.0:2222", ""}, // only a deny rule names it
		{[]string{"10.60.0.0/24"}, "0.0.0.0:2222", ""}, // a forward rule's, dialled from a target
		{[]string{"10.20.3.0/24"}, "0.0.0.0:2222", "targets[1].cidrs"},
		{[]string{"10.0.0.0/8"}, "0.0.0.0:2222", "targets[1].cidrs"},
		{[]string{"10.30.0.0/24", "192.0.2.7"}, "0.0.0.0:2222", "trusted_networks[1]"},
		{[]string{"10.9.0.0/24"}, "0.0.0.0:2222", "gomux's own address 10.9.0.5"},
		{[]string{"198.51.100.0/24"}, "198.51.100.4:2222", "listen address 198.51.100.4"},
	} {
		var nets []netip.Prefix
		for _, n := range tc.trusted {
			p, _ := parseCIDR(n)
			nets = append(nets, p)
		}
		err := checkTrustedNetworks(nets, rules, tc.listen, own)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("trusted %v listen %s: %v, want %q", tc.trusted, tc.listen, err, tc.want)
		}
	}
	// Through LoadConfig: the file is refused naming the field.
	t.Setenv("HOME", t.TempDir())
	_, err := LoadConfig(writeConfig(t, "proxy_protocol:\n  trusted_networks: [10.20.0.0/24]\ntargets:\n  - cidrs: [10.20.0.0/16]\n    remote_users: [deploy]\n"))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "proxy_protocol.trusted_networks[0]" {
		t.Errorf("overlapping trusted network loaded: %v", err)
	}
	if _, err := LoadConfig(writeConfig(t, "proxy_protocol:\n  trusted_networks: [127.0.0.1/32]\ntargets:\n  - hosts: ['*']\n    remote_users: [deploy]\n")); err != nil {
		t.Errorf("loopback balancer refused: %v", err)
	}
	// This machine's own non-loopback address, as the interfaces list it.
	addrs, err := ownAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IsLoopback() || a.IsLinkLocalUnicast() {
			continue
		}
		_, err := LoadConfig(writeConfig(t, "proxy_protocol:\n  trusted_networks: ['"+a.String()+"']\ntargets:\n  - hosts: [web]\n    remote_users: [deploy]\n"))
		if err == nil || !strings.Contains(err.Error(), "own address") {
			t.Errorf("trusted network holding this machine's %s: %v", a, err)
		}
		break
	}
}

// TestProxyHeaderWaitCountsAsStartup: a balancer connection waiting for
// its PROXY header holds a max_startups slot (and one of the balancer
// address's per-source slots) until the header is read, so silent
// connections from a trusted address cannot pile up beyond the limits;
// the wait has its own short timeout, whatever login_grace_time is.
func TestProxyHeaderWaitCountsAsStartup(t *testing.T) {
	for _, lim := range []struct {
		name        string
		maxStartups string
		perSource   int
		want        string
	}{
		{"max_startups", "1", 100, "max_startups"},
		{"per_source_max_startups", "100:30:1000", 1, "per_source_max_startups"},
	} {
		t.Run(lim.name, func(t *testing.T) {
			var logBuf lockedBuffer
			t.Setenv("HOME", t.TempDir())
			cfg, err := LoadConfig("")
			if err != nil {
				t.Fatal(err)
			}
			cfg.ProxyProtocol.TrustedNetworks = []string{"127.0.0.1/32"}
			cfg.LiveConfig.Limits.LoginGraceTime = Duration(time.Hour)
			cfg.LiveConfig.Limits.MaxStartups, cfg.LiveConfig.Limits.PerSourceMaxStartups = lim.maxStartups, lim.perSource
			s := proxyTestServer(cfg, zerolog.New(&logBuf))
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := s.withProxyProtocol(inner)
			t.Cleanup(func() { ln.Close() })
			dial := func(send string) net.Conn {
				c, err := net.Dial("tcp", inner.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				c.Write([]byte(send))
				return c
			}
			silent := dial("")
			waitPending(t, ln.(*proxyListener), 1)
			// The slot is taken: a second balancer connection is dropped
			// with the limit's message, never accepted.
			c2 := dial("PROXY TCP4 203.0.113.5 10.0.0.1 40001 2222\r\nSSH-2.0-x\r\n")
			c2.SetReadDeadline(time.Now().Add(30 * time.Second))
			msg, _ := io.ReadAll(c2)
			if !strings.Contains(string(msg), lim.want) {
				t.Errorf("second connection while one waits for its header: read %q, want the %s refusal", msg, lim.want)
			}
			// Once the silent one is gone its slot is free again.
			silent.Close()
			waitPending(t, ln.(*proxyListener), 0)
			dial("PROXY TCP4 203.0.113.6 10.0.0.1 40002 2222\r\nSSH-2.0-x\r\n")
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			if got := sc.RemoteAddr().String(); got != "203.0.113.6:40002" {
				t.Errorf("after the slot was freed: %s", got)
			}
			sc.Close()
		})
	}
}

// TestProxyHeaderTimeout: a trusted connection that sends no header is
// closed after the header timeout, not the (long) login grace time.
func TestProxyHeaderTimeout(t *testing.T) {
	var logBuf lockedBuffer
	t.Setenv("HOME", t.TempDir())
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ProxyProtocol.TrustedNetworks = []string{"127.0.0.1/32"}
	cfg.LiveConfig.Limits.LoginGraceTime = Duration(time.Hour)
	s := proxyTestServer(cfg, zerolog.New(&logBuf))
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nets, _ := cfg.ProxyProtocol.networks()
	ln := newProxyListener(s, inner, nets, 50*time.Millisecond)
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("silent balancer connection: %v, want it closed by gomux", err)
	}
	if !strings.Contains(logBuf.String(), "timeout") {
		t.Errorf("no log line saying the header timed out: %s", logBuf.String())
	}
	if defaultProxyHeaderTimeout < time.Second || defaultProxyHeaderTimeout > 10*time.Second {
		t.Errorf("default header timeout %v is not a few seconds", defaultProxyHeaderTimeout)
	}
}

// waitPending waits until n connections are waiting for their header.
func waitPending(t *testing.T, pl *proxyListener, n int) {
	t.Helper()
	for i := 0; ; i++ {
		pl.mu.Lock()
		got := len(pl.pending)
		pl.mu.Unlock()
		if got == n {
			return
		}
		if i > 2000 {
			t.Fatalf("%d connections pending, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// proxyTestServer is the part of a Server the PROXY protocol listener
// uses: the live config, its limits, metrics and log.
func proxyTestServer(cfg *Config, log zerolog.Logger) *Server {
	s := &Server{start: cfg.StartConfig, log: log, metrics: newMetrics(), limits: newLimiter(cfg.LiveConfig.Limits)}
	s.rt.Store(&liveConfig{cfg: &cfg.LiveConfig})
	return s
}
