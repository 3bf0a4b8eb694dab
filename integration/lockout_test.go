package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy/upstream"
)

// The documented defaults of limits.login_backoff and login_backoff_max.
const (
	defaultLoginBackoff    = time.Minute
	defaultLoginBackoffMax = time.Hour
)

// loginsAllowed is the most failed logins one backoff key lets reach a
// target in elapsed: one, then one more each time the backoff (doubling
// from login_backoff up to login_backoff_max) has run out.
func loginsAllowed(elapsed time.Duration) int {
	n, at, wait := 1, time.Duration(0), defaultLoginBackoff
	for at+wait <= elapsed {
		at += wait
		n++
		wait = min(2*wait, defaultLoginBackoffMax)
	}
	return n
}

var (
	sshdConnRE     = regexp.MustCompile(`Connection from \S+ port (\d+) `)
	sshdAcceptedRE = regexp.MustCompile(`Accepted \S+ for \S+ from \S+ port (\d+) `)
)

// failedLogins counts the connections tg's sshd logged that never logged
// in: each one is what PerSourcePenalties or fail2ban hold against gomux.
func failedLogins(tg *harness.Target) int {
	log := tg.SSHDLog()
	ok := map[string]bool{}
	for _, m := range sshdAcceptedRE.FindAllStringSubmatch(log, -1) {
		ok[m[1]] = true
	}
	n := 0
	for _, m := range sshdConnRE.FindAllStringSubmatch(log, -1) {
		if !ok[m[1]] {
			n++
		}
	}
	return n
}

// TestLockoutFailedLoginLoop: one person looping `ssh -J gomux
// nosuch$i@t true`, and another retrying a remote user the target
// refuses, are what would make the target ban gomux's one address for
// everyone. With the default limits the target sees at most what the
// backoff lets through per (person, target); every attempt still fails
// as a connection failure (exit 255) with a message saying why, gomux
// logs the person, and valid logins (another person on that target, the
// same persons on another target) still work.
func TestLockoutFailedLoginLoop(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2})
	t0, t1 := lab.Targets[0], lab.Targets[1]
	g := startGomux(t, lab, gomuxOptions{
		Persons: []string{"mallory", "bob"},
		Targets: fmt.Sprintf("  - hosts: [%q, %q]\n    remote_users: [\"*\"]\n", t0.Addr, t1.Addr),
	})
	ctx := ctxT(t, 5*time.Minute)
	g.SSHVerbose(ctx, t0.Addr) // writes the config at ssh's default log level
	as := func(person, dest string) result {
		cmd := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig+".info", "-J", person+"@gomux", dest, "true")
		return runCmd(cmd, nil)
	}
	before := failedLogins(t0)
	start := time.Now()
	// bob retries a remote user whose login t0 refuses (nobody has no
	// authorized key there); mallory makes up a new user each time.
	unexplained := 0
	for i := range 60 {
		person, dest := "bob", "nobody@"+t0.Addr
		if i >= 30 {
			person, dest = "mallory", fmt.Sprintf("nosuch%d@%s", i-30, t0.Addr)
		}
		r := as(person, dest)
		if r.Code != 255 {
			t.Fatalf("%s as %s: %+v", person, dest, r)
		}
		if i%30 > 0 && !strings.Contains(r.Stderr, "limits.login_backoff") {
			unexplained++
		}
	}
	elapsed := time.Since(start)
	// Two persons, each its own (person, target) backoff.
	failed, allowed := failedLogins(t0)-before, 2*loginsAllowed(elapsed)
	if unexplained > allowed-2 {
		t.Errorf("%d of 58 retries failed without the backoff message", unexplained)
	}
	t.Logf("t0 saw %d failed logins from gomux for 60 attempts in %v (backoff allows %d)", failed, elapsed.Round(time.Millisecond), allowed)
	if failed > allowed || failed == 0 {
		t.Errorf("t0's sshd logged %d failed logins from gomux in %v, want 1..%d:\n%s", failed, elapsed, allowed, t0.SSHDLog())
	}
	for _, person := range []string{"bob", "mallory"} {
		if !hasEvent(g, upstream.EventUpstreamBackoff, "person", person) {
			t.Errorf("no upstream_backoff event names %s", person)
		}
	}
	// The refused user is held back for everyone (the target would
	// refuse them too), without contacting t0: checked while bob's first
	// backoff surely runs (a slow machine only skips the check).
	r := as(lab.User, "nobody@"+t0.Addr)
	if time.Since(start) < defaultLoginBackoff {
		if r.Code != 255 || !strings.Contains(r.Stderr, "limits.login_backoff") {
			t.Errorf("%s as nobody during its backoff: %+v", lab.User, r)
		}
		if got := failedLogins(t0) - before; got != failed {
			t.Errorf("t0 saw %d more failed logins after the loop", got-failed)
		}
	}
	// Valid logins: another person on t0, the looping persons on t1.
	for _, c := range []struct{ person, target string }{{lab.User, t0.Addr}, {"mallory", t1.Addr}, {"bob", t1.Addr}} {
		cmd := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", c.person+"@gomux", c.target, "echo ok")
		if r := runCmd(cmd, nil); r.Code != 0 || r.Stdout != "ok\n" {
			t.Errorf("%s to %s after the loop: %+v", c.person, c.target, r)
		}
	}
}

// TestLockoutPrincipalPrefix: a target that trusts gomux's user CA only
// for the principals its AuthorizedPrincipalsFile lists ("gomux-<user>")
// accepts gomux's login when upstream.user_principal_prefix is "gomux-",
// and refuses a certificate whose principal is the bare login name.
func TestLockoutPrincipalPrefix(t *testing.T) {
	caKey := newClientKey(t)
	// sshd reads the principals file as the user: a world-readable dir.
	pdir, err := os.MkdirTemp("", "gmx-principals-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(pdir) })
	must(t, os.Chmod(pdir, 0o755))
	lab := harness.Start(t, harness.Options{Targets: 1, SSHDConfig: func(int) string {
		return "TrustedUserCAKeys " + caKey + ".pub\nAuthorizedPrincipalsFile " + filepath.Join(pdir, "%u") + "\n"
	}})
	tg := lab.Targets[0]
	must(t, os.WriteFile(filepath.Join(pdir, lab.User), []byte("gomux-"+lab.User+"\n"), 0o644))
	rule := fmt.Sprintf("  - hosts: [%q]\n    remote_users: [\"*\"]\n", tg.Addr)
	ctx := ctxT(t, 2*time.Minute)
	start := func(prefix string) *Gomux {
		up := fmt.Sprintf("  user_ca: %s\n  user_cert_validity: 2m\n", caKey)
		if prefix != "" {
			up += fmt.Sprintf("  user_principal_prefix: %q\n", prefix)
		}
		return startGomux(t, lab, gomuxOptions{Targets: rule, IdentityFiles: "[]", Upstream: up})
	}

	bare := start("")
	if r := runCmd(bare.SSH(ctx, tg.Addr, "echo as-$USER"), nil); r.Code != 255 {
		t.Errorf("a certificate for principal %s logged in past the principals file: %+v", lab.User, r)
	}
	bare.Stop()

	g := start("gomux-")
	if r := runCmd(g.SSH(ctx, tg.Addr, "echo as-$USER"), nil); r.Stdout != "as-"+lab.User+"\n" {
		t.Fatalf("login with principal gomux-%s: %+v\n%s", lab.User, r, tg.SSHDLog())
	}
	want := "ID gomux:" + lab.User + " (serial "
	if log := tg.SSHDLog(); !strings.Contains(log, want) {
		t.Errorf("the target's log does not name the person (%q):\n%s", want, log)
	}
}
