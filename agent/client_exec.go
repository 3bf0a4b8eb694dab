package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/yamux"
)

// Process is a running command on the target.
type Process struct {
	st     *yamux.Stream
	wmu    sync.Mutex
	stdout *io.PipeReader
	stderr *io.PipeReader
	stdin  *processStdin

	done   chan struct{}
	status ExitStatus
	err    error
}

// ErrSessionLost is returned by Wait when the process's fate is unknown:
// the stream or the agent went away before an exit was reported.
var ErrSessionLost = errors.New("agent: session lost before the process exited")

// Exec starts a process.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (*Process, error) {
	st, err := c.open(ctx, &request{Op: "exec", Exec: &req})
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.Close() })
	err = result(st, nil)
	stop()
	if err != nil {
		st.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	p := &Process{st: st, stdout: outR, stderr: errR, done: make(chan struct{})}
	p.stdin = &processStdin{p: p}
	go p.readLoop(outW, errW)
	return p, nil
}

// readLoop delivers output in order; writes to the pipes block until the
// caller reads, which is the back-pressure that keeps memory bounded.
func (p *Process) readLoop(outW, errW *io.PipeWriter) {
	defer close(p.done)
	fail := func(err error) {
		p.err = fmt.Errorf("%w: %v", ErrSessionLost, err)
		outW.CloseWithError(p.err)
		errW.CloseWithError(p.err)
		p.st.Close()
	}
	for {
		typ, b, err := readFrame(p.st)
		if err != nil {
			fail(err)
			return
		}
		switch typ {
		case frameStdout:
			if _, err := outW.Write(b); err != nil {
				fail(err)
				return
			}
		case frameStderr:
			if _, err := errW.Write(b); err != nil {
				fail(err)
				return
			}
		case frameStdoutEOF:
			outW.Close()
		case frameStderrEOF:
			errW.Close()
		case frameExit:
			outW.Close()
			errW.Close()
			if err := json.Unmarshal(b, &p.status); err != nil {
				fail(err)
				return
			}
			p.st.Close()
			return
		default:
			fail(fmt.Errorf("unexpected frame %d", typ))
			return
		}
	}
}

func (p *Process) send(typ byte, b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return writeFrame(p.st, typ, b)
}

// Stdin streams to the process; Close sends EOF.
func (p *Process) Stdin() io.WriteCloser { return p.stdin }

// Stdout is the process's standard output (with a pty, all its output).
func (p *Process) Stdout() io.Reader { return p.stdout }

// Stderr is the process's standard error; empty with a pty.
func (p *Process) Stderr() io.Reader { return p.stderr }

// Resize changes the pty's window size.
func (p *Process) Resize(cols, rows, widthPx, heightPx uint32) error {
	b, _ := json.Marshal(windowSize{Cols: cols, Rows: rows, WidthPx: widthPx, HeightPx: heightPx})
	return p.send(frameResize, b)
}

// Signal sends a signal by its SSH name ("TERM", "INT", ...) to the
// process group.
func (p *Process) Signal(name string) error { return p.send(frameSignal, []byte(name)) }

// Wait returns the exit status once it has arrived, or an error wrapping
// ErrSessionLost when it never will.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

// Close abandons the process: the agent kills its process group.
func (p *Process) Close() error {
	p.stdout.Close()
	p.stderr.Close()
	return p.st.Close()
}

type processStdin struct {
	p      *Process
	mu     sync.Mutex
	closed bool
}

func (s *processStdin) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), 32<<10)
		if err := s.p.send(frameStdin, b[:n]); err != nil {
			return written, err
		}
		written += n
		b = b[n:]
	}
	return written, nil
}

func (s *processStdin) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.p.send(frameStdinEOF, nil)
}
