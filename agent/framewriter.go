package agent

import (
	"encoding/binary"
	"io"
)

// yamux frame header: version, type, flags (2), stream ID (4), length (4).
const (
	frameHeaderSize = 12
	frameTypeData   = 0
	// maxCoalesce is the largest body sent in one write with its header,
	// so that the two fit one maxWriteChunk (one SSH packet); a larger one
	// goes in its own write, as yamux sends it (it spans several SSH
	// packets anyway).
	maxCoalesce = maxWriteChunk - frameHeaderSize
)

// frameWriter puts a yamux data frame's header and body in one write.
// yamux writes the 12-byte header and the body separately, and the
// connection under it is an SSH channel, where every write is its own SSH
// packet and, on each side of the SSH connection, its own system call: a
// small RPC or a line of output cost two of each. yamux's send loop is the
// one writer of its connection and writes a data frame's body right after
// its header, so the header of a data frame that has a body is held back
// and sent in front of that body.
type frameWriter struct {
	w    io.Writer
	hdr  [frameHeaderSize]byte
	held bool
}

func newFrameWriter(w io.Writer) *frameWriter { return &frameWriter{w: w} }

// Write passes p on, holding back a data frame's header for its body.
func (f *frameWriter) Write(p []byte) (int, error) {
	if f.held {
		f.held = false
		if len(p) > maxCoalesce {
			if _, err := f.w.Write(f.hdr[:]); err != nil {
				return 0, err
			}
			return f.w.Write(p)
		}
		buf := make([]byte, frameHeaderSize+len(p))
		copy(buf, f.hdr[:])
		copy(buf[frameHeaderSize:], p)
		n, err := f.w.Write(buf)
		return max(n-frameHeaderSize, 0), err
	}
	if len(p) == frameHeaderSize && p[1] == frameTypeData && binary.BigEndian.Uint32(p[8:]) > 0 {
		copy(f.hdr[:], p)
		f.held = true
		return len(p), nil
	}
	return f.w.Write(p)
}
