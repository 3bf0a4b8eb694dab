// Package upstream is gomux's side facing the targets: one pooled SSH
// connection per (target, remote user, credential[, person]) shared by
// every client connection that maps to it, the agent started over it
// (launcher, upload, fallback), target host key verification and trust on
// first use, the upstream credentials and the per-person user
// certificates minted from them, the login guard that keeps one person's
// failed logins from getting gomux's address banned, and the expiry of
// idle connections and per-target Ansible state.
//
// Dependencies run one way: proxy → proxy/upstream → shim → agent. This
// package never imports proxy; what it needs from it (config, metrics,
// the logger) comes in through PoolConfig and NewPool.
//
// Files: pool.go (the pool and its keys), lease.go (a client's hold on a
// connection), conn.go (one connection's life), death.go (why it ended),
// keepalive.go, dial.go (TCP, handshake, login), credential.go
// (credentials, user certificates), hostkeys.go (known_hosts and trust on
// first use), loginguard.go (backoff and dial rate), bootstrap.go (agent
// start: launcher, upload, fallback), prune.go (idle Ansible state),
// events.go (log event names).
//
// # Lock order
//
// The mutexes, and what each guards:
//
//   - Pool.mu: the pool's maps (conns, hosts, retired) and each
//     connection's refs and idle timer.
//   - upstream.amu: one connection's agent, fallback reason and the
//     agent start in progress.
//   - upstream.kmu: one connection's keepalive state.
//   - loginGuard.mu: the backoffs, logins in flight and dial buckets.
//   - hostKeys.mu: serializes appends to the trust-on-first-use file.
//   - upstream.dmu: why one connection ended (its cause).
//   - boundedBuffer.mu: one captured stderr.
//
// Pool.mu may be held while taking loginGuard.mu (Acquire asks the guard
// under it, so a dial is admitted and listed at once), upstream.dmu
// (Close records why it closes each connection under it), the locks
// inside a shim.Host (Lease.Shim, prune and eviction read
// and drop Hosts under it) and the pool's task group (gogroup.Group.Go
// under it). Nothing else is taken under Pool.mu. Every other mutex here
// is a leaf: no lock of this package is taken while amu, kmu, dmu,
// loginGuard.mu, hostKeys.mu or boundedBuffer.mu is held, and amu and
// Pool.mu are never held together. No lock is held across network I/O,
// except that Close closes the connections under Pool.mu (closing does
// not wait on the peer); the idle timer unlists a connection under it
// and closes it after.
//
// A connection's fields set once before a channel is closed (client and
// err before ready) are read without a lock after receiving from that
// channel. Its cause is recorded before dead is closed, so whoever sees
// dead closed finds it.
//
// # Why a connection ended
//
// A connection records the first reason it ended (end): a failed dial,
// its keepalives unanswered, the idle timer, the pool closing, or, when
// none of these, what its Wait returned (the target or the network
// closed it). Every later call on a lease of it (Err, Agent,
// OpenChannel, NewSession, DialContext) returns ErrEnded wrapping that
// reason, as yamux returns its shutdownErr, so the error a client sees
// says why, not only that the connection is gone.
package upstream
