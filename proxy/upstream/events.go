package upstream

// Log event names of the upstream pool: the value of the "event" field of
// the lines it writes. They live here rather than in proxy/events.go
// because this package cannot import proxy; proxy's events test reads
// this file with events.go, so the two together are still the one list
// of events operators and tests rely on, each name declared once.
const (
	// EventShimStateDropped marks the Ansible state kept for a target
	// dropped (idle, or evicted at the max_shim_states limit).
	EventShimStateDropped = "shim_state_dropped"

	// EventUpstreamConnect marks an upstream SSH connection to a target
	// made or failed, with its duration.
	EventUpstreamConnect = "upstream_connect"
	// EventUpstreamClosed marks the end of an upstream connection, with
	// why.
	EventUpstreamClosed = "upstream_closed"
	// EventUpstreamBackoff marks an upstream login gomux refused to
	// attempt, naming the person: a backoff after failed logins to that
	// target, or the person's dial rate (field reason).
	EventUpstreamBackoff = "upstream_backoff"
	// EventUpstreamIdleClose marks an upstream connection closed after
	// its idle timeout.
	EventUpstreamIdleClose = "upstream_idle_close"
	// EventUpstreamKeepaliveTimeout marks an upstream connection closed
	// because the target stopped answering keepalives.
	EventUpstreamKeepaliveTimeout = "upstream_keepalive_timeout"
	// EventAgentStart marks the agent started on a target (or not), with
	// its version, architecture and whether it was uploaded.
	EventAgentStart = "agent_start"
	// EventAgentUpload marks the agent binary uploaded to a target's
	// cache: once per target and agent version.
	EventAgentUpload = "agent_upload"
	// EventAgentCacheUnsafe marks an agent cache on a target that others
	// could write, which gomux replaces.
	EventAgentCacheUnsafe = "agent_cache_unsafe"
	// EventAgentFallback marks a target served without the agent, channel
	// by channel, and why.
	EventAgentFallback = "agent_fallback"
	// EventAgentExit marks the end of an agent session on a target, with
	// what the agent wrote to stderr.
	EventAgentExit = "agent_exit"
)
