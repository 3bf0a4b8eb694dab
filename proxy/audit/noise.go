package audit

import "sync"

// Noise counts what unauthenticated connections cause (handshakes that
// fail, connections dropped by the startup caps, login grace timeouts)
// per source address, so that a flood is a few lines a minute in the log
// and cannot push the audit events of real logins out of a rate-limited
// journal. The proxy's LogNoise writes the counts. The zero Noise is
// ready to use.
type Noise struct {
	mu     sync.Mutex
	counts map[string]map[string]int // source address -> kind -> count
}

// Kinds of unauthenticated noise.
const (
	// NoiseHandshake is a connection that failed its SSH handshake.
	NoiseHandshake = "handshake_failed"
	// NoiseDropped is a connection dropped by the startup caps.
	NoiseDropped = "dropped_before_login"
	// NoiseGrace is a connection that did not log in within the login
	// grace time.
	NoiseGrace = "login_grace_expired"
)

// maxNoiseSources bounds the table between two flushes: a flood from
// more addresses than this is counted under one "other" source.
const maxNoiseSources = 4096

// Add counts one event of kind from source (an IP address).
func (n *Noise) Add(source, kind string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.counts == nil {
		n.counts = map[string]map[string]int{}
	}
	m := n.counts[source]
	if m == nil {
		if len(n.counts) >= maxNoiseSources {
			source = "other"
			m = n.counts[source]
		}
		if m == nil {
			m = map[string]int{}
			n.counts[source] = m
		}
	}
	m[kind]++
}

// Take returns the counts so far, source address -> kind -> count, and
// starts afresh.
func (n *Noise) Take() map[string]map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.counts
	n.counts = nil
	return c
}
