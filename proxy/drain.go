package proxy

import (
	"sync"

	"github.com/gomux/gomux/internal/gogroup"
)

// drainer lets a SIGTERM end each connection at the first moment nothing
// runs on it, instead of waiting for clients to leave. A ControlMaster
// keeps its connection open for as long as ControlPersist says, so
// waiting for clients would always run into the drain timeout and cut
// tasks in flight; closing a connection right after its last channel
// ended lets the task finish and makes the client's next ssh connect
// afresh, to whichever gomux now listens.
type drainer struct {
	mu       sync.Mutex
	draining bool
	conns    map[*activity]struct{}
}

// activity counts what runs on one connection: sessions and forwards.
type activity struct {
	d     *drainer
	close func()

	mu       sync.Mutex
	running  int
	used     bool // a channel has run: a connection born draining waits for one
	draining bool
	closed   bool
}

// track registers a connection; close ends it. A connection that starts
// while gomux drains is closed once its first channel has ended.
func (d *drainer) track(close func()) *activity {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conns == nil {
		d.conns = map[*activity]struct{}{}
	}
	a := &activity{d: d, close: close, draining: d.draining}
	d.conns[a] = struct{}{}
	return a
}

// untrack forgets a connection that has ended.
func (d *drainer) untrack(a *activity) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.conns, a)
}

// drain closes every idle connection now and every busy one when its
// last channel ends. Closing an inner session first writes what the shim
// held for it to the target, which takes a round trip or more, so idle
// connections are closed side by side and drain returns when all are.
func (d *drainer) drain() {
	d.mu.Lock()
	d.draining = true
	conns := make([]*activity, 0, len(d.conns))
	for a := range d.conns {
		conns = append(conns, a)
	}
	d.mu.Unlock()
	var g gogroup.Group
	for _, a := range conns {
		g.Go(a.drain)
	}
	g.CloseWait()
}

// begin marks a channel as running. It reports false once the connection
// is being closed: the caller refuses the channel, since whatever it did
// would be cut off (and, on an inner session, its shim state would be
// lost after the flush).
func (a *activity) begin() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false
	}
	a.running++
	a.used = true
	return true
}

// end marks a channel as finished, closing a draining connection that
// has nothing left to run.
func (a *activity) end() {
	a.mu.Lock()
	a.running--
	idle := a.draining && a.running == 0 && !a.closed
	if idle {
		a.closed = true
	}
	a.mu.Unlock()
	if idle {
		a.close()
	}
}

func (a *activity) drain() {
	a.mu.Lock()
	a.draining = true
	idle := a.running == 0 && a.used && !a.closed
	if idle {
		a.closed = true
	}
	a.mu.Unlock()
	if idle {
		a.close()
	}
}

// len is the number of connections tracked (front and inner), for metrics.
func (d *drainer) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}
