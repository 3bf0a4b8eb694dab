package admission

import (
	"context"
	"fmt"
	"os"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// channelCost is what one open SSH channel counts against its person's
// share: x/crypto/ssh gives every channel a fixed 2 MiB receive window,
// and what the peer sends into it waits in gomux's memory until it is
// read; as much again is counted for the copies those bytes went through
// on the way (the front channel that carried the inner session's
// packets) until the collector frees them. Measured: channels filled by
// a client whose command never reads grew gomux's RSS by about 3 MiB
// each. It is counted for every open channel, full or not, so no one can
// first open cheap channels and then fill them.
const channelCost = 4 << 20

// memAccount is gomux's memory by person: what each person's channels,
// held stdin and staged uploads may hold, against their share, and all of
// it against the process's ceiling. gomux is one process for everyone:
// one person's excess must hurt that person, and the process must refuse
// new work before it is killed. Its methods are called with the
// Limiter's lock held.
type memAccount struct {
	share   int64 // bytes per person
	ceiling int64 // bytes for the process; 0: none
	held    map[string]int64
	total   int64
	// usage is what the Go runtime holds now; replaced in tests.
	usage func() int64
}

func newMemAccount(cfg Limits) memAccount {
	m := memAccount{held: map[string]int64{}, usage: runtimeMemory}
	m.configure(cfg)
	return m
}

// configure applies the share and ceiling; what is held stays counted.
func (m *memAccount) configure(cfg Limits) {
	m.share = int64(cfg.PersonMemoryMiB) << 20
	m.ceiling = MemoryCeiling(cfg)
}

// holdLocked counts n more bytes for person, or says why not: their
// share is full, or the process is at its ceiling.
func (m *memAccount) holdLocked(person string, n int64) error {
	if m.share > 0 && m.held[person]+n > m.share {
		return &errLimit{fmt.Sprintf("gomux: %s holds their memory share (%d MiB, limits.person_memory_mib: %d MiB held by open channels at 4 MiB each, uploads and stdin): close some sessions or forwards",
			person, m.share>>20, m.held[person]>>20)}
	}
	if err := m.ceilingLocked(n); err != nil {
		return err
	}
	m.held[person] += n
	m.total += n
	return nil
}

// freeLocked gives back n bytes person held.
func (m *memAccount) freeLocked(person string, n int64) {
	m.total -= n
	if m.held[person] <= n {
		delete(m.held, person)
		return
	}
	m.held[person] -= n
}

// ceilingLocked says whether n more bytes would take the process over
// its ceiling: by what everyone may hold, or by what it holds now.
func (m *memAccount) ceilingLocked(n int64) error {
	if m.ceiling <= 0 {
		return nil
	}
	if used := max(m.total, m.usage()); used+n > m.ceiling {
		return &errLimit{fmt.Sprintf("gomux is at its memory ceiling (%d MiB, limits.max_memory_mib): new logins and channels wait until others end; try again later",
			m.ceiling>>20)}
	}
	return nil
}

// holdChannel counts one open channel of person against their share and
// the ceiling; free gives it back, once, whoever calls it first: the
// channel's handler when it returns, or earlier the session whose client
// closed the channel (its buffers are gone then, while the handler may
// still wait for the target).
func (l *Limiter) holdChannel(person string) (free func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.mem.holdLocked(person, channelCost); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.mem.freeLocked(person, channelCost)
		})
	}, nil
}

// OpenChannel admits a new channel of person from source on a connection
// whose channels cc counts: within the channel caps (channel) and the
// person's memory share (holdChannel). release gives both back when the
// handler ends; freeMemory gives the memory back earlier, once the
// channel itself has closed (release then skips it).
func (l *Limiter) OpenChannel(person, source string, cc *ChanCount) (release, freeMemory func(), err error) {
	count, err := l.channel(person, source, cc)
	if err != nil {
		return nil, nil, err
	}
	free, err := l.holdChannel(person)
	if err != nil {
		count()
		return nil, nil, err
	}
	return func() { free(); count() }, free, nil
}

// channelMemoryKey holds, in a channel handler's context, the function
// that gives the channel's memory back.
type channelMemoryKey struct{}

// WithChannelMemory gives a handler's context the function that frees its
// channel's memory.
func WithChannelMemory(ctx context.Context, free func()) context.Context {
	return context.WithValue(ctx, channelMemoryKey{}, free)
}

// FreeChannelMemory gives back the memory of the channel ctx serves, if
// it is counted.
func FreeChannelMemory(ctx context.Context) {
	if free, ok := ctx.Value(channelMemoryKey{}).(func()); ok {
		free()
	}
}

// Hold counts n bytes of stdin or an upload that gomux holds for person,
// false when it would pass their share or the ceiling: the caller then
// streams instead of holding.
func (l *Limiter) Hold(person string, n int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mem.holdLocked(person, n) == nil
}

// Free gives back what Hold counted.
func (l *Limiter) Free(person string, n int64) {
	if n == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.mem.freeLocked(person, n)
}

// heldBy is what person holds now, for logs and tests.
func (l *Limiter) heldBy(person string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mem.held[person]
}

// runtimeMemory is what the Go runtime has mapped and not returned to
// the system: close to the resident size of a Go program.
func runtimeMemory() int64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	rtmetrics.Read(s)
	return int64(s[0].Value.Uint64() - s[1].Value.Uint64())
}

// MemoryCeiling is the process's soft memory ceiling in bytes under cfg:
// limits.max_memory_mib, and 80% of the cgroup's memory.max when gomux
// runs under one (the lower when both are set); 0 for none. gomux serve
// gives the Go runtime the same figure as its soft memory limit.
func MemoryCeiling(cfg Limits) int64 {
	c := int64(cfg.MaxMemoryMiB) << 20
	if g := cgroupMemoryMax(); g > 0 {
		g = g / 10 * 8
		if c == 0 || g < c {
			c = g
		}
	}
	return c
}

// cgroupMemoryMax reads this process's cgroup memory limit: memory.max
// (cgroup v2) or memory.limit_in_bytes (v1); 0 when there is none.
func cgroupMemoryMax() int64 {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var file string
		switch {
		case f[0] == "0" && f[1] == "":
			file = "/sys/fs/cgroup" + strings.TrimSuffix(f[2], "/") + "/memory.max"
		case slices.Contains(strings.Split(f[1], ","), "memory"):
			file = "/sys/fs/cgroup/memory" + strings.TrimSuffix(f[2], "/") + "/memory.limit_in_bytes"
		default:
			continue
		}
		v, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		// "max" (v2) and v1's page-rounded maximum mean no limit.
		if n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64); err == nil && n < 1<<60 {
			return n
		}
	}
	return 0
}

// Ceiling is the memory ceiling in force, for its gauge.
func (l *Limiter) Ceiling() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mem.ceiling
}
