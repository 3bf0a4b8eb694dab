package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
)

// TestPoolKeepaliveClosesSilentUpstream: an upstream that answers its
// keepalives stays up across many intervals, and one whose path goes
// silent (a black hole: bytes vanish, nothing is closed) is closed after
// KeepaliveCountMax unanswered intervals, taking its agent session with
// it, as a lease sees on Dead.
func TestPoolKeepaliveClosesSilentUpstream(t *testing.T) {
	addr, hostKey := startUpstreamHelper(t)
	relay := startBlackHoleRelay(t, addr)
	cfg := benchPoolConfig(t, t.TempDir(), relay.addr, hostKey)
	cfg.Upstream.KeepaliveInterval = 100 * time.Millisecond
	cfg.Upstream.KeepaliveCountMax = 2
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := pool.Acquire(ctx, Target{Host: relay.addr, Dial: relay.addr, User: "ka"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	st, err := l.Agent(ctx)
	if err != nil || st.Mode != ModeAgent {
		t.Fatalf("agent: %+v %v", st, err)
	}
	a := st.Agent
	// Ten intervals, every keepalive answered: the connection stays.
	select {
	case <-l.Dead():
		t.Fatal("an upstream answering its keepalives was closed")
	case <-time.After(time.Second):
	}
	if _, err := a.Stat(ctx, "/"); err != nil {
		t.Fatalf("agent after keepalives: %v", err)
	}
	relay.blackHole.Store(true)
	select {
	case <-l.Dead():
	case <-time.After(20 * time.Second):
		t.Fatal("an upstream that stopped answering keepalives was not closed")
	}
	select {
	case <-a.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the agent session outlived its connection")
	}
	if n := pool.Len(); n != 0 {
		t.Errorf("pool still lists %d connections", n)
	}
}

// blackHoleRelay forwards TCP connections to a target until blackHole is
// set; from then on it reads and drops what either side sends.
type blackHoleRelay struct {
	addr      string
	blackHole atomic.Bool
}

func startBlackHoleRelay(t *testing.T, target string) *blackHoleRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &blackHoleRelay{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Go(func() { r.pipe(u, c) })
			wg.Go(func() { r.pipe(c, u) })
		}
	})
	return r
}

// pipe copies src to dst, or drops it once the relay is a black hole.
func (r *blackHoleRelay) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !r.blackHole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestPoolRefusesWhatTargetsSendUnasked: a target that opens a channel
// to gomux (a forwarding gomux never asked for) is refused with "unknown
// channel type", and its global requests are answered "no", as OpenSSH's
// client does; the connection stays usable.
func TestPoolRefusesWhatTargetsSendUnasked(t *testing.T) {
	scfg, signer, ln := newTestSSHServer(t)
	defer ln.Close()
	type outcome struct {
		openErr error
		reqOK   bool
		reqErr  error
	}
	got := make(chan outcome, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			got <- outcome{openErr: err}
			return
		}
		defer c.Close()
		sc, chans, reqs, err := gossh.NewServerConn(c, scfg)
		if err != nil {
			got <- outcome{openErr: err}
			return
		}
		defer sc.Close()
		go gossh.DiscardRequests(reqs)
		var o outcome
		_, _, o.openErr = sc.OpenChannel("forwarded-tcpip", nil)
		o.reqOK, _, o.reqErr = sc.SendRequest("unasked@example.com", true, nil)
		got <- o
		for nc := range chans {
			nc.Reject(gossh.Prohibited, "test server")
		}
	})
	addr := ln.Addr().String()
	cfg := benchPoolConfig(t, t.TempDir(), addr, signer.PublicKey())
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: "unasked"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	var o outcome
	select {
	case o = <-got:
	case <-ctx.Done():
		t.Fatal("the target's channel open or request was never answered")
	}
	var oce *gossh.OpenChannelError
	if !errors.As(o.openErr, &oce) || oce.Reason != gossh.UnknownChannelType {
		t.Errorf("channel open from the target: %v, want refused as unknown channel type", o.openErr)
	}
	if o.reqErr != nil || o.reqOK {
		t.Errorf("global request from the target: ok=%v err=%v, want a refusal", o.reqOK, o.reqErr)
	}
	// Still usable: a channel gomux opens gets the server's own answer.
	_, _, err = l.Client().OpenChannel("session", nil)
	if !errors.As(err, &oce) || oce.Reason != gossh.Prohibited {
		t.Errorf("channel open after the refusals: %v, want the test server's refusal", err)
	}
	select {
	case <-l.Dead():
		t.Error("the connection ended")
	default:
	}
}
