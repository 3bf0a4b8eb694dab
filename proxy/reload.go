package proxy

import (
	"fmt"
	"net"
)

// liveConfig is the config in force: the half of the operator's config
// a reload replaces, the policy and the authenticator built from it. A
// connection reads it whenever it decides, and a reload wakes every open
// connection to decide again what it holds.
type liveConfig struct {
	cfg    *LiveConfig
	policy *Policy
	auth   *Authenticator
	// replaced is closed when a reload puts another config in force,
	// so every open connection is decided again at once.
	replaced chan struct{}
}

// live is the config in force now.
func (s *Server) live() *liveConfig { return s.rt.Load() }

// config is the operator's reloadable config in force now; what only a
// restart changes is s.start.
func (s *Server) config() *LiveConfig { return s.rt.Load().cfg }

// newLiveConfig builds what cfg puts in force on a server started with
// start (whose PROXY protocol balancers the policy keeps out of reach).
func newLiveConfig(start *StartConfig, cfg *LiveConfig, runAs string) (*liveConfig, error) {
	auth, err := NewAuthenticator(AuthOptions{KeyFiles: cfg.Auth.AuthorizedKeys, CAFiles: cfg.Auth.UserCAKeys,
		RevokedFiles: cfg.Auth.RevokedKeys, RunAs: runAs})
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	policy, err := NewPolicy(cfg.Targets, net.DefaultResolver)
	if err != nil {
		return nil, err
	}
	balancers, err := start.ProxyProtocol.networks()
	if err != nil {
		return nil, err
	}
	policy = policy.withBalancers(balancers)
	return &liveConfig{cfg: cfg, policy: policy, auth: auth, replaced: make(chan struct{})}, nil
}

// Reload puts cfg's LiveConfig in force for new connections, forwards,
// logins and session channels: targets, auth, audit, log_level,
// drain_timeout and the admission limits. Every open front connection is
// woken to decide again what it holds (watch), and closes what the new
// policy no longer allows. A config that cannot be used (a key file that
// does not parse, a bad rule) returns an error and the running config
// stays. cfg's StartConfig is not used: the keys that differ from the
// running ones (RestartOnlyKeys) are returned as notes for the log.
// Calls must not overlap; gomux serve makes them from its one signal
// loop.
func (s *Server) Reload(cfg *Config) (restartNeeded []string, err error) {
	restartNeeded = restartOnly(&s.start, &cfg.StartConfig)
	// Rules are checked against the running upstream credentials.
	running := Config{StartConfig: s.start, LiveConfig: cfg.LiveConfig}
	if err := running.validate(); err != nil {
		s.metrics.reload(false)
		return nil, err
	}
	lc, err := newLiveConfig(&s.start, &running.LiveConfig, s.runAs)
	if err != nil {
		s.metrics.reload(false)
		return nil, err
	}
	s.limits.Reconfigure(admissionLimits(running.LiveConfig.Limits))
	prev := s.rt.Swap(lc)
	close(prev.replaced)
	s.metrics.reload(true)
	return restartNeeded, nil
}

// ReloadFile reads the config file again (path "" means no file, as at
// start), applies override (the command-line flags) and Reloads it,
// logging the outcome: why a file was refused, or which keys wait for a
// restart. data, when not nil, is the file's content as already read (by
// the file watcher), used instead of reading it again. It returns the
// LiveConfig put in force; on error the running config stays and
// nothing changes.
func (s *Server) ReloadFile(path string, data []byte, override func(*Config), why string) (*LiveConfig, error) {
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
			return &cfg.LiveConfig, nil
		}
	} else {
		s.metrics.reload(false)
	}
	s.log.Error().Str("event", EventReload).Str("trigger", why).Str("result", "failed").Err(err).
		Msg("config not reloaded; the running config stays")
	return nil, err
}
