package proxy

import (
	"fmt"
	"net"
	"reflect"
)

// liveConfig is the config in force: the operator's config (the fields
// only a restart changes keep their start-up values in it), the policy
// and the authenticator built from it. A connection reads it whenever it
// decides, and a reload wakes every open connection to decide again what
// it holds.
type liveConfig struct {
	cfg    *Config
	policy *Policy
	auth   *Authenticator
	// replaced is closed when a reload puts another config in force,
	// so every open connection is decided again at once.
	replaced chan struct{}
}

// live is the config in force now.
func (s *Server) live() *liveConfig { return s.rt.Load() }

// config is the operator's config in force now.
func (s *Server) config() *Config { return s.rt.Load().cfg }

func newLiveConfig(cfg *Config, runAs string) (*liveConfig, error) {
	auth, err := NewAuthenticator(AuthOptions{KeyFiles: cfg.Auth.AuthorizedKeys, CAFiles: cfg.Auth.UserCAKeys,
		RevokedFiles: cfg.Auth.RevokedKeys, RunAs: runAs})
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	policy, err := NewPolicy(cfg.Targets, net.DefaultResolver)
	if err != nil {
		return nil, err
	}
	balancers, err := cfg.ProxyProtocol.networks()
	if err != nil {
		return nil, err
	}
	policy = policy.withBalancers(balancers)
	return &liveConfig{cfg: cfg, policy: policy, auth: auth, replaced: make(chan struct{})}, nil
}

// Reload puts cfg in force for new connections, forwards, logins and
// session channels: targets, auth, audit and the connection and channel
// limits. Every open front connection is woken to decide again what it
// holds (watch), and closes what the new policy no longer allows. A
// config that cannot be used (a key file that does not parse, a bad rule)
// returns an error and the running config stays.
// Fields that only a restart can change (listen, state_dir,
// metrics_listen, admin_socket, proxy_protocol, upstream, host_cert_validity,
// stats_interval and the memory and state limits) keep their running
// values; they are returned as notes for the log. Calls must not
// overlap; gomux serve makes them from its one signal loop.
func (s *Server) Reload(cfg *Config) (restartNeeded []string, err error) {
	old := s.live().cfg
	restartNeeded = restartOnly(old, cfg)
	// Keep the running values of what needs a restart, so the live
	// config never disagrees with what actually runs.
	merged := *cfg
	merged.Listen, merged.StateDir, merged.MetricsListen = old.Listen, old.StateDir, old.MetricsListen
	merged.AdminSocket = old.AdminSocket
	merged.ProxyProtocol, merged.Upstream = old.ProxyProtocol, old.Upstream
	// upstream.agent_dial is the default of the rules' own, which the
	// file's rules already took: it is reloaded with them.
	merged.Upstream.AgentDial = cfg.Upstream.AgentDial
	merged.HostCertValidity, merged.StatsInterval = old.HostCertValidity, old.StatsInterval
	ml, ol := &merged.Limits, old.Limits
	ml.MaxStagedMiB, ml.MaxSFTPHandles, ml.TempDirIdle = ol.MaxStagedMiB, ol.MaxSFTPHandles, ol.TempDirIdle
	ml.ShimStateIdle, ml.MaxShimStates, ml.AgentReplyTimeout = ol.ShimStateIdle, ol.MaxShimStates, ol.AgentReplyTimeout
	ml.LoginBackoff, ml.LoginBackoffMax, ml.MaxLoginBackoffs = ol.LoginBackoff, ol.LoginBackoffMax, ol.MaxLoginBackoffs
	ml.UpstreamDialsPerSecond, ml.UpstreamDialBurst = ol.UpstreamDialsPerSecond, ol.UpstreamDialBurst
	ml.AgentCacheDays = ol.AgentCacheDays
	// Rules are checked against the running upstream credentials.
	if err := merged.validate(); err != nil {
		s.metrics.reload(false)
		return nil, err
	}
	lc, err := newLiveConfig(&merged, s.runAs)
	if err != nil {
		s.metrics.reload(false)
		return nil, err
	}
	s.limits.reconfigure(merged.Limits)
	prev := s.rt.Swap(lc)
	close(prev.replaced)
	s.metrics.reload(true)
	return restartNeeded, nil
}

// restartOnly names the fields that differ between old and cfg and that
// a reload cannot apply.
func restartOnly(old, cfg *Config) []string {
	var out []string
	add := func(differs bool, name string) {
		if differs {
			out = append(out, name)
		}
	}
	add(old.Listen != cfg.Listen, "listen")
	add(old.StateDir != cfg.StateDir, "state_dir")
	add(old.MetricsListen != cfg.MetricsListen, "metrics_listen")
	add(old.AdminSocket != cfg.AdminSocket, "admin_socket")
	add(!reflect.DeepEqual(old.ProxyProtocol, cfg.ProxyProtocol), "proxy_protocol")
	ou, nu := old.Upstream, cfg.Upstream
	ou.AgentDial, nu.AgentDial = false, false // reloaded with the rules
	add(!reflect.DeepEqual(ou, nu), "upstream")
	add(old.HostCertValidity != cfg.HostCertValidity, "host_cert_validity")
	add(old.StatsInterval != cfg.StatsInterval, "stats_interval")
	ol, nl := old.Limits, cfg.Limits
	add(ol.MaxStagedMiB != nl.MaxStagedMiB, "limits.max_staged_mib")
	add(ol.MaxSFTPHandles != nl.MaxSFTPHandles, "limits.max_sftp_handles")
	add(ol.TempDirIdle != nl.TempDirIdle, "limits.temp_dir_idle")
	add(ol.ShimStateIdle != nl.ShimStateIdle, "limits.shim_state_idle")
	add(ol.MaxShimStates != nl.MaxShimStates, "limits.max_shim_states")
	add(ol.AgentReplyTimeout != nl.AgentReplyTimeout, "limits.agent_reply_timeout")
	add(ol.LoginBackoff != nl.LoginBackoff, "limits.login_backoff")
	add(ol.LoginBackoffMax != nl.LoginBackoffMax, "limits.login_backoff_max")
	add(ol.MaxLoginBackoffs != nl.MaxLoginBackoffs, "limits.max_login_backoffs")
	add(ol.UpstreamDialsPerSecond != nl.UpstreamDialsPerSecond, "limits.upstream_dials_per_second")
	add(ol.UpstreamDialBurst != nl.UpstreamDialBurst, "limits.upstream_dial_burst")
	add(ol.AgentCacheDays != nl.AgentCacheDays, "limits.agent_cache_days")
	return out
}

// ReloadFile reads the config file again (path "" means no file, as at
// start), applies override (the command-line flags) and Reloads it,
// logging the outcome: why a file was refused, or which fields wait for a
// restart. data, when not nil, is the file's content as already read (by
// the file watcher), used instead of reading it again. On error the
// running config stays and nothing changes.
func (s *Server) ReloadFile(path string, data []byte, override func(*Config), why string) (*Config, error) {
	var cfg *Config
	var err error
	if data != nil && path != "" {
		cfg, err = ParseConfig(path, data)
	} else {
		cfg, err = LoadConfig(path)
	}
	if err == nil {
		if override != nil {
			override(cfg)
		}
		var restart []string
		restart, err = s.Reload(cfg)
		if err == nil {
			if len(restart) > 0 {
				s.log.Warn().Str("event", EventReload).Str("result", "restart_needed").Strs("restart_needed", restart).
					Msg("config reloaded; these fields changed but keep their running values until gomux restarts")
			}
			s.log.Info().Str("event", EventReload).Str("trigger", why).Str("result", "ok").Int("targets", len(cfg.Targets)).
				Str("log_level", cfg.LogLevel).Msg("config reloaded: in force for new connections, forwards and logins; open ones are decided again")
			return cfg, nil
		}
	} else {
		s.metrics.reload(false)
	}
	s.log.Error().Str("event", EventReload).Str("trigger", why).Str("result", "failed").Err(err).
		Msg("config not reloaded; the running config stays")
	return nil, err
}
