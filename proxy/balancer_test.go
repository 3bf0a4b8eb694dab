package proxy

import (
	"bufio"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/gomux/gomux/proxy/admission"
)

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

// proxyTestServer is the part of a Server the PROXY protocol listener
// uses: the live config, its limits, metrics and log.
func proxyTestServer(cfg *Config, log zerolog.Logger) *Server {
	s := &Server{start: cfg.StartConfig, log: log, metrics: newMetrics(), limits: admission.NewLimiter(admissionLimits(cfg.LiveConfig.Limits))}
	s.rt.Store(&liveConfig{cfg: &cfg.LiveConfig})
	return s
}
