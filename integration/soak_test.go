package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// soakOnly skips a test outside `make soak`: these run for minutes.
func soakOnly(t *testing.T) {
	t.Helper()
	if os.Getenv("GOMUX_SOAK") == "" {
		t.Skip("a soak or load test: run with make soak")
	}
}

// procSample is what /proc says of gomux and what it logged of itself.
type procSample struct {
	at                     time.Duration
	rssKB, fds, goroutines int
}

func (s procSample) String() string {
	return fmt.Sprintf("t=%v rss=%d KiB fds=%d goroutines=%d", s.at.Round(time.Second), s.rssKB, s.fds, s.goroutines)
}

// sampleGomux reads gomux's RSS and open files from /proc and its
// goroutines from its newest stats event.
func sampleGomux(g *Gomux, since time.Time) procSample {
	s := procSample{at: time.Since(since)}
	pid := g.cmd.Process.Pid
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "VmRSS:" {
				s.rssKB, _ = strconv.Atoi(f[1])
			}
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.fds = len(ents)
	}
	if ev := g.Events(proxy.EventStats); len(ev) > 0 {
		if n, ok := ev[len(ev)-1]["goroutines"].(float64); ok {
			s.goroutines = int(n)
		}
	}
	return s
}

// TestSoak runs a playbook with become, copy and fetch again and again
// through one gomux, alternating pipelining, for GOMUX_SOAK_DURATION
// (30m), sampling gomux's RSS, open files and goroutines each minute.
// Every run must pass; at the end gomux must hold what it held after the
// first run, and the targets must hold nothing of it: no temp dirs, no
// stray processes, no fork server past its idle timeout.
func TestSoak(t *testing.T) {
	soakOnly(t)
	dur := 30 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("GOMUX_SOAK_DURATION")); err == nil {
		dur = d
	}
	lab := harness.Start(t, harness.Options{Targets: 4, RTT: 10 * time.Millisecond})
	g := startGomux(t, lab, gomuxOptions{Extra: "stats_interval: 10s\n", Upstream: "  warm_python_idle: 20s\n"})
	ctx := ctxT(t, dur+15*time.Minute)
	soakDir, err := os.MkdirTemp("", "gmxsoak-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(soakDir) })
	must(t, os.Chmod(soakDir, 0o777))
	fetch := t.TempDir()
	cp := controlDir(t)
	start := time.Now()
	var samples []procSample
	nextSample := start
	runs, failed := 0, 0
	for round := 0; time.Since(start) < dur; round++ {
		pipelining := []string{"False", "True"}[round%2]
		r := runPlaybookOpts(ctx, t, lab, g, playbookPath("soak.yml"), playOpts{
			env:        []string{"ANSIBLE_PIPELINING=" + pipelining},
			args:       []string{"-e", "soak_dir=" + soakDir, "-e", "soak_fetch=" + fetch, "-e", fmt.Sprintf("soak_round=%d", round)},
			controlDir: cp,
		})
		runs++
		if r.Err != nil || strings.Contains(r.Output, "unreachable=1") {
			failed++
			t.Errorf("round %d (pipelining=%s): %v\n%s", round, pipelining, r.Err, r.Output)
		}
		if time.Now().After(nextSample) || round == 0 {
			if round == 0 {
				// The baseline needs gomux's own count of goroutines,
				// from a stats event logged after this first run.
				n := len(g.Events(proxy.EventStats))
				waitFor(t, 30*time.Second, func() bool { return len(g.Events(proxy.EventStats)) > n })
			}
			samples = append(samples, sampleGomux(g, start))
			t.Logf("sample %s", samples[len(samples)-1])
			nextSample = time.Now().Add(time.Minute)
		}
	}
	// Let idle timers run out: fork servers (20s) and stats (10s). Time
	// passing is the point here: what is left after it is the leak.
	time.Sleep(40 * time.Second)
	end := sampleGomux(g, start)
	first := samples[0]
	t.Logf("soak: %d runs, %d failed, %v; first %s; end %s", runs, failed, time.Since(start).Round(time.Second), first, end)
	if end.fds > first.fds+8 {
		t.Errorf("open files grew: %d -> %d", first.fds, end.fds)
	}
	if end.goroutines > first.goroutines+20 {
		t.Errorf("goroutines grew: %d -> %d", first.goroutines, end.goroutines)
	}
	if end.rssKB > first.rssKB*2+20<<10 {
		t.Errorf("RSS grew: %d KiB -> %d KiB", first.rssKB, end.rssKB)
	}
	checkTargetsClean(t, lab)
}

// checkTargetsClean looks on the targets for what a run may leave behind:
// Ansible temp dirs, fork-server payload dirs of the login user, and any
// process of the login user but the agent.
func checkTargetsClean(t *testing.T, lab *harness.Lab) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(lab.Home, ".ansible/tmp/ansible-tmp-*")); len(m) > 0 {
		t.Errorf("temp dirs left: %v", m)
	}
	out, err := exec.Command("id", "-u", lab.User).Output()
	must(t, err)
	uid := strings.TrimSpace(string(out))
	if m, _ := filepath.Glob("/tmp/ansible_*_payload_*"); len(m) > 0 {
		for _, p := range m {
			if fi, err := os.Stat(p); err == nil && fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid) == uid {
				t.Errorf("payload dir of the login user left: %s", p)
			}
		}
	}
	ps, _ := exec.Command("ps", "-o", "pid=,args=", "-u", lab.User).Output()
	for _, l := range strings.Split(strings.TrimSpace(string(ps)), "\n") {
		if l == "" || strings.Contains(l, "agent-") && strings.Contains(l, " serve") || strings.Contains(l, "sshd") {
			continue
		}
		t.Errorf("process of the login user left on the target: %s", l)
	}
}

// TestLoadManyTargets runs a short become playbook on 200 targets with 50
// forks through one gomux: every host must succeed.
func TestLoadManyTargets(t *testing.T) {
	soakOnly(t)
	lab := harness.Start(t, harness.Options{Targets: 200})
	g := startGomux(t, lab, gomuxOptions{Extra: "stats_interval: 5s\n"})
	ctx := ctxT(t, 30*time.Minute)
	before := sampleGomux(g, time.Now())
	r := runPlaybookOpts(ctx, t, lab, g, playbookPath("become-short.yml"), playOpts{
		env: []string{"ANSIBLE_FORKS=50", "ANSIBLE_PIPELINING=True"},
	})
	bad := 0
	for h, v := range r.Recap {
		if !strings.Contains(v, "unreachable=0 failed=0") {
			bad++
			t.Errorf("%s: %s", h, v)
		}
	}
	if r.Err != nil || len(r.Recap) != len(lab.Targets) {
		t.Errorf("playbook: %v, %d hosts in the recap\n%s", r.Err, len(r.Recap), r.Output)
	}
	// A pause for the logged figure only (nothing is asserted on it): the
	// after sample shows gomux once the playbook's sessions wound down.
	time.Sleep(6 * time.Second)
	t.Logf("200 targets, forks 50: %v, %d hosts failed; gomux before %s, after %s",
		r.Wall.Round(time.Second), bad, before, sampleGomux(g, time.Now()))
}

// TestLoadConcurrentSessions holds 1,000 real `ssh -J` sessions open at
// once through one gomux, spread over 10 targets: every one must finish
// with its command's output and exit status.
func TestLoadConcurrentSessions(t *testing.T) {
	soakOnly(t)
	const n = 1000
	lab := harness.Start(t, harness.Options{Targets: 10})
	// One person from one address holds all of them: the per-person and
	// per-source defaults are for a team, so this test raises them.
	g := startGomux(t, lab, gomuxOptions{Extra: "stats_interval: 5s\n", Limits: `  max_startups: "1000:30:2000"
  per_source_max_startups: 900
  max_connections_per_user: 1200
  max_connections_per_source: 2000
  max_channels_per_user: 4000
  max_channels_per_source: 8000
`})
	ctx := ctxT(t, 20*time.Minute)
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	var peak atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Second):
			}
			if s := sampleGomux(g, time.Now()); int64(s.fds) > peak.Load() {
				peak.Store(int64(s.fds))
			}
		}
	}()
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tgt := lab.Targets[i%len(lab.Targets)]
			r := runCmd(g.SSH(ctx, tgt.Addr, fmt.Sprintf("sleep 20; echo session-%d; exit %d", i, i%7)), nil)
			if r.Stdout == fmt.Sprintf("session-%d\n", i) && r.Code == i%7 {
				ok.Add(1)
				return
			}
			if bad.Add(1) <= 5 {
				t.Errorf("session %d: %+v", i, r)
			}
		}()
		// Stagger the starts over about 10 s, as a fleet's forks would.
		time.Sleep(10 * time.Millisecond)
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	t.Logf("%d concurrent ssh -J sessions: %d ok, %d failed in %v; peak gomux open files %d; gomux %s",
		n, ok.Load(), bad.Load(), time.Since(start).Round(time.Second), peak.Load(), sampleGomux(g, time.Now()))
}
