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
}

// startRelay listens on addr inside namespace ns. The listening socket is
// created on a thread that entered the namespace and is then discarded,
// so no other goroutine ever runs in the namespace.
func startRelay(ns, addr, to string, rtt time.Duration) (*Relay, error) {
	type res struct {
		ln  net.Listener
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread, now in the namespace, exits with
		// this goroutine.
		f, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- res{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- res{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("relay in %s: %w", ns, r.err)
	}
	rl := &Relay{ln: r.ln, to: to, open: map[net.Conn]struct{}{}}
	rl.rtt.Store(int64(rtt))
	rl.wg.Add(1)
	go rl.serve()
	return rl, nil
}

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
	go func() { defer wg.Done(); r.delayCopy(up, c) }()
	go func() { defer wg.Done(); r.delayCopy(c, up) }()
	wg.Wait()
}

type chunk struct {
	due  time.Time
	data []byte
	eof  bool
}

// delayCopy copies src to dst, delivering each chunk RTT/2 after it was
// read, and passes EOF on as a half-close.
func (r *Relay) delayCopy(dst, src net.Conn) {
	q := make(chan chunk, 4096)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for c := range q {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
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
