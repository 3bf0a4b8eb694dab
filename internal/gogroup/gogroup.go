// Package gogroup is the one way gomux and its agent own a goroutine: a
// Group starts goroutines, refuses new ones once closed, and waits for
// every one it started, so an owner's shutdown never depends on the order
// of its steps.
package gogroup

import "sync"

// Group owns a set of goroutines: it starts them, refuses to start more
// once closed, and Wait returns when every one it started has returned.
// It is the one way gomux owns a goroutine, so a shutdown can wait for
// everything it started without depending on the order of its steps: a
// Go racing Close either starts before Close returns (and Wait waits for
// it) or is refused, never added to a wait already under way. Unlike
// sync.WaitGroup, Go and Wait may be called in any order from any
// goroutine. The zero value is ready to use; a Group must not be copied.
type Group struct {
	mu     sync.Mutex
	closed bool
	n      int           // goroutines running
	idle   chan struct{} // closed when n drops to 0; nil while no one waits
}

// Go runs fn in a new goroutine owned by g and reports true, or reports
// false and does nothing once g is closed: the caller then undoes what it
// prepared for fn, as for any other refused start.
func (g *Group) Go(fn func()) bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	g.n++
	g.mu.Unlock()
	go func() {
		defer g.done()
		fn()
	}()
	return true
}

func (g *Group) done() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// Close refuses every later Go. Goroutines already started keep running;
// Close may be called more than once.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// Wait returns once no goroutine of g is running. After Close, that means
// every goroutine g ever started has returned.
func (g *Group) Wait() {
	g.mu.Lock()
	if g.n == 0 {
		g.mu.Unlock()
		return
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	ch := g.idle
	g.mu.Unlock()
	<-ch
}

// CloseWait closes g and waits for every goroutine it started: the end of
// an owner's life.
func (g *Group) CloseWait() {
	g.Close()
	g.Wait()
}
