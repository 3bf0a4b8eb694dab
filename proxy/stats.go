package proxy

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"strconv"
	"time"
)

// LogStats logs, every interval until ctx ends, what gomux itself holds:
// goroutines, heap in use, resident memory, open files and pooled
// upstream connections. A soak test reads these lines; an operator sees a
// leak as a slope in them.
func (s *Server) LogStats(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		ev := s.log.Info().Str("event", EventStats).Int("goroutines", runtime.NumGoroutine()).
			Uint64("heap_inuse", ms.HeapInuse).Int("upstreams", s.pool.Len())
		if rss, ok := selfRSS(); ok {
			ev = ev.Int64("rss", rss)
		}
		if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
			ev = ev.Int("open_files", len(fds))
		}
		ev.Msg("gomux stats")
	}
}

// selfRSS reads this process's resident set size in bytes from /proc.
func selfRSS() (int64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := bytes.Fields(v)
			if len(f) == 0 {
				return 0, false
			}
			kb, err := strconv.ParseInt(string(f[0]), 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}
