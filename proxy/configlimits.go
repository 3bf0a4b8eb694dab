package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/gomux/gomux/proxy/admission"
	"github.com/gomux/gomux/proxy/upstream"
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
	if su, err := admission.ParseStartups(l.MaxStartups); err == nil {
		setInt(&l.PerSourceMaxStartups, max(min(50, su.Start-1), 1))
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
	// The pool's limits default to the pool's own defaults.
	d := upstream.DefaultLimits()
	setDur(&l.TempDirIdle, d.TempDirIdle)
	setDur(&l.ShimStateIdle, d.ShimStateIdle)
	setInt(&l.MaxShimStates, d.MaxShimStates)
	setDur(&l.AgentReplyTimeout, d.AgentReplyTimeout)
	setInt(&l.AgentCacheDays, d.AgentCacheDays)
	setDur(&l.LoginBackoff, d.LoginBackoff)
	setDur(&l.LoginBackoffMax, d.LoginBackoffMax)
	setInt(&l.MaxLoginBackoffs, d.MaxLoginBackoffs)
	setInt(&l.UpstreamDialsPerSecond, d.UpstreamDialsPerSecond)
	setInt(&l.UpstreamDialBurst, d.UpstreamDialBurst)
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
	su, err := admission.ParseStartups(l.MaxStartups)
	if err != nil {
		return &FieldError{"limits.max_startups", err}
	}
	if l.PerSourceMaxStartups >= su.Start && su.Start > 1 {
		return &FieldError{"limits.per_source_max_startups", fmt.Errorf("%d is not below max_startups' start (%d): one source could start the early drop for everyone", l.PerSourceMaxStartups, su.Start)}
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

// admissionLimits is what the limiter is given from the limits section:
// admission cannot import proxy, so it has its own plain type.
func admissionLimits(l AdmissionLimits) admission.Limits {
	return admission.Limits{
		MaxStartups: l.MaxStartups, PerSourceMaxStartups: l.PerSourceMaxStartups,
		MaxConnectionsPerUser: l.MaxConnectionsPerUser, MaxConnectionsPerSource: l.MaxConnectionsPerSource,
		MaxChannelsPerConnection: l.MaxChannelsPerConnection, MaxChannelsPerUser: l.MaxChannelsPerUser,
		MaxChannelsPerSource: l.MaxChannelsPerSource,
		PersonMemoryMiB:      l.PersonMemoryMiB, MaxMemoryMiB: l.MaxMemoryMiB,
	}
}

// MemoryCeiling is the process's soft memory ceiling in bytes under cfg:
// limits.max_memory_mib, and 80% of the cgroup's memory.max when gomux
// runs under one (the lower when both are set); 0 for none. gomux serve
// gives the Go runtime the same figure as its soft memory limit.
func MemoryCeiling(cfg AdmissionLimits) int64 {
	return admission.MemoryCeiling(admissionLimits(cfg))
}
