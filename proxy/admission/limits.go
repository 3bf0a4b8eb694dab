package admission

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
)

// Limits are the caps the Limiter enforces: the fields of the same names
// in proxy.AdmissionLimits, whose comments say what each means. Package
// proxy fills them from its config, which this package cannot import;
// the login grace time is given per connection (Front.StartGrace).
type Limits struct {
	MaxStartups              string
	PerSourceMaxStartups     int
	MaxConnectionsPerUser    int
	MaxConnectionsPerSource  int
	MaxChannelsPerConnection int
	MaxChannelsPerUser       int
	MaxChannelsPerSource     int
	PersonMemoryMiB          int
	MaxMemoryMiB             int
}

// Startups is a parsed MaxStartups: the config checks it with
// ParseStartups, and derives per_source_max_startups' default from Start.
type Startups struct{ Start, Rate, Full int }

// ParseStartups parses a MaxStartups, "start:rate:full" or one number, as
// sshd's.
func ParseStartups(s string) (Startups, error) {
	f := strings.Split(s, ":")
	var v []int
	for _, x := range f {
		n, err := strconv.Atoi(x)
		if err != nil || n < 0 {
			return Startups{}, fmt.Errorf("%q is not start:rate:full (or one number)", s)
		}
		v = append(v, n)
	}
	switch len(v) {
	case 1:
		return Startups{v[0], 100, v[0]}, nil
	case 3:
		if v[0] < 1 || v[1] > 100 || v[2] < v[0] {
			return Startups{}, fmt.Errorf("%q: want 1 <= start <= full and rate <= 100", s)
		}
		return Startups{v[0], v[1], v[2]}, nil
	}
	return Startups{}, fmt.Errorf("%q is not start:rate:full (or one number)", s)
}

// errLimit is a client over one of the limits; the message says which.
type errLimit struct{ msg string }

func (e *errLimit) Error() string { return e.msg }

// Limiter counts what clients hold, by person and by source address. It is
// the one place the limits are decided, so every refusal reads alike.
type Limiter struct {
	cfg Limits
	su  Startups

	mu       sync.Mutex
	unauth   int
	unauthBy map[string]int
	conns    map[string]int // "user:NAME" and "source:ADDR"
	chans    map[string]int
	rand     func(n int) int
	mem      memAccount
}

// NewLimiter makes the limiter of one Server; cfg has been validated.
func NewLimiter(cfg Limits) *Limiter {
	su, _ := ParseStartups(cfg.MaxStartups) // validated with the config
	return &Limiter{cfg: cfg, su: su, unauthBy: map[string]int{}, conns: map[string]int{}, chans: map[string]int{}, rand: rand.IntN,
		mem: newMemAccount(cfg)}
}

// Reconfigure applies new limits to what is admitted from now on; what
// clients hold is still counted, so a lowered cap refuses new
// connections and channels until enough old ones have ended, and closes
// none.
func (l *Limiter) Reconfigure(cfg Limits) {
	su, _ := ParseStartups(cfg.MaxStartups) // validated with the config
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg, l.su = cfg, su
	l.mem.configure(cfg)
}

// SourceOf is the address part of a peer, the unit of per-source limits.
func SourceOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// Startup admits a new, unauthenticated connection from source, counting
// it against MaxStartups and the source's connections. done is called
// when it authenticates or closes (either gives the startup slot back);
// closed when it closes (which gives the connection slot back).
func (l *Limiter) Startup(source string) (done, closed func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.unauth; n >= l.su.Start {
		drop := n >= l.su.Full
		if !drop {
			p := l.su.Rate + (100-l.su.Rate)*(n-l.su.Start)/max(l.su.Full-l.su.Start, 1)
			drop = l.rand(100) < p
		}
		if drop {
			return nil, nil, &errLimit{fmt.Sprintf("gomux: too many unauthenticated connections (%d, max_startups %s)", n, l.cfg.MaxStartups)}
		}
	}
	if l.unauthBy[source] >= l.cfg.PerSourceMaxStartups {
		return nil, nil, &errLimit{fmt.Sprintf("gomux: too many unauthenticated connections from %s (per_source_max_startups %d)", source, l.cfg.PerSourceMaxStartups)}
	}
	sk := "source:" + source
	if l.conns[sk] >= l.cfg.MaxConnectionsPerSource {
		return nil, nil, &errLimit{fmt.Sprintf("gomux: too many connections from %s (max_connections_per_source %d)", source, l.cfg.MaxConnectionsPerSource)}
	}
	l.unauth++
	l.unauthBy[source]++
	l.conns[sk]++
	var once, once2 sync.Once
	done = func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.unauth--
			decr(l.unauthBy, source)
		})
	}
	closed = func() {
		done()
		once2.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			decr(l.conns, sk)
		})
	}
	return done, closed, nil
}

// login counts an authenticated connection of user; release gives it back.
func (l *Limiter) login(user string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := "user:" + user
	if l.conns[k] >= l.cfg.MaxConnectionsPerUser {
		return nil, &errLimit{fmt.Sprintf("gomux: %s has too many connections (max_connections_per_user %d)", user, l.cfg.MaxConnectionsPerUser)}
	}
	if err := l.mem.ceilingLocked(channelCost); err != nil { // room for its first channel
		return nil, err
	}
	l.conns[k]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			decr(l.conns, k)
		})
	}, nil
}

// ChanCount is one SSH connection's open channels.
type ChanCount struct {
	mu sync.Mutex
	n  int
}

// channel admits a new channel of user from source on a connection whose
// channels cc counts; release gives it back when the channel ends.
func (l *Limiter) channel(user, source string, cc *ChanCount) (release func(), err error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	uk, sk := "user:"+user, "source:"+source
	l.mu.Lock()
	defer l.mu.Unlock()
	if cc.n >= l.cfg.MaxChannelsPerConnection {
		return nil, &errLimit{fmt.Sprintf("gomux: too many channels on this connection (max_channels_per_connection %d)", l.cfg.MaxChannelsPerConnection)}
	}
	if l.chans[uk] >= l.cfg.MaxChannelsPerUser {
		return nil, &errLimit{fmt.Sprintf("gomux: %s has too many channels open (max_channels_per_user %d)", user, l.cfg.MaxChannelsPerUser)}
	}
	if l.chans[sk] >= l.cfg.MaxChannelsPerSource {
		return nil, &errLimit{fmt.Sprintf("gomux: too many channels open from %s (max_channels_per_source %d)", source, l.cfg.MaxChannelsPerSource)}
	}
	cc.n++
	l.chans[uk]++
	l.chans[sk]++
	var once sync.Once
	return func() {
		once.Do(func() {
			cc.mu.Lock()
			cc.n--
			cc.mu.Unlock()
			l.mu.Lock()
			defer l.mu.Unlock()
			decr(l.chans, uk)
			decr(l.chans, sk)
		})
	}, nil
}

// decr lowers a count, deleting it at zero so the maps hold only what is
// in use.
func decr(m map[string]int, k string) {
	if m[k] <= 1 {
		delete(m, k)
		return
	}
	m[k]--
}

// Limits are the limits in force, for tests of a reload.
func (l *Limiter) Limits() Limits {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cfg
}
