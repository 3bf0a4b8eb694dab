package agent

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// gatedReader stalls reads while the gate is shut, like a downstream that
// stops consuming (a slow SSH client, a full TCP window).
type gatedReader struct {
	r    io.Reader
	mu   sync.Mutex
	open chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	<-open
	return g.r.Read(p)
}

func (g *gatedReader) stall(d time.Duration) {
	g.mu.Lock()
	g.open = make(chan struct{})
	ch := g.open
	g.mu.Unlock()
	time.AfterFunc(d, func() { close(ch) })
}

// stallSession sends 4 MiB on one stream from a yamux server to a client
// whose side of the connection stops reading for stall halfway through,
// and reports the sender's first error.
func stallSession(t *testing.T, cfg *yamux.Config, stall time.Duration) error {
	t.Helper()
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe() // synchronous: a stalled reader stalls the sender
	open := make(chan struct{})
	close(open)
	gate := &gatedReader{r: s2cR, open: open}
	// Deferred first so it runs last: the sessions are closed before the
	// reader is waited for, whichever way the sender returns.
	var wg sync.WaitGroup
	defer wg.Wait()
	srv, err := yamux.Server(rwc{Reader: c2sR, Writer: s2cW, close: func() error { c2sR.Close(); return s2cW.Close() }}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := yamux.Client(rwc{Reader: gate, Writer: c2sW, close: func() error { s2cR.Close(); return c2sW.Close() }}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)
	got := make(chan []byte, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		st, err := cli.OpenStream()
		if err != nil {
			got <- nil
			return
		}
		defer st.Close()
		st.Write([]byte{1}) // make the stream known to the server
		b, _ := io.ReadAll(st)
		got <- b
	}()
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	io.ReadFull(st, one)
	half := len(data) / 2
	if _, err := st.Write(data[:half]); err != nil {
		return err
	}
	gate.stall(stall)
	if _, err := st.Write(data[half:]); err != nil {
		st.Close()
		return err
	}
	st.Close()
	if b := <-got; !bytes.Equal(b, data) {
		return errors.New("data corrupted or truncated")
	}
	if srv.IsClosed() || cli.IsClosed() {
		return errors.New("session closed")
	}
	return nil
}

// TestYamuxStalledReaderKeepsSession shows why YamuxConfig raises
// ConnectionWriteTimeout. Time is scaled down: a 150 ms timeout plays
// yamux's default 10 s, and the reader stalls for twice that. With the
// default-like timeout the write fails (and in the agent that kills the
// command); with the shipped config the stall is only back-pressure and
// every byte arrives.
func TestYamuxStalledReaderKeepsSession(t *testing.T) {
	const scaledDefault = 150 * time.Millisecond
	stall := 2 * scaledDefault

	short := YamuxConfig()
	short.ConnectionWriteTimeout = scaledDefault
	if err := stallSession(t, short, stall); !errors.Is(err, yamux.ErrConnectionWriteTimeout) {
		t.Fatalf("with the default-like timeout: err = %v, want ErrConnectionWriteTimeout (the test no longer reproduces the failure)", err)
	}

	shipped := YamuxConfig()
	if shipped.ConnectionWriteTimeout < 30*scaledDefault*time.Duration(1) && shipped.ConnectionWriteTimeout < 60*time.Second {
		t.Fatalf("shipped ConnectionWriteTimeout %v is not far above yamux's 10s default", shipped.ConnectionWriteTimeout)
	}
	if shipped.EnableKeepAlive || shipped.MaxStreamWindowSize != 4<<20 {
		t.Fatalf("config %+v", shipped)
	}
	start := time.Now()
	if err := stallSession(t, shipped, stall); err != nil {
		t.Fatalf("with the shipped config: %v", err)
	}
	if d := time.Since(start); d < stall {
		t.Fatalf("took %v: the stall did not happen", d)
	}
}
