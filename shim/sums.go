package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
)

// Sums remembers the SHA-256 of module archives (an AnsiballZ wrapper's
// ZIPDATA line) for every Host: the agent caches pieces by their sum, and
// a module's archive is the same bytes in every task and on every target,
// so hashing it again per task (about 130 KB for `command`) was gomux's
// largest piece of own CPU per task after the shell parser. A lookup
// compares the whole content (it is the map's key), so a sum is only ever
// reused for identical bytes. It holds at most a fixed number of bytes of
// content and starts over when full. A nil *Sums hashes every time.
type Sums struct {
	mu   sync.Mutex
	max  int
	size int
	m    map[string]string
}

// DefaultSumsBytes is what NewSums keeps when given no size: room for the
// archives of a few dozen modules.
const DefaultSumsBytes = 16 << 20

// NewSums returns a memo that holds up to maxBytes of content
// (DefaultSumsBytes when maxBytes <= 0).
func NewSums(maxBytes int) *Sums {
	if maxBytes <= 0 {
		maxBytes = DefaultSumsBytes
	}
	return &Sums{max: maxBytes, m: map[string]string{}}
}

// Of returns the hex SHA-256 of data.
func (s *Sums) Of(data []byte) string {
	if s == nil || len(data) > s.max {
		return hexSum(data)
	}
	s.mu.Lock()
	sum, ok := s.m[string(data)] // the conversion does not copy
	s.mu.Unlock()
	if ok {
		return sum
	}
	sum = hexSum(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[string(data)]; !ok {
		if s.size+len(data) > s.max {
			clear(s.m)
			s.size = 0
		}
		s.m[string(data)] = sum
		s.size += len(data)
	}
	return sum
}

func hexSum(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}
