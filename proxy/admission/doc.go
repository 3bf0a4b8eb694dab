// Package admission decides whether gomux takes on more work from a
// client: a new TCP connection (max_startups, per-source caps), a login
// (per-person connections, the memory ceiling, the login grace time), a
// channel (per-connection, per-person and per-source channels, the
// person's memory share), and stdin or an upload held in memory. It also
// reads the PROXY protocol header a trusted load balancer puts before a
// connection, so that every one of these decisions, and every log line,
// names the client's own address. A client over a limit is refused with
// a message saying which; the others are unaffected.
//
// Dependencies run one way: proxy → proxy/admission. This package
// imports neither proxy nor proxy/upstream: its limits come in as plain
// values (Limits, filled by proxy from its AdmissionLimits), the login
// grace time as a parameter, and the listener's logger, metrics and
// event names through ListenerConfig (the names are declared with every
// other event in proxy/events.go). The glider callbacks that wire it
// into the front (admit, verified, handleForward) stay in proxy.
//
// Files: limits.go (Limits, max_startups, the connection and channel
// caps: the Limiter), memory.go (memory shares and the process's
// ceiling: what a channel costs, Hold and Free, the cgroup limit),
// front.go (one front connection's slots and login grace timer: Front),
// proxyproto.go (the PROXY protocol v1/v2 listener, on
// github.com/pires/go-proxyproto with gomux's own framing: Listener).
//
// # Lock order
//
// The mutexes, and what each guards:
//
//   - Front.mu: one front connection's slots (startup, login), the
//     person it logged in as, its grace state and what it tried.
//   - ChanCount.mu: one SSH connection's open channels.
//   - Limiter.mu: every count (startups, connections, channels by
//     person and by source), the limits in force and the memory account
//     (memAccount's methods are called with it held).
//   - Listener.mu: the connections whose PROXY header is being read.
//
// Front.mu may be held while taking Limiter.mu (Login takes the
// person's slot and gives the startup slot back under it; close gives
// every slot back under it), and ChanCount.mu while taking Limiter.mu
// (a channel is counted on its connection and for its person and source
// at once). Limiter.mu and Listener.mu are leaves: nothing is taken
// under them, and a slot's release function takes the locks it needs
// one after the other, never nested. Front's keyless callback runs with
// Front.mu held, so it must not call back into the Front (proxy's only
// logs). No lock is held across network I/O, except that Listener.Close
// closes the connections still waiting for a header under Listener.mu
// (closing does not wait on the peer).
//
// # Goroutines
//
// A Listener owns its accept loop and one header reader per connection
// (its task group); Close cancels them, closes what they read from, and
// waits for them. A Front's grace timer is a time.AfterFunc: Login and
// close stop it, and what it runs when it fires (close the connection)
// takes no lock of this package. Everything else runs on its caller's
// goroutine.
package admission
