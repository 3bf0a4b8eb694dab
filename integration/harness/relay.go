package harness

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Relay forwards TCP connections to a target's sshd, holding every chunk
// half the round-trip time in each direction. A queue per direction keeps
// throughput independent of the delay, as on a real long link.
type Relay struct {
	ln   net.Listener
	to   string
	rtt  atomic.Int64
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
	// sent and received count bytes towards and from the far side.
	sent, received atomic.Int64
	// hole, when set, swallows all traffic (SetBlackHole).
	hole atomic.Bool
}

type listenResult struct {
	ln  net.Listener
	err error
}

// startRelay listens on addr inside namespace ns (the root namespace when
// ns is empty) and forwards to to.
func startRelay(ns, addr, to string, rtt time.Duration) (*Relay, error) {
	ch := make(chan listenResult, 1)
	if ns == "" {
		ln, err := net.Listen("tcp", addr)
		ch <- listenResult{ln, err}
	} else {
		go listenInNamespace(ns, addr, ch)
	}
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("relay in %q: %w", ns, r.err)
	}
	rl := &Relay{ln: r.ln, to: to, open: map[net.Conn]struct{}{}}
	rl.rtt.Store(int64(rtt))
	rl.wg.Add(1)
	go rl.serve()
	return rl, nil
}

// listenInNamespace creates the listening socket on a thread that entered
// namespace ns and is then discarded, so no other goroutine ever runs in
// the namespace.
func listenInNamespace(ns, addr string, ch chan<- listenResult) {
	runtime.LockOSThread()
	// No UnlockOSThread: the thread, now in the namespace, exits with
	// this goroutine.
	f, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		ch <- listenResult{err: err}
		return
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		ch <- listenResult{err: fmt.Errorf("setns %s: %w", ns, err)}
		return
	}
	ln, err := net.Listen("tcp", addr)
	ch <- listenResult{ln, err}
}

// StartRelay runs a relay in the root namespace on addr (host:0 picks a
// port) to the address to: a benchmark puts one in front of gomux to place
// it far from the controller.
func StartRelay(addr, to string, rtt time.Duration) (*Relay, error) {
	return startRelay("", addr, to, rtt)
}

// Addr is where the relay listens.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Bytes reports what crossed the relay so far: sent towards the far side
// (a target's sshd) and received from it.
func (r *Relay) Bytes() (sent, received int64) { return r.sent.Load(), r.received.Load() }

// SetRTT changes the added round-trip time for data sent from now on.
func (r *Relay) SetRTT(d time.Duration) { r.rtt.Store(int64(d)) }

// Conns is the number of client connections being relayed.
func (r *Relay) Conns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.open) / 2
}

// CloseAll drops every relayed connection abruptly (RST), as a network
// failure would.
func (r *Relay) CloseAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.open {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

// Close stops listening, drops every connection and waits for the relay's
// goroutines.
func (r *Relay) Close() {
	r.ln.Close()
	r.CloseAll()
	r.wg.Wait()
}

func (r *Relay) track(c net.Conn, add bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if add {
		r.open[c] = struct{}{}
	} else {
		delete(r.open, c)
	}
}

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.relay(c)
		}()
	}
}

func (r *Relay) relay(c net.Conn) {
	defer c.Close()
	if r.hole.Load() {
		// Accepted, and then nothing: the far side never hears of it.
		r.track(c, true)
		defer r.track(c, false)
		io.Copy(io.Discard, c)
		return
	}
	up, err := net.DialTimeout("tcp", r.to, 10*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	r.track(c, true)
	r.track(up, true)
	defer r.track(c, false)
	defer r.track(up, false)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.delayCopy(up, c, &r.sent) }()
	go func() { defer wg.Done(); r.delayCopy(c, up, &r.received) }()
	wg.Wait()
}

type chunk struct {
	due  time.Time
	data []byte
	eof  bool
}

// delayCopy copies src to dst, delivering each chunk RTT/2 after it was
// read, and passes EOF on as a half-close.
func (r *Relay) delayCopy(dst, src net.Conn, count *atomic.Int64) {
	q := make(chan chunk, 4096)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			if r.hole.Load() {
				continue
			}
			if c.eof {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				continue
			}
			if _, err := dst.Write(c.data); err != nil {
				src.Close()
				dst.Close()
				for range q {
				}
				return
			}
		}
	}()
	for {
		buf := make([]byte, 64<<10)
		n, err := src.Read(buf)
		if n > 0 {
			count.Add(int64(n))
			q <- chunk{due: time.Now().Add(time.Duration(r.rtt.Load()) / 2), data: buf[:n]}
		}
		if err != nil {
			if err == io.EOF {
				q <- chunk{due: time.Now().Add(time.Duration(r.rtt.Load()) / 2), eof: true}
			} else {
				dst.Close()
			}
			break
		}
	}
	close(q)
	wg.Wait()
}
