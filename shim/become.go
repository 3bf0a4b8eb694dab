package shim

import (
	"io"
	"strings"
)

// maxBecomeSeen bounds the become wrappers one Host remembers as working.
const maxBecomeSeen = 64

// speculable is a become wrapper whose success gomux may announce before
// the target does: sudo with -n and no password prompt, which never reads
// stdin, so the module Ansible then sends can only reach the command.
func (b *Become) speculable() bool {
	return b != nil && b.Method == "sudo" && !b.Prompt && b.NonInteractive && len(b.Wrapper) > 0
}

func (b *Become) seenKey() string { return strings.Join(b.Wrapper, "\x00") }

// speculateBecome reports whether gomux may write the BECOME-SUCCESS line
// to Ansible itself, as soon as the command arrives, so that Ansible sends
// its pipelined module at once instead of after a round trip to the
// target: the same wrapper (method, flags, become user, without the
// random key) has been seen to work for this target and login user, on a
// run without a terminal, and never fails with a prompt (see speculable).
func (h *Host) speculateBecome(b *Become) bool {
	if !b.speculable() {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.becomeSeen[b.seenKey()]
}

// watchBecome reports whether a run's stdout is worth watching for the
// wrapper's marker, to learn whether the wrapper works.
func (b *Become) watchBecome() bool { return b.speculable() }

// observeBecome records whether wrapper b worked on a run without a
// terminal: its output began with its marker line. A wrapper that did not
// is forgotten, so the next run waits for the target again.
func (h *Host) observeBecome(b *Become, worked bool) {
	if !b.speculable() {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	k := b.seenKey()
	if !worked {
		delete(h.becomeSeen, k)
		return
	}
	if h.becomeSeen == nil {
		h.becomeSeen = map[string]bool{}
	}
	if len(h.becomeSeen) < maxBecomeSeen {
		h.becomeSeen[k] = true
	}
}

// markerReader watches the first bytes of a become run's stdout for the
// wrapper's marker line (Become.Marker), in whatever pieces they arrive.
// With Strip it removes that line, which gomux already wrote to Ansible
// itself; without, it only looks. Anything else, a different first line
// or output that ends first, passes through unchanged. It holds at most
// the marker's length while it decides, and then calls Seen once with
// whether the marker was there.
type markerReader struct {
	R      io.Reader
	Marker string
	Strip  bool
	Seen   func(bool)

	head    []byte // bytes read while deciding, all a prefix of Marker
	pending []byte // decided bytes not yet returned
	err     error  // the error that ended the deciding read
	decided bool
}

// Read implements io.Reader.
func (m *markerReader) Read(p []byte) (int, error) {
	if !m.decided {
		m.decide()
	}
	if len(m.pending) > 0 {
		n := copy(p, m.pending)
		m.pending = m.pending[n:]
		return n, nil
	}
	if m.err != nil {
		return 0, m.err
	}
	return m.R.Read(p)
}

// decide reads no further than the marker's length, so what follows the
// marker stays in R for the plain reads after it.
func (m *markerReader) decide() {
	if m.head == nil {
		m.head = make([]byte, 0, len(m.Marker))
	}
	for len(m.head) < len(m.Marker) {
		n, err := m.R.Read(m.head[len(m.head):len(m.Marker)])
		m.head = m.head[:len(m.head)+n]
		switch {
		case !strings.HasPrefix(m.Marker, string(m.head)):
			m.finish(false, err)
			return
		case len(m.head) == len(m.Marker):
			m.finish(true, err)
			return
		case err != nil:
			m.finish(false, err)
			return
		}
	}
	m.finish(true, nil)
}

func (m *markerReader) finish(seen bool, err error) {
	m.decided, m.err = true, err
	if !seen || !m.Strip {
		m.pending = m.head
	}
	if m.Seen != nil {
		m.Seen(seen)
	}
}
