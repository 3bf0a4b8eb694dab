package proxy

import "strings"

// Log event names: the value of the "event" field of every log line gomux
// writes. Operators' alerts, the README and the integration tests search
// logs for them, so each is declared once here and a change to one is a
// change to this file. Log them as log.Info().Str("event", EventX).
const (
	// EventConfig marks a configuration problem found while starting,
	// one that gomux works around rather than refuses.
	EventConfig = "config"
	// EventListen marks a listener up (SSH front or metrics endpoint),
	// with its address: the line to wait for before connecting.
	EventListen = "listen"
	// EventReload marks a configuration reload (SIGHUP or file change),
	// with its result, or fields that need a restart to take effect.
	EventReload = "reload"
	// EventShutdown marks the steps of a shutdown: draining, drain
	// timeout, stopped.
	EventShutdown = "shutdown"
	// EventStats is the periodic line of process figures (goroutines,
	// heap, RSS, open files, upstreams): what to graph when no metrics
	// scraper runs.
	EventStats = "stats"
	// EventMetrics marks a failure of the metrics endpoint or of a scrape.
	EventMetrics = "metrics"
	// EventPanic marks a bug: a panic contained on one connection, with
	// its stack, while gomux keeps serving the others.
	EventPanic = "panic"
	// EventLimit marks something refused because it went beyond a
	// configured limit (connections, channels, env, sftp handles): the
	// line to look for when a client reports a refusal.
	EventLimit = "limit"

	// EventTCPAccept marks a TCP connection accepted on the front,
	// before any SSH (debug level).
	EventTCPAccept = "tcp_accept"
	// EventProxyProtocol marks a PROXY protocol header from a load
	// balancer: read, refused, or sent by a peer not trusted to send one.
	EventProxyProtocol = "proxy_protocol"
	// EventLoginGrace marks a connection closed because it did not log in
	// within the login grace time (front or inner session).
	EventLoginGrace = "login_grace"
	// EventConnection marks a front connection that failed its SSH
	// handshake or authentication.
	EventConnection = "connection"
	// EventFrontNoise counts, per source address and interval, the
	// unauthenticated connections that failed their handshake, were
	// dropped before login or outlived the login grace time: one line
	// for a flood instead of one per connection.
	EventFrontNoise = "front_noise"
	// EventFrontAuth marks a front login decision, accepted or refused,
	// naming the person: the audit line for who connected.
	EventFrontAuth = "front_auth"
	// EventFrontAuthOffer marks each key a client offers on the front
	// (debug level): why a login picked, or missed, a key.
	EventFrontAuthOffer = "front_auth_offer"
	// EventFrontRevoked marks a connected person whose access was
	// withdrawn (key or certificate revoked, key file changed), and whose
	// connection is closed for it.
	EventFrontRevoked = "front_revoked"
	// EventPolicyRevoked marks something a person holds open (a forward,
	// an inner session) that the live policy no longer allows after a
	// reload or at a recheck tick, and that is closed for it.
	EventPolicyRevoked = "policy_revoked"
	// EventPolicyDecision marks one decision of where a person may go:
	// the destination asked for, the rule that matched, the result.
	EventPolicyDecision = "policy_decision"
	// EventForward marks a direct-tcpip request: denied, spliced or
	// accelerated, or failed.
	EventForward = "forward"
	// EventAdmin marks the admin socket refusing a caller (not gomux's
	// user, nor root) or a malformed request: gomux sessions and gomux
	// kill (admin.go).
	EventAdmin = "admin"
	// EventAdminKill marks a front connection closed by gomux kill,
	// naming the person it was for, what it held open, and who asked:
	// the caller's uid, pid and user name from the admin socket.
	EventAdminKill = "admin_kill"
	// EventForwardClosed marks the end of a forward, with its bytes and
	// duration.
	EventForwardClosed = "forward_closed"

	// EventInnerHandshake marks an inner SSH handshake (accelerated
	// forward) that failed.
	EventInnerHandshake = "inner_handshake"
	// EventInnerAuth marks an inner login decision: the remote user the
	// front person asked for, accepted, refused or denied by policy.
	EventInnerAuth = "inner_auth"
	// EventInnerConnect marks an inner session established (debug level).
	EventInnerConnect = "inner_connect"
	// EventInnerDisconnect marks the end of an inner session, with what
	// the shim saved on it.
	EventInnerDisconnect = "inner_disconnect"
	// EventInnerDrain marks an inner session closed by a drain, or staged
	// state that could not be written to the target before it closed.
	EventInnerDrain = "inner_drain"
	// EventChannel marks one session channel: its command, exit status,
	// bytes and duration, or why it was refused or failed. The line per
	// Ansible step.
	EventChannel = "channel"
	// EventSFTP marks one sftp operation on the accelerated sftp front.
	EventSFTP = "sftp"
	// EventSFTPBadRequest marks an sftp read or write refused as malformed
	// (offsets, lengths, handles).
	EventSFTPBadRequest = "sftp_bad_request"
	// EventRecording marks a session recording started, one that could
	// not be made (and the session refused where recording is required),
	// is incomplete, or stopped at audit.record_max_mib or the quota.
	EventRecording = "recording"
	// EventBecomeSpeculation marks a become command whose BECOME-SUCCESS
	// gomux sent ahead but whose output did not begin with it: the
	// output is passed on unchanged.
	EventBecomeSpeculation = "become_speculation"
	// EventShimAfter marks a deferred temp dir removal that failed on the
	// target after the client had its answer.
	EventShimAfter = "shim_after"
	// EventShimSettle marks staged temp dirs that could not be written
	// to the target before replying, so a step served by another gomux
	// replica may not find them.
	EventShimSettle = "shim_settle"
)

// IsAuditEvent says whether an event belongs to the audit trail: who
// logged in or was refused, each decision of where a person may go, what
// ran and was transferred, what was recorded, what was revoked, and
// config changes. gomux serve writes these whatever the log level, and to
// audit.log_file when one is set, so neither a quieter level nor a flood
// of other lines can blind it. AuditFields is their schema.
func IsAuditEvent(event string) bool {
	return auditSchema(event) != ""
}

// AuditFields is the audit trail's schema: for each audit event, the
// fields every line of it carries besides event, level, time and message
// (most carry more). docs/AUDIT.md documents it, and a test holds the two
// together.
func AuditFields(event string) ([]string, bool) {
	f := auditSchema(event)
	if f == "" {
		return nil, false
	}
	return strings.Split(f, ","), true
}

// auditSchema is AuditFields as one constant per event ("" for an event
// that is not audited), so IsAuditEvent, asked for every log line,
// allocates nothing.
func auditSchema(event string) string {
	switch event {
	case EventFrontAuth:
		return "user,source,result,accepted"
	case EventFrontRevoked:
		return "user,source,reason"
	case EventPolicyDecision:
		return "user,source,via,requested,host,port,rule,mode"
	case EventPolicyRevoked:
		return "user,via,target,reason"
	case EventForward:
		return "user,source,target"
	case EventForwardClosed:
		return "user,source,target,duration"
	case EventInnerAuth:
		return "user,source,target,remote_user,result"
	case EventChannel:
		return "user,source"
	case EventSFTP:
		return "user,source,target,remote_user,op,path"
	case EventRecording:
		return "user,source,target,result"
	case EventReload:
		return "result"
	case EventFrontNoise:
		return "source,count,interval"
	case EventAdminKill:
		return "user,source,id,by_uid,by_pid,by_user"
	}
	return ""
}
