package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// Client is gomux's side of one agent session. It is safe for concurrent
// use; every call opens its own yamux stream.
type Client struct {
	sess *yamux.Session
	info Info
	// version is the protocol version agreed at the hello; requests
	// go out in its shape (wire).
	version int
	// replyTimeout bounds the wait for any one reply (nanoseconds), so a
	// stalled agent ends the request that waits on it, not the caller.
	replyTimeout atomic.Int64

	bmu   sync.Mutex
	blobs map[string]bool // content the agent confirmed it stores

	blobSent, blobSaved atomic.Int64
}

// BlobBytes are the file bytes batches sent, and those they did not send
// because the agent had them cached.
func (c *Client) BlobBytes() (sent, saved int64) {
	return c.blobSent.Load(), c.blobSaved.Load()
}

// DefaultReplyTimeout is how long a request waits for the agent's reply
// when SetReplyTimeout was not called. A reply is the answer to one file
// operation, one chunk or the start of a command, never a command's run,
// so it is long for a healthy agent and short for a person waiting.
const DefaultReplyTimeout = 2 * time.Minute

// SetReplyTimeout bounds the wait for each reply from the agent: a request
// the agent does not answer in d fails with ErrReplyTimeout, and a file
// stream that stalls is closed. Zero restores DefaultReplyTimeout.
func (c *Client) SetReplyTimeout(d time.Duration) { c.replyTimeout.Store(int64(d)) }

func (c *Client) timeout() time.Duration {
	if d := time.Duration(c.replyTimeout.Load()); d > 0 {
		return d
	}
	return DefaultReplyTimeout
}

// ErrReplyTimeout is a request the agent did not answer in time.
var ErrReplyTimeout = errors.New("agent: no reply in time")

// maxNoise bounds the login-shell output skipped before the banner.
const maxNoise = 64 << 10

// NewClient skips noise up to the banner on r, starts yamux (client side)
// over r and w, and does the Hello handshake. When ctx ends before the
// banner arrives, it closes w (and r, if it is an io.Closer) to give up.
func NewClient(ctx context.Context, r io.Reader, w io.WriteCloser) (*Client, error) {
	br := bufio.NewReaderSize(r, 4096)
	stop := context.AfterFunc(ctx, func() {
		w.Close()
		if c, ok := r.(io.Closer); ok {
			c.Close()
		}
	})
	oldest, err := readBanner(br)
	if !stop() {
		return nil, fmt.Errorf("agent: waiting for the banner: %w", ctx.Err())
	}
	if err != nil {
		return nil, err
	}
	// The bytes read past the banner are yamux's; after them it reads r
	// itself. br is dropped: yamux buffers its reads, and an idle session
	// should not hold a second buffer.
	if n := br.Buffered(); n > 0 {
		rest := make([]byte, n)
		io.ReadFull(br, rest)
		r = io.MultiReader(bytes.NewReader(rest), r)
	}
	// A yamux data frame and its header go out in one write of at most
	// maxWriteChunk bytes, which is one SSH packet.
	conn := rwc{Reader: r, Writer: newFrameWriter(chunkWriter{w}), close: w.Close}
	sess, err := yamux.Client(conn, YamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("agent: start yamux: %w", err)
	}
	c := &Client{sess: sess}
	if err := c.hello(ctx, oldest); err != nil {
		sess.Close()
		return nil, err
	}
	return c, nil
}

// hello agrees on a protocol version: this client's newest, or, while the
// agent refuses the one offered and its banner says it serves older ones,
// the next older one this client speaks.
func (c *Client) hello(ctx context.Context, oldest int) error {
	var err error
	for v := ProtocolVersion; v >= max(oldest, MinProtocolVersion); v-- {
		c.version = v
		var info Info
		err = c.call(ctx, &request{Op: "hello", Version: v}, &info)
		var re *RemoteError
		switch {
		case err == nil:
			c.info = info
			return nil
		case !errors.As(err, &re) || re.Op != "hello":
			return wrap("handshake", err)
		}
	}
	if err == nil {
		return fmt.Errorf("%w: the agent serves versions from %d, this gomux speaks %d to %d", ErrVersion, oldest, MinProtocolVersion, ProtocolVersion)
	}
	return fmt.Errorf("%w: %w", ErrVersion, err)
}

// wire is req in the shape of the agreed protocol version.
func (c *Client) wire(req *request) *request {
	if c.version == 1 {
		return req.toV1()
	}
	return req
}

// maxWriteChunk bounds each write yamux makes to the session's writer.
// An SSH channel keeps a packet buffer as large as the largest write it
// was given (up to the peer's 32 KiB packets), and the cipher keeps one
// as large as the largest packet, for the connection's life: smaller
// writes keep an upstream that carried an upload small once it is idle.
// The window, not the packet size, bounds throughput (BenchmarkUpload
// Throughput at RTT 20 ms is unchanged).
const maxWriteChunk = 8 << 10

// frameChunk is the most one blob or write frame from the client
// carries. yamux copies each frame into a send buffer that it keeps, as
// large as the largest frame, for the session's life (hashicorp/yamux
// v0.1.2 sendLoop): with maxChunk (256 KiB) frames, one large upload left
// the idle upstream holding 256 KiB. The agent joins a blob's frames and
// writes each write frame at its offset, so their size is the sender's
// choice: a frame with its 5-byte header fills one yamux data frame that,
// with yamux's 12-byte header, is one maxWriteChunk write.
const frameChunk = maxWriteChunk - frameHeaderSize - 5

// chunkWriter writes to w in pieces of at most maxWriteChunk bytes.
type chunkWriter struct{ w io.Writer }

// Write writes p in chunks, stopping at the first error.
func (c chunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), maxWriteChunk)
		m, err := c.w.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// ErrVersion is a banner or handshake with a protocol version this client
// does not speak.
var ErrVersion = errors.New("agent: protocol version mismatch")

// ErrNotSent is a request that never left gomux: the session to the
// agent had ended before its stream could open. Nothing of it reached
// the target, so it is safe to send again on a new session.
var ErrNotSent = errors.New("agent: session ended before the request was sent")

// readBanner consumes everything up to and including the banner line and
// returns the oldest protocol version the agent serves, which it names.
// The banner may follow noise without a newline (a motd lacking its last
// line break), so it is searched for byte by byte, not per line. What
// follows the banner stays buffered in br for yamux.
func readBanner(br *bufio.Reader) (int, error) {
	want := []byte(Banner + " ")
	tail := make([]byte, 0, 2*len(want)) // the latest bytes read
	for skipped := 0; ; skipped++ {
		if skipped > maxNoise {
			return 0, errors.New("agent: no banner in the first 64 KiB of output")
		}
		c, err := br.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("agent: no banner: %w", err)
		}
		if len(tail) == cap(tail) {
			tail = append(tail[:0], tail[len(tail)-len(want)+1:]...)
		}
		tail = append(tail, c)
		if bytes.HasSuffix(tail, want) {
			break
		}
	}
	var v []byte
	for {
		c, err := br.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("agent: banner cut short: %w", err)
		}
		if c == '\n' {
			break
		}
		if len(v) >= 32 {
			return 0, errors.New("agent: banner line too long")
		}
		v = append(v, c)
	}
	got := strings.TrimSpace(string(v))
	oldest, err := strconv.Atoi(got)
	if err != nil || oldest > ProtocolVersion {
		return 0, fmt.Errorf("%w: agent speaks %q and later, this gomux speaks %d to %d (stale agent binary?)", ErrVersion, got, MinProtocolVersion, ProtocolVersion)
	}
	return oldest, nil
}

// Info is what the agent said about itself at the handshake.
func (c *Client) Info() Info { return c.info }

// Close ends the session; the agent exits when its stdin closes.
func (c *Client) Close() error { return c.sess.Close() }

// Done is closed when the session has ended for any reason.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// NumStreams is the number of open streams, for tests and metrics.
func (c *Client) NumStreams() int { return c.sess.NumStreams() }

// open starts a stream with a request header. The caller owns the
// stream and closes it.
func (c *Client) open(ctx context.Context, req *request) (*yamux.Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := c.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotSent, req.Op, err)
	}
	if err := writeJSON(st, frameRequest, c.wire(req)); err != nil {
		st.Close()
		return nil, wrap("send "+req.Op, err)
	}
	return st, nil
}

// result reads the one OK or error frame that answers a request.
func result(st io.Reader, out any) error {
	typ, p, err := readFrame(st)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("agent: connection closed before the agent replied: %w", err)
		}
		return wrap("read reply", err)
	}
	switch typ {
	case frameOK:
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(p, out); err != nil {
			return fmt.Errorf("agent: bad reply: %w", err)
		}
		return nil
	case frameError:
		var re RemoteError
		if err := json.Unmarshal(p, &re); err != nil {
			return fmt.Errorf("agent: bad error reply: %w", err)
		}
		return &re
	}
	return fmt.Errorf("agent: unexpected frame %d", typ)
}

// awaitResult is result bounded by ctx and by the reply timeout: when
// either ends first, the pending read is woken by a deadline and the
// reason is returned. The deadline is cleared again on success, since the
// stream may live on.
func (c *Client) awaitResult(ctx context.Context, st *yamux.Stream, out any) error {
	d := c.timeout()
	ctx, cancel := context.WithTimeoutCause(ctx, d, fmt.Errorf("%w (%v)", ErrReplyTimeout, d))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { st.SetReadDeadline(time.Now()) })
	err := result(st, out)
	if !stop() {
		// The cause is either ErrReplyTimeout, which says "agent:"
		// itself, or the caller's own context error.
		return context.Cause(ctx)
	}
	return err
}

// call is one request and one reply on a fresh stream.
func (c *Client) call(ctx context.Context, req *request, out any) error {
	st, err := c.open(ctx, req)
	if err != nil {
		return err
	}
	defer st.Close()
	return c.awaitResult(ctx, st, out)
}

// Stat follows symlinks.
func (c *Client) Stat(ctx context.Context, path string) (*FileInfo, error) {
	var w wireInfo
	if err := c.call(ctx, &request{Op: "stat", Path: path}, &w); err != nil {
		return nil, err
	}
	return &FileInfo{w}, nil
}

// Lstat does not follow a final symlink.
func (c *Client) Lstat(ctx context.Context, path string) (*FileInfo, error) {
	var w wireInfo
	if err := c.call(ctx, &request{Op: "lstat", Path: path}, &w); err != nil {
		return nil, err
	}
	return &FileInfo{w}, nil
}

// ReadDir lists a directory.
func (c *Client) ReadDir(ctx context.Context, path string) ([]*FileInfo, error) {
	var ws []wireInfo
	if err := c.call(ctx, &request{Op: "readdir", Path: path}, &ws); err != nil {
		return nil, err
	}
	out := make([]*FileInfo, len(ws))
	for i := range ws {
		out[i] = &FileInfo{ws[i]}
	}
	return out, nil
}

// Mkdir creates one directory.
func (c *Client) Mkdir(ctx context.Context, path string, mode fs.FileMode) error {
	return c.call(ctx, &request{Op: "mkdir", Path: path, Mode: uint32(mode.Perm())}, nil)
}

// Remove removes a file that is not a directory.
func (c *Client) Remove(ctx context.Context, path string) error {
	return c.call(ctx, &request{Op: "remove", Path: path}, nil)
}

// Rmdir removes an empty directory.
func (c *Client) Rmdir(ctx context.Context, path string) error {
	return c.call(ctx, &request{Op: "rmdir", Path: path}, nil)
}

// Rename moves oldpath to newpath; without overwrite an existing newpath
// is an error, as SFTP's RENAME requires.
func (c *Client) Rename(ctx context.Context, oldpath, newpath string, overwrite bool) error {
	return c.call(ctx, &request{Op: "rename", Path: oldpath, NewPath: newpath, Overwrite: overwrite}, nil)
}

// Symlink creates link pointing at target (stored as given).
func (c *Client) Symlink(ctx context.Context, target, link string) error {
	return c.call(ctx, &request{Op: "symlink", Path: target, Link: link}, nil)
}

// Link creates a hard link.
func (c *Client) Link(ctx context.Context, oldpath, newpath string) error {
	return c.call(ctx, &request{Op: "link", Path: oldpath, NewPath: newpath}, nil)
}

// Readlink returns a symlink's content.
func (c *Client) Readlink(ctx context.Context, path string) (string, error) {
	var s string
	err := c.call(ctx, &request{Op: "readlink", Path: path}, &s)
	return s, err
}

// RealPath resolves path against the home directory and symlinks.
func (c *Client) RealPath(ctx context.Context, path string) (string, error) {
	var s string
	err := c.call(ctx, &request{Op: "realpath", Path: path}, &s)
	return s, err
}

// Setstat changes the attributes set in attr.
func (c *Client) Setstat(ctx context.Context, path string, attr SetAttr) error {
	w := &wireAttr{Mode: attr.Mode, UID: attr.UID, GID: attr.GID, Atime: attr.Atime, Mtime: attr.Mtime, Size: attr.Size}
	return c.call(ctx, &request{Op: "setstat", Path: path, Attr: w}, nil)
}

// Dial opens a TCP connection from the target ("tcp", "tcp4" or "tcp6").
// ctx bounds the dial only. The returned conn's Close is a half-close
// (yamux FIN): the agent then half-closes the TCP connection and the conn
// can still read what the peer sends until the peer closes too.
func (c *Client) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	timeout := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	st, err := c.open(ctx, &request{Op: "dial", Network: network, Address: address, Timeout: max(timeout.Milliseconds(), 1)})
	if err != nil {
		return nil, err
	}
	if err := c.awaitResult(ctx, st, nil); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

func (c *Client) hasBlob(sum string) bool {
	c.bmu.Lock()
	defer c.bmu.Unlock()
	return c.blobs[sum]
}

func (c *Client) addBlob(sum string) {
	c.bmu.Lock()
	defer c.bmu.Unlock()
	if c.blobs == nil {
		c.blobs = map[string]bool{}
	}
	c.blobs[sum] = true
}

func (c *Client) forgetBlobs() {
	c.bmu.Lock()
	defer c.bmu.Unlock()
	c.blobs = nil
}
