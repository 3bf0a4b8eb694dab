package proxy

import (
	"context"
	"maps"
	"slices"
	"time"
)

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
	counts := s.noise.Take()
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
