package proxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AdmissionLimits bound what clients may hold in gomux, before and after
// login, as sshd's LoginGraceTime, MaxStartups and MaxSessions do, and
// their memory. A client over a limit is refused with a message and a
// log line; the others are unaffected. They are the limits section's
// keys a reload replaces: a lowered cap refuses new work until old work
// ends. Every field has a default; none can be turned off, only raised.
type AdmissionLimits struct {
	// LoginGraceTime closes a connection not authenticated in this time.
	// Default 60s.
	LoginGraceTime Duration `yaml:"login_grace_time"`
	// MaxStartups is "start:rate:full" for unauthenticated connections,
	// as sshd's: from start on, a new one is dropped with probability
	// rate% rising linearly to 100% at full. Default "100:30:1000".
	MaxStartups string `yaml:"max_startups"`
	// PerSourceMaxStartups caps the unauthenticated connections of one
	// source address. It must be below MaxStartups' start, so that one
	// source's stalled connections cannot begin the early drop for
	// everyone. Default 50 (or start-1 where that is lower).
	PerSourceMaxStartups int `yaml:"per_source_max_startups"`
	// MaxConnectionsPerUser caps one person's authenticated connections.
	// Default 500.
	MaxConnectionsPerUser int `yaml:"max_connections_per_user"`
	// MaxConnectionsPerSource caps one source address's connections,
	// authenticated or not. Default 1000.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
	// MaxChannelsPerConnection caps the open channels of one SSH
	// connection: forwards on a front connection, sessions and forwards
	// on an inner one (sshd's MaxSessions). Default 64.
	MaxChannelsPerConnection int `yaml:"max_channels_per_connection"`
	// MaxChannelsPerUser caps one person's open channels, front and inner
	// together. Default 2000.
	MaxChannelsPerUser int `yaml:"max_channels_per_user"`
	// MaxChannelsPerSource caps one source address's open channels.
	// Default 4000.
	MaxChannelsPerSource int `yaml:"max_channels_per_source"`
	// PersonMemoryMiB is one person's share of gomux's memory, in MiB:
	// every channel they hold open counts 4 MiB (the 2 MiB receive window
	// x/crypto/ssh gives each channel, which a peer may fill whether or
	// not anything reads it, and as much for the copies on the way),
	// plus the uploads and stdin gomux holds for them, each open sftp
	// file (64 KiB) and each recording (8 KiB). A new channel or
	// forward past it is refused to that person alone. Default 512, 128
	// channels: Ansible with forks=50 and ControlPersist holds about 2 a
	// fork (the jump forward and the step's session; a sftp between).
	PersonMemoryMiB int `yaml:"person_memory_mib"`
	// MaxMemoryMiB is the process's soft ceiling, in MiB: above it (what
	// the channels and uploads of everyone may hold, or what the Go
	// runtime holds now) new logins and channels are refused for
	// everyone rather than gomux be killed, and the Go runtime collects
	// harder before it (its soft memory limit). Default 0: 80% of the
	// cgroup's memory.max when gomux runs under one (systemd MemoryMax,
	// a Kubernetes limit), else no ceiling. Both set: the lower.
	MaxMemoryMiB int `yaml:"max_memory_mib"`
}

// LimitsConfig is the limits section's keys only a restart changes: they
// size the upstream pool, its login guard and the shim's state, which are
// made once with them. Every field has a default; none can be turned off,
// only raised.
type LimitsConfig struct {
	// MaxStagedMiB is the memory, in MiB, for uploads gomux holds back:
	// staged files of every target and uploads still arriving. An upload
	// beyond it goes to the target as it arrives. Default 512.
	MaxStagedMiB int `yaml:"max_staged_mib"`
	// MaxSFTPHandles caps the open files of one sftp session. Default 256.
	MaxSFTPHandles int `yaml:"max_sftp_handles"`
	// TempDirIdle forgets an Ansible temp dir, with what is staged in it,
	// after this long unused. Default 30m.
	TempDirIdle Duration `yaml:"temp_dir_idle"`
	// ShimStateIdle drops the Ansible state of a (target, user) unused for
	// this long. Default 1h.
	ShimStateIdle Duration `yaml:"shim_state_idle"`
	// MaxShimStates caps how many (target, user) states are kept; beyond
	// it the least recently used unused one is dropped. Default 10000.
	MaxShimStates int `yaml:"max_shim_states"`
	// AgentReplyTimeout is how long gomux waits for any one reply from an
	// agent (a file operation, a chunk, a command's start) before it
	// fails that request. Default 2m.
	AgentReplyTimeout Duration `yaml:"agent_reply_timeout"`
	// AgentCacheDays is how long, in days, an agent or blob in a target's
	// agent cache (~/.cache/gomux) may go unused before the next agent
	// start there removes it: every start marks its own agent used, every
	// blob read its blob, so a rolling upgrade's older agents go once no
	// gomux runs them. Default 30.
	AgentCacheDays int `yaml:"agent_cache_days"`
	// LoginBackoff is how long gomux refuses, without contacting the
	// target, a new upstream login after one the target refused: for the
	// same (target, remote user, credential), and for the same person on
	// the same target under any user. It doubles with each refusal in a
	// row up to LoginBackoffMax; a success clears it. gomux logs in to
	// every target from one address, and targets that ban a source
	// after failed logins (PerSourcePenalties, fail2ban) would ban it
	// for everyone. Default 60s.
	LoginBackoff Duration `yaml:"login_backoff"`
	// LoginBackoffMax caps LoginBackoff's doubling; a backoff that ended
	// this long ago is forgotten. Default 1h.
	LoginBackoffMax Duration `yaml:"login_backoff_max"`
	// MaxLoginBackoffs caps the backoffs remembered; beyond it those
	// ending soonest are dropped. Default 10000.
	MaxLoginBackoffs int `yaml:"max_login_backoffs"`
	// UpstreamDialsPerSecond refills one person's token bucket of new
	// upstream connections (a pooled connection reused costs none), so no
	// one person can make gomux hammer targets. Default 200.
	UpstreamDialsPerSecond int `yaml:"upstream_dials_per_second"`
	// UpstreamDialBurst is that bucket's size. Default 1000.
	UpstreamDialBurst int `yaml:"upstream_dial_burst"`
}

func (l *AdmissionLimits) applyDefaults() {
	setDur, setInt := defaultSetters()
	setDur(&l.LoginGraceTime, 60*time.Second)
	if l.MaxStartups == "" {
		l.MaxStartups = "100:30:1000"
	}
	if su, err := parseStartups(l.MaxStartups); err == nil {
		setInt(&l.PerSourceMaxStartups, max(min(50, su.start-1), 1))
	}
	setInt(&l.MaxConnectionsPerUser, 500)
	setInt(&l.MaxConnectionsPerSource, 1000)
	setInt(&l.MaxChannelsPerConnection, 64)
	setInt(&l.MaxChannelsPerUser, 2000)
	setInt(&l.MaxChannelsPerSource, 4000)
	setInt(&l.PersonMemoryMiB, 512)
}

func (l *LimitsConfig) applyDefaults() {
	setDur, setInt := defaultSetters()
	setInt(&l.MaxStagedMiB, 512)
	setInt(&l.MaxSFTPHandles, 256)
	setDur(&l.TempDirIdle, 30*time.Minute)
	setDur(&l.ShimStateIdle, time.Hour)
	setInt(&l.MaxShimStates, 10000)
	setDur(&l.AgentReplyTimeout, 2*time.Minute)
	setInt(&l.AgentCacheDays, 30)
	setDur(&l.LoginBackoff, time.Minute)
	setDur(&l.LoginBackoffMax, time.Hour)
	setInt(&l.MaxLoginBackoffs, 10000)
	setInt(&l.UpstreamDialsPerSecond, 200)
	setInt(&l.UpstreamDialBurst, 1000)
}

// defaultSetters set a duration or a count to its default when zero.
func defaultSetters() (setDur func(*Duration, time.Duration), setInt func(*int, int)) {
	setDur = func(d *Duration, v time.Duration) {
		if *d == 0 {
			*d = Duration(v)
		}
	}
	setInt = func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	return setDur, setInt
}

func (l *AdmissionLimits) validate() error {
	su, err := parseStartups(l.MaxStartups)
	if err != nil {
		return &FieldError{"limits.max_startups", err}
	}
	if l.PerSourceMaxStartups >= su.start && su.start > 1 {
		return &FieldError{"limits.per_source_max_startups", fmt.Errorf("%d is not below max_startups' start (%d): one source could start the early drop for everyone", l.PerSourceMaxStartups, su.start)}
	}
	return positive(map[string]int{
		"per_source_max_startups":     l.PerSourceMaxStartups,
		"max_connections_per_user":    l.MaxConnectionsPerUser,
		"max_connections_per_source":  l.MaxConnectionsPerSource,
		"max_channels_per_connection": l.MaxChannelsPerConnection,
		"max_channels_per_user":       l.MaxChannelsPerUser,
		"max_channels_per_source":     l.MaxChannelsPerSource,
		"person_memory_mib":           l.PersonMemoryMiB,
		"max_memory_mib":              l.MaxMemoryMiB,
	})
}

func (l *LimitsConfig) validate() error {
	return positive(map[string]int{
		"max_staged_mib":            l.MaxStagedMiB,
		"max_sftp_handles":          l.MaxSFTPHandles,
		"max_shim_states":           l.MaxShimStates,
		"agent_cache_days":          l.AgentCacheDays,
		"max_login_backoffs":        l.MaxLoginBackoffs,
		"upstream_dials_per_second": l.UpstreamDialsPerSecond,
		"upstream_dial_burst":       l.UpstreamDialBurst,
	})
}

// positive refuses a negative value among the limits named.
func positive(limits map[string]int) error {
	for name, v := range limits {
		if v < 0 {
			return &FieldError{"limits." + name, errors.New("must be positive")}
		}
	}
	return nil
}

// startups is a parsed MaxStartups.
type startups struct{ start, rate, full int }

func parseStartups(s string) (startups, error) {
	f := strings.Split(s, ":")
	var v []int
	for _, x := range f {
		n, err := strconv.Atoi(x)
		if err != nil || n < 0 {
			return startups{}, fmt.Errorf("%q is not start:rate:full (or one number)", s)
		}
		v = append(v, n)
	}
	switch len(v) {
	case 1:
		return startups{v[0], 100, v[0]}, nil
	case 3:
		if v[0] < 1 || v[1] > 100 || v[2] < v[0] {
			return startups{}, fmt.Errorf("%q: want 1 <= start <= full and rate <= 100", s)
		}
		return startups{v[0], v[1], v[2]}, nil
	}
	return startups{}, fmt.Errorf("%q is not start:rate:full (or one number)", s)
}

// errLimit is a client over one of the limits; the message says which.
type errLimit struct{ msg string }

func (e *errLimit) Error() string { return e.msg }

// limiter counts what clients hold, by person and by source address. It is
// the one place the limits are decided, so every refusal reads alike.
type limiter struct {
	cfg AdmissionLimits
	su  startups

	mu       sync.Mutex
	unauth   int
	unauthBy map[string]int
	conns    map[string]int // "user:NAME" and "source:ADDR"
	chans    map[string]int
	rand     func(n int) int
	mem      memAccount
}

func newLimiter(cfg AdmissionLimits) *limiter {
	su, _ := parseStartups(cfg.MaxStartups) // validated with the config
	return &limiter{cfg: cfg, su: su, unauthBy: map[string]int{}, conns: map[string]int{}, chans: map[string]int{}, rand: rand.IntN,
		mem: newMemAccount(cfg)}
}

// reconfigure applies new limits to what is admitted from now on; what
// clients hold is still counted, so a lowered cap refuses new
// connections and channels until enough old ones have ended, and closes
// none.
func (l *limiter) reconfigure(cfg AdmissionLimits) {
	su, _ := parseStartups(cfg.MaxStartups) // validated with the config
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg, l.su = cfg, su
	l.mem.configure(cfg)
}

// sourceOf is the address part of a peer, the unit of per-source limits.
func sourceOf(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// startup admits a new, unauthenticated connection from source, counting
// it against MaxStartups and the source's connections. done is called
// when it authenticates or closes (either gives the startup slot back);
// closed when it closes (which gives the connection slot back).
func (l *limiter) startup(source string) (done, closed func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.unauth; n >= l.su.start {
		drop := n >= l.su.full
		if !drop {
			p := l.su.rate + (100-l.su.rate)*(n-l.su.start)/max(l.su.full-l.su.start, 1)
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
func (l *limiter) login(user string) (release func(), err error) {
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

// chanCount is one SSH connection's open channels.
type chanCount struct {
	mu sync.Mutex
	n  int
}

// channel admits a new channel of user from source on a connection whose
// channels cc counts; release gives it back when the channel ends.
func (l *limiter) channel(user, source string, cc *chanCount) (release func(), err error) {
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
