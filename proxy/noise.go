package proxy

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// noise counts what unauthenticated connections cause (handshakes that
// fail, connections dropped by the startup caps, login grace timeouts)
// per source address, so that a flood is a few lines a minute in the log
// and cannot push the audit events of real logins out of a rate-limited
// journal. LogNoise writes the counts.
type noise struct {
	mu     sync.Mutex
	counts map[string]map[string]int // source address -> kind -> count
}

// Kinds of unauthenticated noise.
const (
	noiseHandshake = "handshake_failed"
	noiseDropped   = "dropped_before_login"
	noiseGrace     = "login_grace_expired"
)

// maxNoiseSources bounds the table between two flushes: a flood from
// more addresses than this is counted under one "other" source.
const maxNoiseSources = 4096

// add counts one event of kind from source (an IP address).
func (n *noise) add(source, kind string) {
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

// take returns the counts so far and starts afresh.
func (n *noise) take() map[string]map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.counts
	n.counts = nil
	return c
}

// LogNoise writes, every interval until ctx ends (and once more then),
// one line per source address that caused unauthenticated noise, with
// its counts by kind.
func (s *Server) LogNoise(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.flushNoise(interval)
			return
		case <-t.C:
			s.flushNoise(interval)
		}
	}
}

func (s *Server) flushNoise(interval time.Duration) {
	counts := s.noise.take()
	for _, src := range slices.Sorted(maps.Keys(counts)) {
		ev := s.log.Info().Str("event", EventFrontNoise).Str("source", src).Dur("interval", interval)
		total := 0
		for kind, n := range counts[src] {
			ev = ev.Int(kind, n)
			total += n
		}
		ev.Int("count", total).Msg("unauthenticated connections from this source")
	}
}
