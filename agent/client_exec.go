package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// Process is a running command on the target; its stream carries the
// command's stdio, window changes, signals and finally its exit status.
type Process struct {
	stmu   sync.Mutex
	st     *yamux.Stream // replaced once when a Start is resent
	closed bool
	wmu    sync.Mutex
	stdout *io.PipeReader
	stderr *io.PipeReader
	stdin  *processStdin
	// outW and errW feed stdout and stderr; only readLoop writes them.
	outW, errW *io.PipeWriter

	done   chan struct{}
	status ExitStatus
	err    error

	// started, when set, is the start the agent has not yet answered
	// (Start): readLoop reads that answer before any output.
	started *pendingStart
}

// pendingStart is what a Process started by Start still needs from the
// agent's answer: the deadline for it, and what to record once it is OK.
type pendingStart struct {
	timeout time.Duration
	onOK    func()
	// retry, when set, sends the batch again without references after
	// the agent missed a cached content.
	retry func() (*yamux.Stream, func(), error)
}

// ErrNotStarted is wrapped by Wait's error when a Process from Start never
// ran: the agent refused the batch (a *RemoteError is wrapped too) or did
// not answer in time. Nothing of the command ran; prep ops before the
// failed one did.
var ErrNotStarted = errors.New("agent: process not started")

// ErrSessionLost is wrapped by Wait's error when the process's fate is unknown:
// the stream or the agent went away before an exit was reported.
var ErrSessionLost = errors.New("agent: session lost before the process exited")

// Exec starts a process and returns once the agent has started it (or
// failed to: then the error is a *RemoteError). ctx bounds the start only.
// Read Stdout and Stderr concurrently, as with os/exec: output is
// delivered in order and a stream nobody reads holds the other back.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (*Process, error) {
	st, err := c.open(ctx, &request{Op: "exec", Exec: &req})
	if err != nil {
		return nil, err
	}
	if err := c.awaitResult(ctx, st, nil); err != nil {
		st.Close()
		return nil, err
	}
	return c.startProcess(st, &req), nil
}

// startProcess wires a started exec stream to pipes.
func (c *Client) startProcess(st *yamux.Stream, req *ExecRequest) *Process {
	p := c.newProcess(st, req)
	go p.readLoop(p.outW, p.errW)
	return p
}

// newProcess wires an exec stream to pipes; the caller starts readLoop.
func (c *Client) newProcess(st *yamux.Stream, req *ExecRequest) *Process {
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	if req.Pty != nil {
		errW.Close() // a terminal merges stderr into stdout, as sshd does
	}
	p := &Process{st: st, stdout: outR, stderr: errR, outW: outW, errW: errW, done: make(chan struct{})}
	p.stdin = &processStdin{p: p}
	return p
}

// readLoop delivers output in order; writes to the pipes block until the
// caller reads, which is the back-pressure that keeps memory bounded.
func (p *Process) readLoop(outW, errW *io.PipeWriter) {
	defer close(p.done)
	if ps := p.started; ps != nil {
		if err := p.awaitStart(ps); err != nil {
			// Output ends empty and Wait says why: the caller tells
			// its client as it would have had Batch failed.
			p.err = wrapKind(ErrNotStarted, err)
			outW.Close()
			errW.Close()
			p.stream().Close()
			return
		}
		ps.onOK()
	}
	st := p.stream()
	for {
		typ, b, err := readFrame(st)
		if err == nil {
			var done bool
			if done, err = p.deliver(typ, b, outW, errW); done {
				st.Close()
				return
			}
		}
		if err != nil {
			p.err = wrapKind(ErrSessionLost, err)
			outW.CloseWithError(p.err)
			errW.CloseWithError(p.err)
			st.Close()
			return
		}
	}
}

// deliver handles one frame of a running process: output to its pipe,
// an EOF, or the exit status, which ends the stream (done).
func (p *Process) deliver(typ byte, b []byte, outW, errW *io.PipeWriter) (done bool, err error) {
	switch typ {
	case frameStdout:
		_, err = outW.Write(b)
	case frameStderr:
		_, err = errW.Write(b)
	case frameStdoutEOF:
		outW.Close()
	case frameStderrEOF:
		errW.Close()
	case frameExit:
		outW.Close()
		errW.Close()
		if err := json.Unmarshal(b, &p.status); err != nil {
			return false, fmt.Errorf("bad exit frame: %w", err)
		}
		return true, nil
	default:
		err = fmt.Errorf("unexpected frame %d", typ)
	}
	return false, err
}

// awaitStart reads the agent's answer to a Start, within its timeout;
// after a cache miss it resends the batch with data, when it may.
func (p *Process) awaitStart(ps *pendingStart) error {
	err := startReply(p.stream(), ps.timeout)
	if isBlobMiss(err) && ps.retry != nil {
		p.stream().Close()
		st, onOK, err := ps.retry()
		switch {
		case err != nil:
		case !p.swap(st):
			err = errors.New("process closed")
		default:
			ps.onOK = onOK
			err = startReply(st, ps.timeout)
		}
		return asReplyTimeout(err, ps.timeout)
	}
	return asReplyTimeout(err, ps.timeout)
}

// asReplyTimeout reports a read deadline that passed as ErrReplyTimeout.
func asReplyTimeout(err error, timeout time.Duration) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (%v)", ErrReplyTimeout, timeout)
	}
	return err
}

// startReply is result bounded by timeout.
func startReply(st *yamux.Stream, timeout time.Duration) error {
	st.SetReadDeadline(time.Now().Add(timeout))
	defer st.SetReadDeadline(time.Time{})
	return result(st, nil)
}

func (p *Process) send(typ byte, b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return writeFrame(p.stream(), typ, b)
}

// stream is the process's current stream.
func (p *Process) stream() *yamux.Stream {
	p.stmu.Lock()
	defer p.stmu.Unlock()
	return p.st
}

// swap makes st the process's stream, unless Close came first: then st
// is closed and swap returns false.
func (p *Process) swap(st *yamux.Stream) bool {
	p.stmu.Lock()
	defer p.stmu.Unlock()
	if p.closed {
		st.Close()
		return false
	}
	p.st = st
	return true
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

// Wait returns the exit status once the exit frame has arrived and the
// caller has read Stdout and Stderr to the end. A non-nil error (wrapping
// ErrSessionLost) means the stream or session broke first and the
// process's fate is unknown: it is never an exit status in disguise.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, p.err
}

// Close abandons the process: the stream is closed, the agent kills the
// process group, and unread output is discarded.
func (p *Process) Close() error {
	p.stdout.Close()
	p.stderr.Close()
	p.stmu.Lock()
	defer p.stmu.Unlock()
	p.closed = true
	return p.st.Close()
}

// processStdin is the Process's stdin writer.
type processStdin struct {
	p      *Process
	mu     sync.Mutex
	closed bool
}

// Write sends b in frames of at most 32 KiB; it blocks while the agent
// has not consumed earlier ones (yamux window), which bounds memory.
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

// Close sends stdin EOF once; later calls do nothing.
func (s *processStdin) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.p.send(frameStdinEOF, nil)
}

// ErrNoBlob is a batch that named cached content the agent no longer has.
var ErrNoBlob = errors.New("agent: blob not cached")

// Batch performs prep in order and then, when exec is not nil, starts the
// command: one stream, one round trip. A write whose SHA256 the agent has
// already stored is sent as a reference; the rest is sent as data and
// cached by the agent for later batches. With a nil exec the returned
// Process is nil.
func (c *Client) Batch(ctx context.Context, prep []PrepOp, exec *ExecRequest) (*Process, error) {
	p, err := c.batchOnce(ctx, prep, exec, false, false)
	if errors.Is(err, ErrNoBlob) {
		// The cache was pruned or belongs to another agent build: resend
		// every content. The agent checked before changing anything.
		p, err = c.batchOnce(ctx, prep, exec, true, false)
		if !errors.Is(err, ErrNotSent) {
			resent(ctx)
		}
	}
	return p, err
}

// resentKey is the context key of WithResent.
type resentKey struct{}

// WithResent returns ctx carrying fn, which Batch and Start call each
// time they send a batch again because the agent's blob cache missed:
// the target sees that request twice, and a caller counting requests
// that reached the target (the shim's round trips) counts both. A hook
// on the context, as net/http/httptrace carries its hooks, reaches the
// resend of a Start, which happens after Start returned.
func WithResent(ctx context.Context, fn func()) context.Context {
	return context.WithValue(ctx, resentKey{}, fn)
}

// resent calls ctx's WithResent hook, if any.
func resent(ctx context.Context) {
	if fn, ok := ctx.Value(resentKey{}).(func()); ok && fn != nil {
		fn()
	}
}

// Start is Batch without waiting for the agent's answer: the request (and
// its contents) go out and the Process comes back at once, so the caller
// can send stdin right behind them on the same stream and the target gets
// command and input in one round trip. The agent reads stdin only once
// the command runs, so nothing is lost. A start that fails shows as
// output that ends empty and a Wait error wrapping ErrNotStarted (and the
// *RemoteError); an error returned here means nothing was started, and
// ErrNotSent that nothing left gomux. A batch that names a content the
// agent may no longer have cached is sent by Batch instead: were the
// cache to miss, stdin already sent on the stream could not be resent.
// With exec.Stdin (the whole input, by reference where cached) that
// cannot happen, and a cache miss is resent as data, as Batch does.
func (c *Client) Start(ctx context.Context, prep []PrepOp, exec *ExecRequest) (*Process, error) {
	if exec == nil {
		return nil, errors.New("agent: Start needs a command")
	}
	if len(exec.Stdin) > 0 {
		if exec.Pty != nil {
			return nil, errors.New("agent: a whole stdin is for commands without a terminal")
		}
		return c.batchOnce(ctx, prep, exec, false, true)
	}
	for _, op := range prep {
		if op.Op != "write" {
			continue
		}
		if len(op.Parts) == 0 && (op.SHA256 != "" || len(op.Data) > 0) && c.hasBlob(blobSum(op.SHA256, op.Data)) {
			return c.Batch(ctx, prep, exec)
		}
		for _, part := range op.Parts {
			if c.hasBlob(blobSum(part.SHA256, part.Data)) {
				return c.Batch(ctx, prep, exec)
			}
		}
	}
	// Never by reference: another batch may cache a content meanwhile.
	return c.batchOnce(ctx, prep, exec, true, true)
}

// blobSum is a content's SHA-256 as the agent names it.
func blobSum(sum string, data []byte) string {
	if sum != "" {
		return sum
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

func (c *Client) batchOnce(ctx context.Context, prep []PrepOp, exec *ExecRequest, noCache, early bool) (*Process, error) {
	st, record, err := c.sendBatch(ctx, prep, exec, noCache)
	if err != nil {
		return nil, err
	}
	if early {
		p := c.newProcess(st, exec)
		ps := &pendingStart{timeout: c.timeout(), onOK: record}
		if len(exec.Stdin) > 0 && !noCache {
			// No stdin frames follow a whole stdin, so a cache miss can
			// be answered as Batch does: everything once more, as data.
			ps.retry = func() (*yamux.Stream, func(), error) {
				c.forgetBlobs()
				st, record, err := c.sendBatch(ctx, prep, exec, true)
				if err == nil {
					resent(ctx)
				}
				return st, record, err
			}
		}
		p.started = ps
		go p.readLoop(p.outW, p.errW)
		return p, nil
	}
	if err := c.awaitResult(ctx, st, nil); err != nil {
		st.Close()
		if isBlobMiss(err) {
			c.forgetBlobs()
			return nil, fmt.Errorf("%w: %v", ErrNoBlob, err)
		}
		return nil, err
	}
	record()
	if exec == nil {
		st.Close()
		return nil, nil
	}
	return c.startProcess(st, exec), nil
}

// isBlobMiss is the agent's answer to a batch naming a content it does
// not have (any more).
func isBlobMiss(err error) bool {
	var re *RemoteError
	return errors.As(err, &re) && re.Op == "blob"
}

// sendBatch opens a batch's stream and sends the request and every
// content not sent by reference: the prep writes' parts, then the
// stdin's. record, called once the agent said OK, notes what it caches.
func (c *Client) sendBatch(ctx context.Context, prep []PrepOp, exec *ExecRequest, noCache bool) (*yamux.Stream, func(), error) {
	ops, sent, saved := c.batchParts(prep, exec, noCache)
	req := &request{Op: "batch", Prep: ops, Exec: exec}
	if exec != nil && len(exec.Stdin) > 0 {
		// The stdin went through batchParts as the last write.
		e := *exec
		e.Stdin = ops[len(ops)-1].Parts
		req.Prep, req.Exec = ops[:len(ops)-1], &e
	}
	st, err := c.open(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	if err := sendBlobs(st, ops); err != nil {
		st.Close()
		return nil, nil, wrap("send blob", err)
	}
	record := func() {
		for _, op := range ops {
			for _, part := range op.Parts {
				c.addBlob(part.SHA256)
			}
		}
		c.blobSent.Add(sent)
		c.blobSaved.Add(saved)
	}
	return st, record, nil
}

// batchParts copies prep (and exec's stdin, as a last write op) with
// every write's content as parts, each named by its SHA-256 and marked
// cached when the agent has it and noCache is false. sent and saved are
// the bytes that go as data and by reference.
func (c *Client) batchParts(prep []PrepOp, exec *ExecRequest, noCache bool) (ops []PrepOp, sent, saved int64) {
	ops = make([]PrepOp, len(prep), len(prep)+1)
	copy(ops, prep)
	if exec != nil && len(exec.Stdin) > 0 {
		ops = append(ops, PrepOp{Op: "write", Parts: exec.Stdin})
	}
	for i := range ops {
		op := &ops[i]
		if op.Op != "write" {
			continue
		}
		if len(op.Parts) == 0 {
			op.Parts = []PrepPart{{SHA256: op.SHA256, Data: op.Data}}
		} else {
			op.Parts = append([]PrepPart(nil), op.Parts...)
		}
		op.SHA256, op.Data = "", nil
		for j := range op.Parts {
			part := &op.Parts[j]
			if part.SHA256 == "" {
				sum := sha256.Sum256(part.Data)
				part.SHA256 = hex.EncodeToString(sum[:])
			}
			part.Cached = !noCache && c.hasBlob(part.SHA256)
			if part.Cached {
				saved += int64(len(part.Data))
			} else {
				sent += int64(len(part.Data))
			}
		}
	}
	return ops, sent, saved
}

// sendBlobs sends, in order, each part that is not cached as blob
// frames and an empty blob frame that ends it.
func sendBlobs(st io.Writer, ops []PrepOp) error {
	for _, op := range ops {
		for _, part := range op.Parts {
			if part.Cached {
				continue
			}
			for off := 0; off < len(part.Data); off += frameChunk {
				if err := writeFrame(st, frameBlob, part.Data[off:min(off+frameChunk, len(part.Data))]); err != nil {
					return err
				}
			}
			if err := writeFrame(st, frameBlob, nil); err != nil {
				return err
			}
		}
	}
	return nil
}
