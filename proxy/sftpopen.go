package proxy

import (
	"encoding/binary"
	"io"
	"io/fs"
	"path"
	"sync"
)

// SFTP packet types and attribute flags (draft-ietf-secsh-filexfer-02)
// that openSniffer reads.
const (
	sshFxpOpen         = 3
	sshFxpMkdir        = 14
	sshFileXferAttrPem = 0x00000004
	sshFileXferAttrSz  = 0x00000001
	sshFileXferAttrUID = 0x00000002
	// maxSniffedPacket bounds what openSniffer buffers: OPEN and MKDIR
	// carry a path and attributes, never file data.
	maxSniffedPacket = 64 << 10
)

// openModes remembers the permissions that OPEN and MKDIR requests carry,
// by the path pkg/sftp will hand the handler. pkg/sftp's request server
// drops OPEN's attribute flags (github.com/pkg/sftp issue 557), so without
// this a file uploaded with mode 0600 would be created 0644 through gomux
// where sftp-server creates it 0600: Ansible's later setfacl then grants
// group and others access they would not have had.
type openModes struct {
	base string

	mu    sync.Mutex
	modes map[string][]fs.FileMode // by cleaned path, oldest first
}

// maxOpenModes bounds the paths whose OPEN modes wait for a handler; far
// more than a client's requests in flight.
const maxOpenModes = 1024

func newOpenModes(base string) *openModes {
	return &openModes{base: base, modes: map[string][]fs.FileMode{}}
}

// cleanPath is what pkg/sftp makes of a request's path: cleaned, and
// joined to the start directory when relative.
func (o *openModes) cleanPath(p string) string {
	p = path.Clean(p)
	if !path.IsAbs(p) {
		return path.Join(o.base, p)
	}
	return p
}

func (o *openModes) put(p string, mode fs.FileMode) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p = o.cleanPath(p)
	// Bounded: a client that opens a path many times without the handler
	// taking them (it cannot, but a bug should not grow memory) keeps the
	// newest few.
	if _, ok := o.modes[p]; !ok && len(o.modes) >= maxOpenModes {
		// Opens the handlers never took (pkg/sftp refused them, or a
		// cap did): forget one, so a client cannot grow the map.
		for k := range o.modes {
			delete(o.modes, k)
			break
		}
	}
	q := append(o.modes[p], mode)
	if len(q) > 16 {
		q = q[len(q)-16:]
	}
	o.modes[p] = q
}

// take returns (and forgets) the permissions of the oldest request for p
// that carried some.
func (o *openModes) take(p string) (fs.FileMode, bool) {
	if o == nil {
		return 0, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	p = o.cleanPath(p)
	q := o.modes[p]
	if len(q) == 0 {
		return 0, false
	}
	m := q[0]
	if len(q) == 1 {
		delete(o.modes, p)
	} else {
		o.modes[p] = q[1:]
	}
	return m, true
}

// forget drops what a request for p recorded, for requests that carried
// no permissions, so an older request's mode is never used for a newer
// one.
func (o *openModes) forget(p string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.modes, o.cleanPath(p))
}

// openSniffer reads the client's SFTP packets as they pass to pkg/sftp
// and records the permissions of OPEN and MKDIR requests. It buffers only
// those packets; every byte reaches pkg/sftp unchanged.
type openSniffer struct {
	io.ReadWriteCloser
	modes *openModes

	hdr  [5]byte // length and type of the current packet
	nhdr int
	left int    // bytes of the current packet's body still to come
	keep bool   // the current packet is buffered
	body []byte // buffered body (after the type byte)
}

func (s *openSniffer) Read(p []byte) (int, error) {
	n, err := s.ReadWriteCloser.Read(p)
	s.feed(p[:n])
	return n, err
}

// feed advances the packet parser over b.
func (s *openSniffer) feed(b []byte) {
	for len(b) > 0 {
		if s.nhdr < len(s.hdr) {
			c := copy(s.hdr[s.nhdr:], b)
			s.nhdr += c
			b = b[c:]
			if s.nhdr < len(s.hdr) {
				return
			}
			length := int(binary.BigEndian.Uint32(s.hdr[:4]))
			if length < 1 {
				// Malformed; pkg/sftp will say so. Resynchronizing is
				// not possible, so stop looking.
				s.modes = nil
				s.nhdr = 0
				return
			}
			s.left = length - 1
			t := s.hdr[4]
			s.keep = s.modes != nil && (t == sshFxpOpen || t == sshFxpMkdir) && s.left <= maxSniffedPacket
			s.body = s.body[:0]
			if s.left == 0 {
				s.done()
			}
			continue
		}
		c := min(s.left, len(b))
		if s.keep {
			s.body = append(s.body, b[:c]...)
		}
		s.left -= c
		b = b[c:]
		if s.left == 0 {
			s.done()
		}
	}
}

// done ends the current packet: an OPEN or MKDIR is parsed and recorded.
func (s *openSniffer) done() {
	if s.keep && s.modes != nil {
		s.record(s.hdr[4], s.body)
	}
	s.nhdr, s.keep = 0, false
}

func (s *openSniffer) record(t byte, b []byte) {
	// id, path
	if len(b) < 8 {
		return
	}
	b = b[4:]
	plen := int(binary.BigEndian.Uint32(b))
	b = b[4:]
	if plen > len(b) {
		return
	}
	p := string(b[:plen])
	b = b[plen:]
	if t == sshFxpOpen {
		if len(b) < 4 {
			return
		}
		b = b[4:] // pflags
	}
	if len(b) < 4 {
		return
	}
	flags := binary.BigEndian.Uint32(b)
	b = b[4:]
	if flags&sshFileXferAttrPem == 0 {
		s.modes.forget(p)
		return
	}
	if flags&sshFileXferAttrSz != 0 {
		if len(b) < 8 {
			return
		}
		b = b[8:]
	}
	if flags&sshFileXferAttrUID != 0 {
		if len(b) < 8 {
			return
		}
		b = b[8:]
	}
	if len(b) < 4 {
		return
	}
	s.modes.put(p, toGoMode(binary.BigEndian.Uint32(b)&0o7777))
}
