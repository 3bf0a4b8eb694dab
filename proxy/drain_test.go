package proxy

import (
	"sync/atomic"
	"testing"
	"time"
)

// TestDrainClosesIdleNowAndBusyAtTheirLastChannel covers the drainer's
// rules: an idle connection that was used closes at once, a busy one when
// its last channel ends, a fresh one after its first channel, and once a
// connection is closing no new channel may start on it.
func TestDrainClosesIdleNowAndBusyAtTheirLastChannel(t *testing.T) {
	var d drainer
	var idleClosed, busyClosed, freshClosed atomic.Int32
	idle := d.track(func() { idleClosed.Add(1) })
	busy := d.track(func() { busyClosed.Add(1) })
	if !idle.begin() || !busy.begin() {
		t.Fatal("begin refused before any drain")
	}
	idle.end()
	d.drain()
	if idleClosed.Load() != 1 || busyClosed.Load() != 0 {
		t.Fatalf("after drain: idle closed %d, busy closed %d", idleClosed.Load(), busyClosed.Load())
	}
	if idle.begin() {
		t.Fatal("a channel started on a connection the drain closed")
	}
	if !busy.begin() {
		t.Fatal("a busy connection refused a second channel before its last ended")
	}
	busy.end()
	busy.end()
	if busyClosed.Load() != 1 {
		t.Fatalf("busy connection closed %d times after its last channel", busyClosed.Load())
	}
	fresh := d.track(func() { freshClosed.Add(1) })
	if freshClosed.Load() != 0 || !fresh.begin() {
		t.Fatal("a connection accepted during the drain was closed before its first channel")
	}
	fresh.end()
	if freshClosed.Load() != 1 {
		t.Fatal("a connection accepted during the drain stayed open after its channel")
	}
}

// TestDrainClosesSideBySide: closing one idle connection may take a
// round trip (the shim's flush); the others do not wait for it.
func TestDrainClosesSideBySide(t *testing.T) {
	var d drainer
	release := make(chan struct{})
	var closed atomic.Int32
	for range 3 {
		a := d.track(func() {
			closed.Add(1)
			<-release
		})
		a.begin()
		a.end()
	}
	done := make(chan struct{})
	go func() {
		d.drain()
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for closed.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if closed.Load() != 3 {
		t.Fatalf("%d of 3 closes started while the first was blocked", closed.Load())
	}
	close(release)
	<-done
}
