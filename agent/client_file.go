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

	"github.com/hashicorp/yamux"
)

// File is an open file on the target. It is safe for concurrent use:
// concurrent ReadAt calls are pipelined on the wire, and WriteAt does not
// wait for the write (an error is reported by a later call or by Close),
// so a transfer never pays one round trip per chunk.
type File struct {
	st   *yamux.Stream
	path string
	wmu  sync.Mutex

	mu      sync.Mutex
	nextID  uint32
	reads   map[uint32]chan readResult
	control chan controlResult // fstat and close replies, in order
	err     error              // sticky: the stream failed or a write failed
	closed  bool
	loop    chan struct{}
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
const maxChunk = 256<<10 - 64

// Open opens a file with os.OpenFile flags.
func (c *Client) Open(ctx context.Context, path string, flag int, perm fs.FileMode) (*File, error) {
	st, err := c.open(ctx, &request{Op: "open", Path: path, Flag: flag, Mode: uint32(perm)})
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.Close() })
	err = result(st, nil)
	stop()
	if err != nil {
		st.Close()
		return nil, err
	}
	f := &File{st: st, path: path, reads: map[uint32]chan readResult{}, control: make(chan controlResult, 4), loop: make(chan struct{})}
	go f.readLoop()
	return f, nil
}

func (f *File) readLoop() {
	defer close(f.loop)
	for {
		typ, b, err := readFrame(f.st)
		if err != nil {
			f.fail(fmt.Errorf("agent: file %s: %w", f.path, err))
			return
		}
		switch typ {
		case frameData:
			if len(b) < 5 {
				f.fail(errors.New("agent: short data frame"))
				return
			}
			f.deliver(binary.BigEndian.Uint32(b), readResult{data: b[5:], eof: b[4] == 1})
		case frameError:
			var withID struct {
				ID  uint32       `json:"id"`
				Err *RemoteError `json:"err"`
			}
			if json.Unmarshal(b, &withID) == nil && withID.ID != 0 && withID.Err != nil {
				f.deliver(withID.ID, readResult{err: withID.Err})
				continue
			}
			f.control <- controlResult{typ, b}
		case frameOK:
			f.control <- controlResult{typ, b}
		default:
			f.fail(fmt.Errorf("agent: unexpected frame %d", typ))
			return
		}
	}
}

func (f *File) deliver(id uint32, r readResult) {
	f.mu.Lock()
	ch := f.reads[id]
	delete(f.reads, id)
	f.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

func (f *File) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
	for id, ch := range f.reads {
		ch <- readResult{err: f.err}
		delete(f.reads, id)
	}
	close(f.control)
}

func (f *File) send(typ byte, b []byte) error {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return writeFrame(f.st, typ, b)
}

// ReadAt reads like os.File.ReadAt: io.EOF when fewer than len(p) bytes
// were left.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	total := 0
	for total < len(p) {
		n := min(len(p)-total, maxChunk)
		r, err := f.readChunk(off+int64(total), n)
		if err != nil {
			return total, err
		}
		copy(p[total:], r.data)
		total += len(r.data)
		if r.eof || len(r.data) < n {
			return total, io.EOF
		}
	}
	return total, nil
}

func (f *File) readChunk(off int64, n int) (readResult, error) {
	ch := make(chan readResult, 1)
	f.mu.Lock()
	if f.err != nil {
		err := f.err
		f.mu.Unlock()
		return readResult{}, err
	}
	f.nextID++
	if f.nextID == 0 {
		f.nextID = 1
	}
	id := f.nextID
	f.reads[id] = ch
	f.mu.Unlock()
	b, _ := json.Marshal(readReq{ID: id, Off: off, N: n})
	if err := f.send(frameRead, b); err != nil {
		f.deliver(id, readResult{})
		return readResult{}, fmt.Errorf("agent: read %s: %w", f.path, err)
	}
	r := <-ch
	return r, r.err
}

// WriteAt queues the write; it fails only if an earlier one did.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	written := 0
	for written < len(p) {
		n := min(len(p)-written, maxChunk)
		buf := make([]byte, 12+n)
		binary.BigEndian.PutUint64(buf[4:12], uint64(off)+uint64(written))
		copy(buf[12:], p[written:written+n])
		if err := f.send(frameWrite, buf); err != nil {
			return written, fmt.Errorf("agent: write %s: %w", f.path, err)
		}
		written += n
	}
	return written, nil
}

// control sends fstat or close and waits for its reply. The agent serves
// a file's requests in order, so this reply also vouches for every write
// sent before it.
func (f *File) controlCall(typ byte, out any) error {
	if err := f.send(typ, nil); err != nil {
		return fmt.Errorf("agent: %s: %w", f.path, err)
	}
	r, ok := <-f.control
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
		return json.Unmarshal(r.b, out)
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

// Close closes the file and reports any write that failed.
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
