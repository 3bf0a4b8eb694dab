package proxy

import (
	"net"
	"strconv"

	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/proxy/upstream"
	"github.com/gomux/gomux/shim"
)

// errShuttingDown is what a request that arrives while gomux stops is
// refused with: the pool's own, so one test (errors.Is) fits both.
var errShuttingDown = upstream.ErrShuttingDown

// poolConfig is what the upstream pool is given from gomux's config:
// upstream cannot import proxy, so it has its own plain types. budget and
// m may be nil (gomux check stages nothing and counts nothing).
func poolConfig(cfg *StartConfig, agents map[string]dist.Binary, budget *shim.Budget, m *metrics) upstream.PoolConfig {
	u, l := cfg.Upstream, cfg.Limits
	creds := make(map[string]upstream.Credential, len(u.Credentials))
	for n, c := range u.Credentials {
		creds[n] = upstream.Credential{IdentityFiles: c.IdentityFiles, UseSSHAgent: c.UseSSHAgent, UserCA: c.UserCA, UserPrincipalPrefix: c.UserPrincipalPrefix}
	}
	pc := upstream.PoolConfig{
		Upstream: upstream.Config{
			IdentityFiles: u.IdentityFiles, UseSSHAgent: u.UseSSHAgent,
			KnownHosts: u.KnownHosts, TrustOnFirstUse: u.TrustOnFirstUse,
			ConnectTimeout: u.ConnectTimeout.D(), KeepaliveInterval: u.KeepaliveInterval.D(), KeepaliveCountMax: u.KeepaliveCountMax,
			IdleTimeout: u.IdleTimeout.D(), Agent: u.Agent,
			UserCA: u.UserCA, UserCertValidity: u.UserCertValidity.D(), UserPrincipalPrefix: u.UserPrincipalPrefix,
			Credentials: creds,
		},
		StateDir: cfg.StateDir,
		Agents:   agents,
		Limits: upstream.Limits{
			TempDirIdle: l.TempDirIdle.D(), ShimStateIdle: l.ShimStateIdle.D(), MaxShimStates: l.MaxShimStates,
			AgentReplyTimeout: l.AgentReplyTimeout.D(), AgentCacheDays: l.AgentCacheDays,
			LoginBackoff: l.LoginBackoff.D(), LoginBackoffMax: l.LoginBackoffMax.D(), MaxLoginBackoffs: l.MaxLoginBackoffs,
			UpstreamDialsPerSecond: l.UpstreamDialsPerSecond, UpstreamDialBurst: l.UpstreamDialBurst,
		},
		Budget: budget,
	}
	if m != nil {
		pc.Metrics = poolMetrics{m}
	}
	return pc
}

// poolMetrics counts what the upstream pool reports in gomux's metrics.
type poolMetrics struct{ m *metrics }

func (p poolMetrics) UpstreamDial(err error) { p.m.upstreamDial(err) }
func (p poolMetrics) AgentStart(err error)   { p.m.agentStart(err) }
func (p poolMetrics) AgentUpload(size int)   { p.m.agentUpload(size) }
func (p poolMetrics) AgentFallback()         { p.m.agentFallback() }

// joinHostPort keeps address formatting in one place.
func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
