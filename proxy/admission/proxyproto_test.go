package admission

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
	"sync"
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

// TestProxyListenerCloseDoesNotWaitForSilentBalancers: a balancer
// connection that never sends its header does not hold up Close (and so
// a drain) for the login grace time.
func TestProxyListenerCloseDoesNotWaitForSilentBalancers(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := testListener(inner, "127.0.0.0/8", defaultLimits(), 0, zerolog.Nop())
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Wait until the header reader holds the connection.
	pl := ln
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
			limits := defaultLimits()
			limits.MaxStartups, limits.PerSourceMaxStartups = lim.maxStartups, lim.perSource
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ln := testListener(inner, "127.0.0.1/32", limits, 0, zerolog.Nop())
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
			waitPending(t, ln, 1)
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
			waitPending(t, ln, 0)
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
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := testListener(inner, "127.0.0.1/32", defaultLimits(), 50*time.Millisecond, zerolog.New(&logBuf))
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
func waitPending(t *testing.T, pl *Listener, n int) {
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

// testListener is a Listener on inner that trusts the network trusted,
// as the front makes it with the login grace time an hour (so only the
// header timeout, default when 0, bounds the wait).
func testListener(inner net.Listener, trusted string, limits Limits, headerTimeout time.Duration, log zerolog.Logger) *Listener {
	return NewListener(inner, ListenerConfig{
		Trusted:       []netip.Prefix{netip.MustParsePrefix(trusted)},
		HeaderTimeout: headerTimeout,
		Grace:         func() time.Duration { return time.Hour },
		Limits:        NewLimiter(limits),
		Log:           log,
		Events:        Events{ProxyProtocol: "proxy_protocol", Limit: "limit"},
	})
}

// lockedBuffer is a log written by the listener's goroutines and read by
// the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
