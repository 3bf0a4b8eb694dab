// Package proxy is gomux's SSH front: it authenticates clients, applies
// policy to every forwarding request, terminates accelerated inner
// sessions, and serves them from a pool of upstream connections to
// targets (package proxy/upstream), each with one agent session
// multiplexed over it. What follows is the life of a front connection and
// of one Ansible task, in the order things happen, with the goroutine
// that owns each step.
//
// # A front connection
//
//  1. Accept (Server.Serve). The listener is wrapped for the PROXY
//     protocol (admission.Listener, wired in balancer.go): a connection
//     from a trusted_networks address must begin with a header, which
//     names the client every later decision and log line uses.
//     gliderlabs/ssh's accept loop starts one goroutine per connection,
//     which runs the SSH handshake and then x/crypto's channel loop;
//     gomux owns nothing on it until the callbacks below.
//  2. Admission (package proxy/admission, wired in guard.go), in
//     ConnCallback: max_startups and per_source_max_startups take a
//     startup slot (Limiter.Startup), the login grace timer starts, and
//     a refused connection is closed before any SSH byte. The
//     admission.Front that tracks the slots rides in the glider context.
//  3. Authentication (server.go, auth.go, krl.go). PublicKeyHandler
//     (authenticate) only answers whether a key could log in; the login
//     is decided once the client has signed (verified): the key or
//     certificate names the person (Identity), the startup slot becomes
//     the person's connection slot, and front_auth is logged. From here
//     the person never changes for this connection.
//  4. A direct-tcpip channel (handleForward, on x/crypto's goroutine):
//     the channel is admitted (admission.Limiter.OpenChannel:
//     per-connection and per-person counts and the person's memory
//     share), then served on a goroutine the Server owns (s.tasks).
//     forward asks the policy (Policy.Decide: person, normalized
//     destination, port) and the hop (hop.go) acts on the Decision:
//     refuse, splice (dial and copy bytes, as a plain jump host), or
//     accelerate.
//  5. Hold and recheck (recheck.go). Whatever a decision let through is
//     held in the connection's holdings; a reload (liveConfig replaced)
//     and every auth.recheck_interval decide it again against the live
//     config and cut what is no longer allowed.
//  6. Accelerate (hop.accelerate, inner.go). gomux accepts the channel
//     and runs an SSH server on it (innerConn.serve): the client's second
//     handshake ends at gomux, which presents a host certificate for the
//     requested name. The inner login must use the front key and a remote
//     user the rule lists. One goroutine (serve) loops over the inner
//     connection's new channels; each is decided again (Policy.Recheck),
//     admitted like a front channel, and handled on a goroutine the
//     innerConn owns (ic.tasks): "session" by handleSession,
//     "direct-tcpip" (a hop inside the session) by handleDirect, which
//     decides it exactly as at the front.
//  7. Upstream (innerConn.backend, package proxy/upstream). The first
//     channel that needs the target acquires an upstream.Lease for
//     (target, remote user, credential): the pool shares one SSH
//     connection and one agent session per key among every front
//     connection and keeps them until idle. Lease.Agent says how the
//     target is served: upstream.ModeAgent, or upstream.ModeFallback with
//     its reason, where the session's channels are relayed unchanged to
//     the target's sshd (forwardSession). A connection that died says
//     why to every later caller (upstream.ErrEnded wrapping the cause).
//  8. End. When the client closes the inner connection, serve flushes
//     what the shim still holds only in memory for the target
//     (flushOnClose), waits for its channel goroutines and releases the
//     lease; the front connection's slots go back when its net.Conn
//     closes (admission.Front.Guard). A drain (SIGTERM) closes idle inner
//     connections the same way and waits for busy ones.
//
// # One Ansible task
//
// With pipelining off, a task is a handful of session channels on the
// client's ControlMaster connection, each served by a session (session.go)
// whose request loop (serve) runs on the channel's goroutine:
//
//  1. `echo ~`, the temp-dir mkdir: session.startProcess asks the shim
//     once (shim.Host.Exec) and gets one shim.Exec back, the whole
//     decision. These are shim.StartReply: replyLocally writes the answer
//     the target's shell would have given, with its exit status, and no
//     byte reaches the target.
//  2. The module upload (sftp, scp or piped dd): serveSFTP runs pkg/sftp's
//     request server against the agent (sftpfront.go); a file written
//     into a temp dir the shim made is staged in gomux's memory
//     (shim.Host.StageHeld), counted in the person's memory share until
//     the shim lets go of it.
//  3. `chmod u+x`: answered locally too, recorded on the staged file.
//  4. The run: the shim returns shim.StartBatch with Prep (mkdir, write
//     the staged files, by content hash where the agent holds the bytes,
//     chmod) and the command, possibly rewritten to run in a warm fork
//     server. startOnAgent sends them as one request on one yamux stream
//     (agent.Client.Batch): one round trip. pump then copies stdio on two
//     goroutines the session owns (copyOutput, copyInput), reports the
//     exit the way sshd does (exit-status, EOF, close) and tells the shim
//     how it ended (shim.Exec.Done).
//  5. `rm -f -r` of the temp dir: answered locally; the removal the target
//     is owed goes after the reply on a goroutine the Lease owns
//     (shim.Plan.After, sendOps), so Ansible does not wait for it.
//
// With pipelining on, the task is one channel: the shim returns
// shim.StartWholeStdin (or shim.StartEarly under a become gomux has not
// seen work, or on a terminal). runWholeStdin reads the module to its end,
// writes shim.Exec.Ahead first when gomux answers the become marker in
// the target's place, and sends command and module together
// (agent.Client.Start), the module's archive as parts the agent caches.
// Whatever the shim decided, the session only moves bytes; what it saw
// (an exit, a become marker, a deferred step that failed) goes back
// through the shim.Exec's methods.
//
// Every login, decision, channel and sftp operation above is a log event
// named in events.go; the audit events among them (AuditFields) are
// written whatever log_level says, and to audit.log_file when it is set
// (cmd/gomux routes them). Package proxy/audit redacts the
// commands they carry and records pty sessions and shells (recording.go
// admits a recording against the person's memory share).
//
// Anything the shim does not recognize runs unchanged on the agent
// (shim.StepPassthrough), with everything staged that it could see sent
// in the same batch before it. A step that comes first on its connection
// (a client without ControlPersist) is written to the target before its
// reply (flushFirst), so the next connection may reach another replica.
package proxy
