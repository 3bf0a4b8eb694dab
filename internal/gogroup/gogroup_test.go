package gogroup

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestGroupWaitsForItsGoroutines(t *testing.T) {
	var g Group
	release := make(chan struct{})
	var finished atomic.Int32
	for i := 0; i < 3; i++ {
		if !g.Go(func() {
			<-release
			finished.Add(1)
		}) {
			t.Fatal("open group refused a goroutine")
		}
	}
	waited := make(chan struct{})
	go func() {
		g.CloseWait()
		close(waited)
	}()
	select {
	case <-waited:
		t.Fatal("Wait returned while goroutines were blocked")
	default:
	}
	close(release)
	<-waited
	if n := finished.Load(); n != 3 {
		t.Fatalf("Wait returned with %d of 3 goroutines finished", n)
	}
}

func TestGroupRefusesAfterClose(t *testing.T) {
	var g Group
	g.Close()
	ran := false
	if g.Go(func() { ran = true }) {
		t.Fatal("closed group started a goroutine")
	}
	g.Wait()
	if ran {
		t.Fatal("refused fn ran")
	}
	g.Close() // twice is fine
	g.Wait()  // nothing running: returns at once
}

// TestGroupGoRacesClose starts goroutines from many callers while
// another closes the group and waits: every start that was accepted must
// have finished when CloseWait returns, and none may be accepted after.
// Run with -race: a sync.WaitGroup used this way (Add racing Wait) is
// what this type replaces.
func TestGroupGoRacesClose(t *testing.T) {
	for round := 0; round < 50; round++ {
		var g Group
		var accepted, finished atomic.Int32
		var callers sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < 8; i++ {
			callers.Add(1)
			go func() {
				defer callers.Done()
				<-start
				for j := 0; j < 20; j++ {
					if g.Go(func() { finished.Add(1) }) {
						accepted.Add(1)
					}
				}
			}()
		}
		// Waits before Close, concurrent with Go, must be safe too.
		waiters := make(chan struct{})
		go func() {
			g.Wait()
			close(waiters)
		}()
		close(start)
		g.CloseWait()
		atClose := finished.Load()
		callers.Wait()
		<-waiters
		if a := accepted.Load(); a != atClose {
			t.Fatalf("round %d: %d goroutines accepted, %d finished when CloseWait returned", round, a, atClose)
		}
		if g.Go(func() {}) {
			t.Fatal("group accepted a goroutine after CloseWait")
		}
	}
}
