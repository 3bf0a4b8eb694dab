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

// applyDefaults fills zero fields with proxy.LimitsConfig's defaults.
func (l *Limits) applyDefaults() {
	setDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	setInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
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
