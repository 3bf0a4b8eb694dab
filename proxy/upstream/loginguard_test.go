package upstream

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeClock is a settable now for the guard.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock           { return &fakeClock{t: time.Unix(1_000_000, 0)} }
func guardLimits(l Limits) Limits        { l.applyDefaults(); return l }

// tryLogin asks g about a and, when admitted, reports o.
func tryLogin(t *testing.T, g *loginGuard, a loginAttempt, o loginOutcome) error {
	t.Helper()
	wait, err := g.admit(a)
	if err != nil {
		return err
	}
	if wait != nil {
		t.Fatalf("%+v: told to wait with no login in flight", a)
	}
	g.done(a, o)
	return nil
}

func throttled(err error, reason string) bool {
	var te *errThrottled
	return errors.As(err, &te) && te.reason == reason
}

// TestLoginGuardBackoff: a refused login is not retried for the same
// (target, user, credential) during its backoff, which doubles with each
// refusal up to the max; after the backoff one more attempt goes out; a
// success clears it.
func TestLoginGuardBackoff(t *testing.T) {
	clk := newFakeClock()
	g := newLoginGuard(guardLimits(Limits{LoginBackoff: time.Minute, LoginBackoffMax: 4 * time.Minute}), clk.now)
	a := loginAttempt{person: "alice", dial: "10.0.0.1:22", user: "deploy", cred: "default"}
	b := a
	b.person = "bob" // the same failing user, another person
	if err := tryLogin(t, g, a, loginRefused); err != nil {
		t.Fatal(err)
	}
	for _, who := range []loginAttempt{a, b} {
		if err := tryLogin(t, g, who, loginRefused); !throttled(err, "login_backoff") {
			t.Fatalf("%s right after a refusal: %v", who.person, err)
		}
	}
	for i, wait := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 4 * time.Minute} {
		clk.add(wait - time.Second)
		if err := tryLogin(t, g, b, loginRefused); !throttled(err, "login_backoff") {
			t.Fatalf("refusal %d: a second before its %s backoff ends: %v", i+1, wait, err)
		}
		clk.add(time.Second)
		if err := tryLogin(t, g, b, loginRefused); err != nil {
			t.Fatalf("refusal %d: after its %s backoff: %v", i+1, wait, err)
		}
	}
	clk.add(4 * time.Minute)
	if err := tryLogin(t, g, a, loginOK); err != nil {
		t.Fatal(err)
	}
	if err := tryLogin(t, g, a, loginRefused); err != nil {
		t.Fatalf("a success did not clear the backoff: %v", err)
	}
	if err := tryLogin(t, g, a, loginRefused); err == nil || !strings.Contains(err.Error(), "1 login(s)") || !strings.Contains(err.Error(), "1m0s") {
		t.Fatalf("after a success the count starts again: %v", err)
	}
}

// TestLoginGuardPersonTarget: made-up user names, each new, still back
// off per (person, target), so one person cannot hammer a target; another
// person, and the same person elsewhere, are not held up.
func TestLoginGuardPersonTarget(t *testing.T) {
	clk := newFakeClock()
	g := newLoginGuard(guardLimits(Limits{}), clk.now)
	at := func(person, dial, user string) loginAttempt {
		return loginAttempt{person: person, dial: dial, user: user, cred: "default"}
	}
	if err := tryLogin(t, g, at("mallory", "10.0.0.1:22", "nosuch0"), loginRefused); err != nil {
		t.Fatal(err)
	}
	sent := 1
	for i := 1; i < 30; i++ {
		// Another port of the same machine counts as the same target.
		dial := "10.0.0.1:22"
		if i%2 == 0 {
			dial = "10.0.0.1:2222"
		}
		if err := tryLogin(t, g, at("mallory", dial, fmt.Sprintf("nosuch%d", i)), loginRefused); err == nil {
			sent++
		} else if !throttled(err, "person_backoff") {
			t.Fatalf("nosuch%d: %v", i, err)
		}
	}
	if sent != 1 {
		t.Errorf("%d logins reached the target within the backoff, want 1", sent)
	}
	if err := tryLogin(t, g, at("alice", "10.0.0.1:22", "deploy"), loginOK); err != nil {
		t.Errorf("another person: %v", err)
	}
	if err := tryLogin(t, g, at("mallory", "10.0.0.2:22", "deploy"), loginOK); err != nil {
		t.Errorf("the same person on another target: %v", err)
	}
	clk.add(time.Minute)
	if err := tryLogin(t, g, at("mallory", "10.0.0.1:22", "deploy"), loginOK); err != nil {
		t.Errorf("the same person after the backoff: %v", err)
	}
	// A valid login in between does not reset the person's doubling.
	if err := tryLogin(t, g, at("mallory", "10.0.0.1:22", "nosuch99"), loginRefused); err != nil {
		t.Fatalf("after the backoff: %v", err)
	}
	clk.add(time.Minute + time.Second)
	if err := tryLogin(t, g, at("mallory", "10.0.0.1:22", "nosuch100"), loginRefused); !throttled(err, "person_backoff") {
		t.Errorf("a success reset the person's backoff to its start: %v", err)
	}
}

// TestLoginGuardOneInFlight: a person's second login to a target waits
// for the first, so refusals cannot be sent in parallel; network
// failures count no backoff.
func TestLoginGuardOneInFlight(t *testing.T) {
	clk := newFakeClock()
	g := newLoginGuard(guardLimits(Limits{}), clk.now)
	a := loginAttempt{person: "mallory", dial: "10.0.0.1:22", user: "nosuch1", cred: "default"}
	b := a
	b.user = "nosuch2"
	if w, err := g.admit(a); w != nil || err != nil {
		t.Fatal(w, err)
	}
	w, err := g.admit(b)
	if w == nil || err != nil {
		t.Fatalf("a second login while one is in flight: wait %v, err %v", w, err)
	}
	c := b
	c.person = "alice"
	if w, err := g.admit(c); w != nil || err != nil {
		t.Fatalf("another person: wait %v, err %v", w, err)
	}
	g.done(c, loginUnreachable)
	g.done(a, loginRefused)
	select {
	case <-w:
	default:
		t.Fatal("the waiter was not woken")
	}
	if _, err := g.admit(b); !throttled(err, "person_backoff") {
		t.Fatalf("after the first was refused: %v", err)
	}
	if err := tryLogin(t, g, c, loginUnreachable); err != nil {
		t.Fatalf("an unreachable target started a backoff: %v", err)
	}
}

// TestLoginGuardDialRate: a person's new upstream connections are a
// token bucket; another person has their own.
func TestLoginGuardDialRate(t *testing.T) {
	clk := newFakeClock()
	g := newLoginGuard(guardLimits(Limits{UpstreamDialsPerSecond: 2, UpstreamDialBurst: 5}), clk.now)
	at := func(person string, i int) loginAttempt {
		return loginAttempt{person: person, dial: fmt.Sprintf("10.0.1.%d:22", i), user: "deploy", cred: "default"}
	}
	for i := range 5 {
		if err := tryLogin(t, g, at("ci", i), loginOK); err != nil {
			t.Fatalf("dial %d within the burst: %v", i, err)
		}
	}
	err := tryLogin(t, g, at("ci", 5), loginOK)
	if !throttled(err, "dial_rate") || !strings.Contains(err.Error(), "upstream_dials_per_second 2") {
		t.Fatalf("beyond the burst: %v", err)
	}
	if err := tryLogin(t, g, at("alice", 5), loginOK); err != nil {
		t.Fatalf("another person: %v", err)
	}
	clk.add(500 * time.Millisecond)
	if err := tryLogin(t, g, at("ci", 6), loginOK); err != nil {
		t.Fatalf("after one token refilled: %v", err)
	}
	if err := tryLogin(t, g, at("ci", 7), loginOK); !throttled(err, "dial_rate") {
		t.Fatalf("the refilled token spent twice: %v", err)
	}
}

// TestLoginGuardBounded: the table never holds more than its cap, and a
// run of failures long over is forgotten.
func TestLoginGuardBounded(t *testing.T) {
	clk := newFakeClock()
	g := newLoginGuard(guardLimits(Limits{MaxLoginBackoffs: 50, UpstreamDialBurst: 10000}), clk.now)
	for i := range 1000 {
		a := loginAttempt{person: fmt.Sprintf("p%d", i), dial: fmt.Sprintf("10.1.%d.%d:22", i/250, i%250), user: "u", cred: "default"}
		if err := tryLogin(t, g, a, loginRefused); err != nil {
			t.Fatal(err)
		}
		if n := g.len(); n > 50 {
			t.Fatalf("%d backoffs held, cap 50", n)
		}
	}
	a := loginAttempt{person: "x", dial: "10.9.9.9:22", user: "u", cred: "default"}
	if err := tryLogin(t, g, a, loginRefused); err != nil {
		t.Fatal(err)
	}
	clk.add(time.Minute + time.Hour + time.Second)
	if err := tryLogin(t, g, a, loginRefused); err != nil {
		t.Fatal(err)
	}
	if _, err := g.admit(a); err == nil || !strings.Contains(err.Error(), "last 1 login(s)") {
		t.Fatalf("an old run was not forgotten: %v", err)
	}
}

// TestLoginOutcomeOf: only the target refusing the login counts; the
// network failing does not.
func TestLoginOutcomeOf(t *testing.T) {
	refused := errors.New("ssh: handshake failed: ssh: unable to authenticate, attempted methods [none publickey], no supported methods remain")
	for _, c := range []struct {
		err  error
		auth bool
		want loginOutcome
	}{
		{nil, true, loginOK},
		{refused, true, loginRefused},
		{fmt.Errorf("ssh: handshake failed: %w", io.EOF), true, loginUnreachable},
		{&net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, true, loginUnreachable},
		{errors.New("ssh: handshake failed: knownhosts: key mismatch"), false, loginUnreachable},
	} {
		if got := loginOutcomeOf(c.err, c.auth); got != c.want {
			t.Errorf("%v (auth started %v): %v, want %v", c.err, c.auth, got, c.want)
		}
	}
}

// TestLoginGuardPersonalCredential: where gomux mints a certificate per
// person, the target may refuse one person and take another, so one
// person's refusals do not hold back another person's login as the same
// user.
func TestLoginGuardPersonalCredential(t *testing.T) {
	clk := newFakeClock()
	g := newLoginGuard(guardLimits(Limits{LoginBackoff: time.Minute, LoginBackoffMax: 4 * time.Minute}), clk.now)
	mallory := loginAttempt{person: "mallory", dial: "10.0.0.1:22", user: "deploy", cred: "default", personal: true}
	alice := mallory
	alice.person = "alice"
	if err := tryLogin(t, g, mallory, loginRefused); err != nil {
		t.Fatal(err)
	}
	if err := tryLogin(t, g, mallory, loginRefused); !throttled(err, "login_backoff") && !throttled(err, "person_backoff") {
		t.Fatalf("mallory again: %v", err)
	}
	if err := tryLogin(t, g, alice, loginOK); err != nil {
		t.Errorf("alice held back by mallory's refusals: %v", err)
	}
}
