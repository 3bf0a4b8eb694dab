package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// File is an open file on the target. It is safe for concurrent use:
// ReadAt and WriteAt are pipelined on the wire (each chunk carries a
// request id), and WriteAt does not wait for the agent's answer, so a
// transfer never pays one round trip per chunk. A failed write is sticky:
// it is returned by the first call after the agent reported it, and at the
// latest by Stat or Close, whose replies follow every earlier write.
type File struct {
	st   *yamux.Stream
	path string
	wmu  sync.Mutex // one frame at a time on the stream
	cmu  sync.Mutex // one fstat/close in flight, so replies match callers

	mu      sync.Mutex
	nextID  uint32
	reads   map[uint32]chan readResult
	sizes   map[uint32]int     // bytes each pending read asked for
	control chan controlResult // fstat and close replies, in order
	err     error              // sticky: the stream failed or a write failed
	closed  bool
	loop    chan struct{}
	timeout time.Duration // for each reply, and each frame sent
}

type readResult struct {
	data []byte
	eof  bool
	err  error
}

type controlResult struct {
	typ byte
	b   []byte
}

// maxChunk is the most one read or write frame carries.
const maxChunk = 256 << 10

// readAhead bounds the chunk requests one ReadAt keeps in flight.
const readAhead = 16

// Open opens a file with os.OpenFile flags; a relative path is relative
// to the home directory.
func (c *Client) Open(ctx context.Context, path string, flag int, perm fs.FileMode) (*File, error) {
	st, err := c.open(ctx, &request{Op: "open", Path: path, Flags: flag, Mode: uint32(perm)})
	if err != nil {
		return nil, err
	}
	if err := c.awaitResult(ctx, st, nil); err != nil {
		st.Close()
		return nil, err
	}
	f := &File{st: st, path: path, reads: map[uint32]chan readResult{}, sizes: map[uint32]int{}, control: make(chan controlResult, 1),
		loop: make(chan struct{}), timeout: c.timeout()}
	go f.readLoop(st)
	return f, nil
}

// readLoop routes the agent's answers: data and per-request errors to the
// waiting ReadAt, write errors to the sticky error, the rest to control.
func (f *File) readLoop(r io.Reader) {
	defer close(f.loop)
	for {
		typ, b, err := readFrame(r)
		if err != nil {
			f.fail(wrap("file "+f.path, err))
			return
		}
		switch typ {
		case frameData:
			if len(b) < 5 {
				f.fail(wrap("file "+f.path, fmt.Errorf("%w: short data frame", ErrProtocol)))
				return
			}
			if !f.deliverData(binary.BigEndian.Uint32(b), b[5:], b[4] == 1) {
				return
			}
		case frameIOError:
			id, re, err := decodeIOError(b)
			if err != nil {
				f.fail(err)
				return
			}
			if !f.deliver(id, readResult{err: re}) {
				f.setErr(re) // a write failed
			}
		case frameOK, frameError:
			// One control call waits at a time, so its slot is free; a
			// reply nobody asked for must not block this loop, which alone
			// reads the stream.
			select {
			case f.control <- controlResult{typ, b}:
			default:
				f.fail(wrap("file "+f.path, fmt.Errorf("%w: reply to no pending call", ErrProtocol)))
				return
			}
		default:
			f.fail(wrap("file "+f.path, fmt.Errorf("%w: unexpected frame %d", ErrProtocol, typ)))
			return
		}
	}
}

// deliverData hands a read its data after checking the agent sent no more
// than was asked: a longer answer would make the caller report more bytes
// than its buffer holds. A reply to no pending read is dropped (its
// reader gave up). false means the stream has failed.
func (f *File) deliverData(id uint32, data []byte, eof bool) bool {
	f.mu.Lock()
	ch := f.reads[id]
	want := f.sizes[id]
	delete(f.reads, id)
	delete(f.sizes, id)
	f.mu.Unlock()
	if ch == nil {
		return true
	}
	if len(data) > want {
		err := wrap("file "+f.path, fmt.Errorf("%w: read reply of %d bytes for %d asked", ErrProtocol, len(data), want))
		ch <- readResult{err: err}
		f.fail(err)
		return false
	}
	ch <- readResult{data: data, eof: eof}
	return true
}

// deliver hands a read its answer; false when no read waits for id.
func (f *File) deliver(id uint32, r readResult) bool {
	f.mu.Lock()
	ch := f.reads[id]
	delete(f.reads, id)
	delete(f.sizes, id)
	f.mu.Unlock()
	if ch != nil {
		ch <- r
	}
	return ch != nil
}

func (f *File) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// fail ends every pending call with err; only readLoop calls it.
func (f *File) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
	for id, ch := range f.reads {
		ch <- readResult{err: f.err}
		delete(f.reads, id)
		delete(f.sizes, id)
	}
	close(f.control)
}

// abort gives up on a stalled stream: err becomes every pending call's
// answer, and the read deadline wakes readLoop, which then fails the rest.
func (f *File) abort(err error) {
	f.setErr(err)
	f.st.SetReadDeadline(time.Now())
}

// stalled is the error for a reply that did not come in time.
func (f *File) stalled(what string) error {
	return wrap("file "+f.path, fmt.Errorf("%w: %s (%v)", ErrReplyTimeout, what, f.timeout))
}

// send writes one frame, failing if the agent has not made room for it
// (yamux window) within the reply timeout.
func (f *File) send(typ byte, b []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	f.st.SetWriteDeadline(time.Now().Add(f.timeout))
	err := writeFrame(f.st, typ, b)
	if errors.Is(err, yamux.ErrTimeout) {
		err = f.stalled("the agent reads no more")
		f.abort(err)
		return err
	}
	if err != nil {
		return wrap(fileOpName(typ)+" "+f.path, err)
	}
	return nil
}

// wait receives a reply, or aborts the stream when none comes in time.
func (f *File) wait(ch chan readResult) readResult {
	t := time.NewTimer(f.timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		return r
	case <-t.C:
		f.abort(f.stalled("no read reply"))
		// readLoop wakes on the deadline and its fail answers every
		// pending read; should it already be gone, say why here.
		select {
		case r := <-ch:
			return r
		case <-f.loop:
			select {
			case r := <-ch:
				return r
			default:
				return readResult{err: f.stalled("no read reply")}
			}
		}
	}
}

// ReadAt reads like os.File.ReadAt: io.EOF when fewer than len(p) bytes
// were left. A large read is split into chunks requested together.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("agent: read %s: negative offset", f.path)
	}
	type pending struct {
		ch   chan readResult
		at   int // position in p
		size int
	}
	var queue []pending
	next := 0 // next position in p to request
	total := 0
	var firstErr error
	for next < len(p) || len(queue) > 0 {
		for firstErr == nil && next < len(p) && len(queue) < readAhead {
			n := min(len(p)-next, maxChunk)
			ch, err := f.requestRead(off+int64(next), n)
			if err != nil {
				firstErr = err
				break
			}
			queue = append(queue, pending{ch, next, n})
			next += n
		}
		if len(queue) == 0 {
			break
		}
		q := queue[0]
		queue = queue[1:]
		r := f.wait(q.ch)
		if firstErr != nil {
			continue // drain the rest; the answer is already decided
		}
		if r.err != nil {
			firstErr = r.err
			continue
		}
		copy(p[q.at:], r.data)
		total = q.at + len(r.data)
		if len(r.data) < q.size {
			firstErr = io.EOF
		}
	}
	if firstErr != nil {
		return total, firstErr
	}
	return total, nil
}

func (f *File) requestRead(off int64, n int) (chan readResult, error) {
	ch := make(chan readResult, 1)
	f.mu.Lock()
	if f.err != nil {
		err := f.err
		f.mu.Unlock()
		return nil, err
	}
	f.nextID++
	if f.nextID == 0 {
		f.nextID = 1
	}
	id := f.nextID
	f.reads[id] = ch
	f.sizes[id] = n
	f.mu.Unlock()
	if err := f.send(frameRead, readReq{ID: id, Off: off, N: uint32(n)}.encode()); err != nil {
		f.mu.Lock()
		delete(f.reads, id)
		delete(f.sizes, id)
		f.mu.Unlock()
		return nil, err
	}
	return ch, nil
}

// WriteAt queues the write and returns; it fails if an earlier write did
// or the stream broke.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("agent: write %s: negative offset", f.path)
	}
	written := 0
	for written < len(p) {
		f.mu.Lock()
		err := f.err
		f.nextID++
		if f.nextID == 0 {
			f.nextID = 1
		}
		id := f.nextID
		f.mu.Unlock()
		if err != nil {
			return written, err
		}
		n := min(len(p)-written, frameChunk)
		buf := make([]byte, 12+n)
		binary.BigEndian.PutUint32(buf, id)
		binary.BigEndian.PutUint64(buf[4:12], uint64(off)+uint64(written))
		copy(buf[12:], p[written:written+n])
		if err := f.send(frameWrite, buf); err != nil {
			return written, err
		}
		written += n
	}
	return written, nil
}

// controlCall sends fstat or close and waits for its reply. The agent
// serves a file's requests in order, so this reply also vouches for every
// write sent before it.
func (f *File) controlCall(typ byte, out any) error {
	f.cmu.Lock()
	defer f.cmu.Unlock()
	if err := f.send(typ, nil); err != nil {
		return err
	}
	t := time.NewTimer(f.timeout)
	defer t.Stop()
	var r controlResult
	var ok bool
	select {
	case r, ok = <-f.control:
	case <-t.C:
		f.abort(f.stalled("no reply to " + fileOpName(typ)))
		r, ok = <-f.control
	}
	if !ok {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.err
	}
	if r.typ == frameError {
		var re RemoteError
		if err := json.Unmarshal(r.b, &re); err != nil {
			return fmt.Errorf("agent: bad error reply: %w", err)
		}
		return &re
	}
	if out != nil {
		if err := json.Unmarshal(r.b, out); err != nil {
			return fmt.Errorf("agent: bad reply: %w", err)
		}
	}
	return nil
}

// Stat returns the open file's metadata; it also reports a failed write.
func (f *File) Stat() (*FileInfo, error) {
	var w wireInfo
	if err := f.controlCall(frameFstat, &w); err != nil {
		return nil, err
	}
	return &FileInfo{w}, nil
}

// Close closes the file and reports any write that failed. Later calls
// return nil.
func (f *File) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.mu.Unlock()
	err := f.controlCall(frameClose, nil)
	f.st.Close()
	<-f.loop
	return err
}

// fileOpName names the request a file stream frame carries, for errors.
func fileOpName(typ byte) string {
	switch typ {
	case frameRead:
		return "read"
	case frameWrite:
		return "write"
	case frameFstat:
		return "fstat"
	case frameClose:
		return "close"
	}
	return fmt.Sprintf("frame %d", typ)
}
