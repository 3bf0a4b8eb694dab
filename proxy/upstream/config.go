package upstream

import (
	"time"

	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/shim"
)

// PoolConfig is what the upstream pool needs from the operator's config.
// Package proxy fills it from its own config types, which this package
// cannot import (proxy depends on upstream, not the other way round).
type PoolConfig struct {
	Upstream Config
	StateDir string
	// Agents are the agent binaries by GOARCH; empty means every target is
	// served in fallback mode.
	Agents map[string]dist.Binary
	// Limits bound the per-target Ansible state and agent replies.
	Limits Limits
	// Budget is the staging memory shared by every target.
	Budget *shim.Budget
	// Metrics records dials and agent starts; nil records nothing.
	Metrics Metrics
}

// Config is the part of the operator's upstream config the pool reads:
// the fields of the same names in proxy.UpstreamConfig, whose comments
// say what each means. It is fixed for the pool's life (these fields
// need a restart).
type Config struct {
	IdentityFiles       []string
	UseSSHAgent         bool
	KnownHosts          []string
	TrustOnFirstUse     bool
	ConnectTimeout      time.Duration
	KeepaliveInterval   time.Duration
	KeepaliveCountMax   int
	IdleTimeout         time.Duration
	Agent               bool
	UserCA              string
	UserCertValidity    time.Duration
	UserPrincipalPrefix string
	Credentials         map[string]Credential
}

// Credential is one named way of logging in to targets
// (proxy.Credential): which one a connection uses is part of the pool's
// key, so targets never see a credential their rule does not name.
type Credential struct {
	IdentityFiles       []string
	UseSSHAgent         bool
	UserCA              string
	UserPrincipalPrefix string
}

// DefaultCredential names the credential made of Config's own
// IdentityFiles, UseSSHAgent and UserCA; proxy.DefaultCredential is this name.
const DefaultCredential = "default"

// Limits are the limits the pool enforces (the fields of the same names
// in proxy.LimitsConfig). A zero field takes the config's default, so a
// pool made without a config (tests, gomux check) behaves as one made
// with the defaults.
type Limits struct {
	TempDirIdle            time.Duration
	ShimStateIdle          time.Duration
	MaxShimStates          int
	AgentReplyTimeout      time.Duration
	AgentCacheDays         int
	LoginBackoff           time.Duration
	LoginBackoffMax        time.Duration
	MaxLoginBackoffs       int
	UpstreamDialsPerSecond int
	UpstreamDialBurst      int
}

// DefaultLimits are the values a zero field of Limits takes, and the
// defaults of proxy.LimitsConfig's fields of the same names: written once.
func DefaultLimits() Limits {
	return Limits{
		TempDirIdle:            30 * time.Minute,
		ShimStateIdle:          time.Hour,
		MaxShimStates:          10000,
		AgentReplyTimeout:      2 * time.Minute,
		AgentCacheDays:         30,
		LoginBackoff:           time.Minute,
		LoginBackoffMax:        time.Hour,
		MaxLoginBackoffs:       10000,
		UpstreamDialsPerSecond: 200,
		UpstreamDialBurst:      1000,
	}
}

// applyDefaults fills zero fields from DefaultLimits.
func (l *Limits) applyDefaults() {
	d := DefaultLimits()
	setDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setInt := func(n *int, def int) {
		if *n == 0 {
			*n = def
		}
	}
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

// Metrics is what the pool counts, implemented by proxy's Prometheus
// metrics: an interface, so this package needs no registry and a pool
// without one (tests, gomux check) counts nothing.
type Metrics interface {
	// UpstreamDial counts one connection attempt and its result.
	UpstreamDial(err error)
	// AgentStart counts one agent start and its result.
	AgentStart(err error)
	// AgentUpload counts one agent binary of size bytes uploaded.
	AgentUpload(size int)
	// AgentFallback counts one upstream served without the agent.
	AgentFallback()
}

// noMetrics counts nothing.
type noMetrics struct{}

func (noMetrics) UpstreamDial(error) {}
func (noMetrics) AgentStart(error)   {}
func (noMetrics) AgentUpload(int)    {}
func (noMetrics) AgentFallback()     {}
