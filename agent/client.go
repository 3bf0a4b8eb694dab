package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
)

// Client is gomux's side of one agent session. It is safe for concurrent
// use; every call opens its own yamux stream.
type Client struct {
	sess *yamux.Session
	info Info
}

// maxNoise bounds the login-shell output skipped before the banner.
const maxNoise = 64 << 10

// NewClient skips noise up to the banner on r, starts yamux over r and w,
// and checks the protocol version.
func NewClient(ctx context.Context, r io.Reader, w io.WriteCloser) (*Client, error) {
	br := bufio.NewReaderSize(r, 4096)
	if err := skipToBanner(br); err != nil {
		return nil, err
	}
	conn := rwc{Reader: br, Writer: w, close: w.Close}
	sess, err := yamux.Client(conn, YamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("agent: yamux: %w", err)
	}
	c := &Client{sess: sess}
	var info Info
	if err := c.call(ctx, &request{Op: "hello", Version: ProtocolVersion}, &info); err != nil {
		sess.Close()
		return nil, fmt.Errorf("agent: handshake: %w", err)
	}
	c.info = info
	return c, nil
}

func skipToBanner(br *bufio.Reader) error {
	want := Banner + " "
	skipped := 0
	for {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, want) {
			v := strings.TrimSpace(strings.TrimPrefix(line, want))
			if v != fmt.Sprint(ProtocolVersion) {
				return fmt.Errorf("agent: speaks protocol %q, want %d", v, ProtocolVersion)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("agent: no banner: %w", err)
		}
		skipped += len(line)
		if skipped > maxNoise {
			return errors.New("agent: no banner in the first 64 KiB of output")
		}
	}
}

// Info is what the agent said about itself at the handshake.
func (c *Client) Info() Info { return c.info }

// Close ends the session; the agent exits when its stdin closes.
func (c *Client) Close() error { return c.sess.Close() }

// Done is closed when the session has ended for any reason.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// NumStreams is the number of open streams, for tests and metrics.
func (c *Client) NumStreams() int { return c.sess.NumStreams() }

// open starts a stream with a request header. The stream is closed when
// ctx ends before the caller is done with it... callers own closing it.
func (c *Client) open(ctx context.Context, req *request) (*yamux.Stream, error) {
	st, err := c.sess.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("agent: open stream: %w", err)
	}
	if err := writeJSON(st, frameRequest, req); err != nil {
		st.Close()
		return nil, fmt.Errorf("agent: send %s: %w", req.Op, err)
	}
	return st, nil
}

// result reads the one OK or error frame that answers a request.
func result(st io.Reader, out any) error {
	typ, p, err := readFrame(st)
	if err != nil {
		return fmt.Errorf("agent: read reply: %w", err)
	}
	switch typ {
	case frameOK:
		if out == nil {
			return nil
		}
		return json.Unmarshal(p, out)
	case frameError:
		var re RemoteError
		if err := json.Unmarshal(p, &re); err != nil {
			return fmt.Errorf("agent: bad error reply: %w", err)
		}
		return &re
	}
	return fmt.Errorf("agent: unexpected frame %d", typ)
}

// call is one request and one reply on a fresh stream.
func (c *Client) call(ctx context.Context, req *request, out any) error {
	st, err := c.open(ctx, req)
	if err != nil {
		return err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	err = result(st, out)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
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
	return c.call(ctx, &request{Op: "rename", Path: oldpath, Path2: newpath, Bool: overwrite}, nil)
}

// Symlink creates link pointing at target (stored as given).
func (c *Client) Symlink(ctx context.Context, target, link string) error {
	return c.call(ctx, &request{Op: "symlink", Path: target, Path2: link}, nil)
}

// Link creates a hard link.
func (c *Client) Link(ctx context.Context, oldpath, newpath string) error {
	return c.call(ctx, &request{Op: "link", Path: oldpath, Path2: newpath}, nil)
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

// Dial opens a TCP connection from the target. The returned conn closes
// fully on Close; yamux streams have no half-close.
func (c *Client) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	timeout := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	st, err := c.open(ctx, &request{Op: "dial", Network: network, Address: address, Timeout: timeout.Milliseconds()})
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { st.Close() })
	err = result(st, nil)
	if !stop() {
		st.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}
