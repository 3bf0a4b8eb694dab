package upstream

import (
	"sort"
	"time"

	"github.com/gomux/gomux/shim"
)

// pruneLoop expires idle temp dirs and drops idle per-target Ansible state
// until the pool closes, so neither grows with every target and alias
// ever reached.
func (p *Pool) pruneLoop() {
	every := min(p.limits.TempDirIdle, p.limits.ShimStateIdle) / 2
	every = max(min(every, time.Minute), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			p.prune(now)
		}
	}
}

// prune expires idle temp dirs everywhere and drops the state of each
// (target, user) that holds nothing, has no connection in use and has been
// idle for ShimStateIdle.
func (p *Pool) prune(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, h := range p.hosts {
		idle, empty := h.Expire(now)
		if empty && idle > p.limits.ShimStateIdle && !p.inUseLocked(k) {
			p.dropHostLocked(k, h, "idle")
		}
	}
}

// inUseLocked reports whether a lease holds the connection of k, whose
// users may hold its Host.
func (p *Pool) inUseLocked(k poolKey) bool {
	u := p.conns[k]
	return u != nil && u.refs > 0
}

// evictLocked drops the n least recently used Hosts no lease holds.
func (p *Pool) evictLocked(n int) {
	type cand struct {
		k    poolKey
		h    *shim.Host
		idle time.Duration
	}
	now := time.Now()
	var cs []cand
	for k, h := range p.hosts {
		if p.inUseLocked(k) {
			continue
		}
		idle, _ := h.Expire(now)
		cs = append(cs, cand{k, h, idle})
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].idle > cs[j].idle })
	for _, c := range cs[:min(n, len(cs))] {
		p.dropHostLocked(c.k, c.h, "max_shim_states")
	}
}

func (p *Pool) dropHostLocked(k poolKey, h *shim.Host, why string) {
	delete(p.hosts, k)
	c := h.Counters()
	p.retired.RoundTrips += c.RoundTrips
	p.retired.Local += c.Local
	h.Drop()
	p.log.Info().Str("event", EventShimStateDropped).Str("target", k.host).Str("addr", k.dial).Str("remote_user", k.user).Str("reason", why).
		Msg("Ansible state of an unused target dropped")
}

// ShimStates is the number of (target, user) Ansible states held, for
// tests and metrics.
func (p *Pool) ShimStates() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.hosts)
}

// ShimTotals sums what the shim did on every target since the pool
// started, dropped states included, for metrics.
func (p *Pool) ShimTotals() shim.Counters {
	p.mu.Lock()
	hosts := make([]*shim.Host, 0, len(p.hosts))
	for _, h := range p.hosts {
		hosts = append(hosts, h)
	}
	t := p.retired
	p.mu.Unlock()
	for _, h := range hosts {
		c := h.Counters()
		t.RoundTrips += c.RoundTrips
		t.Local += c.Local
	}
	return t
}
