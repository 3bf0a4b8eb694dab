package agent

import (
	"context"
	"errors"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// dyingAgent is a target whose agent starts, takes the handshake's
// request, and dies before it answers: what a crashing or killed agent
// binary does. It returns the client's side of the pipes.
func dyingAgent(t *testing.T) (io.Reader, io.WriteCloser) {
	t.Helper()
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := io.WriteString(s2cW, Banner+" "+strconv.Itoa(ProtocolVersion)+"\n"); err != nil {
			return
		}
		s, err := yamux.Server(rwc{Reader: c2sR, Writer: s2cW, close: func() error { c2sR.Close(); return s2cW.Close() }}, YamuxConfig())
		if err != nil {
			return
		}
		defer s.Close()
		st, err := s.AcceptStream()
		if err != nil {
			return
		}
		readFrame(st) // the hello request; then the agent is gone
	})
	t.Cleanup(func() {
		c2sR.Close()
		s2cW.Close()
		wg.Wait()
	})
	return s2cR, c2sW
}

// TestHandshakeFailureReadsOnce is the message a user sees when the
// agent dies during the handshake: each layer of the package adds its
// own words once, "agent:" included.
func TestHandshakeFailureReadsOnce(t *testing.T) {
	r, w := dyingAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, r, w)
	if err == nil {
		c.Close()
		t.Fatal("NewClient succeeded against an agent that died")
	}
	// The agent reads the hello and goes: the client sees either the
	// missing reply or, when the close overtakes its own write, the
	// session gone under the send. Both read once per layer.
	wants := map[string]error{
		"agent: handshake: connection closed before the agent replied: EOF": io.EOF,
		"agent: handshake: send hello: session shutdown":                    yamux.ErrSessionShutdown,
	}
	cause, ok := wants[err.Error()]
	if !ok {
		t.Fatalf("error reads %q\nwant one of %q", err, slices.Collect(maps.Keys(wants)))
	}
	if !errors.Is(err, cause) {
		t.Fatalf("error %v does not wrap %v", err, cause)
	}
}

// TestWrappedErrorsNamePackageOnce checks the chains that put one error
// of the package inside another: the text names "agent:" once and
// errors.Is still finds every sentinel.
func TestWrappedErrorsNamePackageOnce(t *testing.T) {
	for _, tc := range []struct {
		err   error
		want  string
		kinds []error
	}{
		{
			err:   wrapKind(ErrNotStarted, asReplyTimeout(yamux.ErrTimeout, time.Second)),
			want:  "agent: process not started: no reply in time (1s)",
			kinds: []error{ErrNotStarted, ErrReplyTimeout},
		},
		{
			err:   wrapKind(ErrSessionLost, ErrFrameTooLarge),
			want:  "agent: session lost before the process exited: frame too large",
			kinds: []error{ErrSessionLost, ErrFrameTooLarge},
		},
		{
			err:   wrap("handshake", wrapKind(ErrNotSent, io.ErrClosedPipe)),
			want:  "agent: handshake: session ended before the request was sent: io: read/write on closed pipe",
			kinds: []error{ErrNotSent, io.ErrClosedPipe},
		},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("error reads %q, want %q", got, tc.want)
		}
		if n := strings.Count(tc.err.Error(), errPrefix); n != 1 {
			t.Errorf("%q names the package %d times", tc.err, n)
		}
		for _, k := range tc.kinds {
			if !errors.Is(tc.err, k) {
				t.Errorf("%q does not match %v", tc.err, k)
			}
		}
	}
}
