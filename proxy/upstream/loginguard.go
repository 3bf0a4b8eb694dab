package upstream

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// loginGuard keeps one person from getting gomux's address banned by a
// target. gomux logs in to every target from one address, so a target
// that counts failed logins per source (OpenSSH's PerSourcePenalties,
// fail2ban) would block everyone for what one person did. The guard
// remembers failed upstream logins, per (target, remote user,
// credential) and per (person, target), and refuses a new login for a
// while after each one (an exponential backoff) without contacting the
// target; it lets one person have one login in flight per target at a
// time, so failures cannot be sent in parallel either; and it holds each
// person to a token bucket of new upstream connections. A pooled
// connection is reused without asking it.
type loginGuard struct {
	base, max  time.Duration
	maxEntries int
	rate       float64 // tokens per second
	burst      float64
	now        func() time.Time

	mu      sync.Mutex
	fails   map[failKey]*failEntry
	busy    map[failKey]chan struct{} // (person, target) keys: a login in flight
	buckets map[string]*dialBucket
}

// failKey names one backoff: (target, remote user, credential) with
// person empty, or (person, target) with user and credential empty. The
// target is the address dialled: ip:port for the first, ip alone for the
// second, so aliases and other ports of one machine count together.
type failKey struct {
	person, target, user, cred string
}

// failEntry is a run of failed logins for one key.
type failEntry struct {
	fails int
	until time.Time // no new login before this
}

// dialBucket is one person's token bucket.
type dialBucket struct {
	tokens float64
	at     time.Time
}

// loginAttempt is who logs in where: what the guard is asked about.
type loginAttempt struct {
	person, dial, user, cred string
	// personal: the credential is a certificate minted for the person,
	// so the target may refuse one person and take another.
	personal bool
}

// keys are the attempt's two backoff keys: (target, user, credential),
// with the person too where the credential is minted per person, and
// (person, target).
func (a loginAttempt) keys() (failKey, failKey) {
	ip := a.dial
	if h, _, err := net.SplitHostPort(a.dial); err == nil {
		ip = h
	}
	k := failKey{target: a.dial, user: a.user, cred: a.cred}
	if a.personal {
		k.person = a.person
	}
	return k, failKey{person: a.person, target: ip}
}

// errThrottled is an upstream login gomux refused to attempt; the
// message says why and when to retry, for the client's "open failed".
type errThrottled struct {
	reason string // for the log: login_backoff, person_backoff, dial_rate
	retry  time.Duration
	msg    string
}

func (e *errThrottled) Error() string { return e.msg }

func newLoginGuard(l Limits, now func() time.Time) *loginGuard {
	return &loginGuard{
		base: l.LoginBackoff, max: max(l.LoginBackoffMax, l.LoginBackoff), maxEntries: l.MaxLoginBackoffs,
		rate: float64(l.UpstreamDialsPerSecond), burst: float64(l.UpstreamDialBurst), now: now,
		fails: map[failKey]*failEntry{}, busy: map[failKey]chan struct{}{}, buckets: map[string]*dialBucket{},
	}
}

// admit decides whether a new upstream login for a may start now. It
// returns an *errThrottled when a backoff or the person's dial rate
// refuses it; a channel to wait on when the person already has a login
// to this target in flight (then ask again once it is closed); or
// neither, and then the caller must report the outcome with done.
func (g *loginGuard) admit(a loginAttempt) (<-chan struct{}, error) {
	now := g.now()
	k, pk := a.keys()
	g.mu.Lock()
	defer g.mu.Unlock()
	if e := g.active(k, now); e != nil {
		left := e.until.Sub(now)
		return nil, &errThrottled{reason: "login_backoff", retry: left, msg: fmt.Sprintf(
			"the last %d login(s) as %s to %s failed; gomux will not try again for %s, so the target does not ban gomux's address for everyone (limits.login_backoff)",
			e.fails, a.user, a.dial, roundUp(left))}
	}
	if e := g.active(pk, now); e != nil {
		left := e.until.Sub(now)
		return nil, &errThrottled{reason: "person_backoff", retry: left, msg: fmt.Sprintf(
			"%s's last %d login(s) to %s failed; gomux will not log in there on %s's behalf for %s, so the target does not ban gomux's address for everyone (limits.login_backoff)",
			a.person, e.fails, pk.target, a.person, roundUp(left))}
	}
	if ch := g.busy[pk]; ch != nil {
		return ch, nil
	}
	if left := g.take(a.person, now); left > 0 {
		return nil, &errThrottled{reason: "dial_rate", retry: left, msg: fmt.Sprintf(
			"%s is opening upstream connections too fast (limits.upstream_dials_per_second %g, upstream_dial_burst %g); retry in %s",
			a.person, g.rate, g.burst, roundUp(left))}
	}
	g.busy[pk] = make(chan struct{})
	return nil, nil
}

// active returns k's entry while its backoff runs, and forgets an entry
// whose backoff ended more than max ago (the run of failures is over).
func (g *loginGuard) active(k failKey, now time.Time) *failEntry {
	e := g.fails[k]
	switch {
	case e == nil:
		return nil
	case now.Before(e.until):
		return e
	case now.Sub(e.until) > g.max:
		delete(g.fails, k)
	}
	return nil
}

// take spends one of person's tokens; when there is none it returns how
// long until there is.
func (g *loginGuard) take(person string, now time.Time) time.Duration {
	b := g.buckets[person]
	if b == nil {
		if len(g.buckets) >= 4096 {
			g.dropFullBuckets(now)
		}
		b = &dialBucket{tokens: g.burst, at: now}
		g.buckets[person] = b
	}
	b.tokens = min(g.burst, b.tokens+now.Sub(b.at).Seconds()*g.rate)
	b.at = now
	if b.tokens < 1 {
		if g.rate <= 0 {
			return time.Hour
		}
		return time.Duration((1 - b.tokens) / g.rate * float64(time.Second))
	}
	b.tokens--
	return 0
}

// dropFullBuckets forgets the buckets that have refilled: a full bucket
// is what a person without one gets, so the map holds only recent dialers.
func (g *loginGuard) dropFullBuckets(now time.Time) {
	for p, b := range g.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*g.rate >= g.burst {
			delete(g.buckets, p)
		}
	}
}

// loginOutcome is how an admitted login ended.
type loginOutcome int

const (
	// loginNotTried: gomux stopped before logging in (shutting down).
	loginNotTried loginOutcome = iota
	// loginOK: the target accepted the login.
	loginOK
	// loginRefused: the target refused the credential for the user.
	loginRefused
	// loginUnreachable: the network or the handshake failed before the
	// login was decided; the target counted no failed login of ours.
	loginUnreachable
)

// done reports an admitted login's outcome: a refusal starts or extends
// both backoffs, a success clears the (target, user, credential) one,
// and either lets the person's next login to the target start. A success
// leaves the person's run of refusals on that target to expire by
// itself: else one valid user between made-up ones would reset the
// doubling, and the person could send a refusal every login_backoff.
func (g *loginGuard) done(a loginAttempt, o loginOutcome) {
	now := g.now()
	k, pk := a.keys()
	g.mu.Lock()
	defer g.mu.Unlock()
	if ch := g.busy[pk]; ch != nil {
		close(ch)
		delete(g.busy, pk)
	}
	switch o {
	case loginOK:
		delete(g.fails, k)
	case loginRefused:
		g.fail(k, now)
		g.fail(pk, now)
	}
}

// fail counts one more failure for k: its backoff is base, doubled for
// each failure in a row, at most max.
func (g *loginGuard) fail(k failKey, now time.Time) {
	e := g.fails[k]
	if e != nil && now.Sub(e.until) > g.max {
		e = nil // an old run, forgotten
	}
	if e == nil {
		if len(g.fails) >= g.maxEntries {
			g.evict(now)
		}
		e = &failEntry{}
		g.fails[k] = e
	}
	e.fails++
	e.until = now.Add(backoffAfter(g.base, g.max, e.fails))
	if e.fails > 64 {
		e.fails = 64 // the backoff is at max long before; keep the count bounded
	}
}

// backoffAfter is the wait after n failures in a row.
func backoffAfter(base, limit time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// evict makes room in a full table: entries whose run is over go first,
// else the one whose backoff ends soonest, the one protecting least.
func (g *loginGuard) evict(now time.Time) {
	var soonest failKey
	var found bool
	var at time.Time
	for k, e := range g.fails {
		if !now.Before(e.until) && now.Sub(e.until) > g.max {
			delete(g.fails, k)
			continue
		}
		if !found || e.until.Before(at) {
			soonest, at, found = k, e.until, true
		}
	}
	if len(g.fails) >= g.maxEntries && found {
		delete(g.fails, soonest)
	}
}

// len is the number of backoffs held, for tests.
func (g *loginGuard) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.fails)
}

// roundUp shows a wait in whole seconds, never "0s".
func roundUp(d time.Duration) time.Duration {
	return max(time.Second, (d + time.Second - 1).Truncate(time.Second))
}

// loginOutcomeOf classifies a dial's error. authStarted says the target
// had asked for a public key (the login was being decided): an error
// after that which is not the network failing is the target refusing the
// login, which it counts against gomux's address.
func loginOutcomeOf(err error, authStarted bool) loginOutcome {
	if err == nil {
		return loginOK
	}
	var ne net.Error
	switch {
	case !authStarted,
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed),
		errors.As(err, &ne):
		return loginUnreachable
	}
	return loginRefused
}

// logThrottled logs a login the guard refused, with the person: the line
// an operator finds when someone reports "cannot reach".
func (p *Pool) logThrottled(t Target, err error) {
	var te *errThrottled
	if !errors.As(err, &te) {
		return
	}
	p.log.Warn().Str("event", EventUpstreamBackoff).Str("person", t.Person).Str("target", t.Host).Str("addr", t.Dial).
		Str("remote_user", t.User).Str("credential", t.Credential).Str("reason", te.reason).Dur("retry_in", te.retry).
		Msg("upstream login not attempted")
}
