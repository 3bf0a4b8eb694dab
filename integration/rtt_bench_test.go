package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// BenchmarkRoundTrips measures round trips per task from outside, the way
// the issue does: the 40-task latency playbook on one target, run at RTT 0
// and at RTT 100 ms; the difference in wall time divided by 0.1 s and by
// the task count is how many times each task waited for the network.
// Counting from outside sees every wait, including the ones gomux's own
// counters cannot (a pipelined become waiting for BECOME-SUCCESS before
// Ansible sends the module). Each mode runs with become (sudo to root)
// and without. GOMUX_BENCH_REPS (default 3) runs each pair that many
// times after one unmeasured run, the median is printed and written to
// bench-results/roundtrips.md, with, for gomux, the same difference
// taken on the median time of a module run in gomux's log, which a loaded
// controller disturbs less; GOMUX_BENCH_MODES narrows the modes
// (default gomux, gomux_pipe, stock, stock_pipe, mitogen_linear), and
// GOMUX_BENCH_RTT replaces 100 ms (a larger RTT drowns a loaded machine's
// noise).
func BenchmarkRoundTrips(b *testing.B) {
	reps := 3
	if v := os.Getenv("GOMUX_BENCH_REPS"); v != "" {
		fmt.Sscan(v, &reps)
	}
	want := map[string]bool{"gomux": true, "gomux_pipe": true, "stock": true, "stock_pipe": true, "mitogen_linear": true}
	if v := os.Getenv("GOMUX_BENCH_MODES"); v != "" {
		want = map[string]bool{}
		for _, m := range strings.Split(v, ",") {
			want[strings.TrimSpace(m)] = true
		}
	}
	var modes []benchMode
	for _, m := range benchModes() {
		if want[m.name] {
			modes = append(modes, m)
		}
	}
	rtt := 100 * time.Millisecond
	if v := os.Getenv("GOMUX_BENCH_RTT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			b.Fatalf("GOMUX_BENCH_RTT=%q: want a positive duration", v)
		}
		rtt = d
	}
	lab := harness.Start(b, harness.Options{Targets: 1})
	g := startGomux(b, lab, gomuxOptions{})
	warm := g.SSH(context.Background(), lab.Targets[0].Addr, "true")
	if out, err := warm.CombinedOutput(); err != nil {
		b.Fatalf("warming gomux: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()

	type row struct {
		mode, become   string
		perTask, inner float64 // outside and gomux-counted round trips per task
		waits          float64 // module runs' median time seen by gomux, in RTTs
		wall0, wall100 time.Duration
		failed         string
	}
	var rows []row
	for range b.N {
		for _, m := range modes {
			for _, become := range []bool{false, true} {
				r := row{mode: m.name, become: "no"}
				args := []string{}
				if become {
					r.become = "sudo"
					args = append(args, "--become")
				}
				var per, inner, waits []float64
				var w0s, w100s []time.Duration
				// One run first, not measured: what a mode does once per
				// target (a become user's agent copy, fork servers, the
				// ControlMaster) is not a per-task round trip.
				{
					var gm *Gomux
					if m.via != "" {
						gm = g
					}
					runPlaybookOpts(ctx, b, lab, gm, playbookPath("latency.yml"), playOpts{env: m.env, args: args})
				}
				for rep := range reps {
					var walls [2]time.Duration
					var runMedian [2]float64
					var rts int64
					for i, d := range []time.Duration{0, rtt} {
						lab.Targets[0].Relay.SetRTT(d)
						var gm *Gomux
						if m.via != "" {
							gm = g
						}
						before, seen := int64(0), 0
						if gm != nil {
							before, seen = gm.RoundTrips(), len(gm.Events("channel"))
						}
						res := runPlaybookOpts(ctx, b, lab, gm, playbookPath("latency.yml"), playOpts{
							env:  m.env,
							args: append(append([]string(nil), args...), "-e", fmt.Sprintf("gmx_run=rt-%s-%v-%d-%d", m.name, become, rep, i)),
						})
						rc := parseRecap(res.Output)
						if res.Err != nil || rc.sum("unreachable") > 0 || rc.sum("failed") > 0 || rc.sum("ok") == 0 {
							r.failed = fmt.Sprintf("%v: %s", res.Err, failureLines(res.Output))
							break
						}
						walls[i] = res.Wall
						if gm != nil {
							runMedian[i] = medianF(runDurations(gm.Events("channel")[seen:]))
						}
						if gm != nil && d == rtt {
							rts = gm.RoundTrips() - before
						}
						if i == 1 {
							tasks := float64(rc.sum("ok"))
							per = append(per, (walls[1]-walls[0]).Seconds()/rtt.Seconds()/tasks)
							inner = append(inner, float64(rts)/tasks)
							waits = append(waits, (runMedian[1]-runMedian[0])/float64(rtt.Milliseconds()))
							w0s, w100s = append(w0s, walls[0]), append(w100s, walls[1])
						}
					}
					if r.failed != "" {
						break
					}
				}
				lab.Targets[0].Relay.SetRTT(0)
				if r.failed == "" {
					r.perTask, r.inner, r.waits = medianF(per), medianF(inner), medianF(waits)
					r.wall0, r.wall100 = medianD(w0s), medianD(w100s)
				}
				rows = append(rows, r)
				b.Logf("%s become=%s: %.2f round trips per task", r.mode, r.become, r.perTask)
			}
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\nround trips per task, measured from outside: latency.yml (40 tasks), 1 target, (wall at RTT %v - wall at RTT 0) / %v / tasks; %d cores, median of %d\n\n",
		rtt, rtt, runtime.NumCPU(), reps)
	fmt.Fprintf(&t, "| mode | become | wall RTT 0 (s) | wall RTT %v (s) |", rtt)
	t.WriteString(" round trips / task (outside) | gomux round trips / task (counted) | RTTs in a module run's median time (gomux's log) |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		if r.failed != "" {
			fmt.Fprintf(&t, "| %s | %s | failed | | | | |\n", r.mode, r.become)
			continue
		}
		counted, waits := "", ""
		if strings.HasPrefix(r.mode, "gomux") {
			counted, waits = fmt.Sprintf("%.2f", r.inner), fmt.Sprintf("%.2f", r.waits)
		}
		fmt.Fprintf(&t, "| %s | %s | %.2f | %.2f | %.2f | %s | %s |\n", r.mode, r.become, r.wall0.Seconds(), r.wall100.Seconds(), r.perTask, counted, waits)
	}
	for _, r := range rows {
		if r.failed != "" {
			fmt.Fprintf(&t, "\n%s become=%s failed: %s\n", r.mode, r.become, r.failed)
		}
	}
	fmt.Print(t.String())
	dir := filepath.Join(repoRoot(), "bench-results")
	if err := os.MkdirAll(dir, 0o755); err == nil {
		os.WriteFile(filepath.Join(dir, "roundtrips.md"), []byte(t.String()), 0o644)
	}
}

// runDurations are the durations (ms) of the module runs gomux served,
// from the channel open to its close: at RTT 100 ms less at RTT 0, in
// RTTs, it counts the waits for the target inside one task, less
// disturbed by a loaded controller than the playbook's wall time.
func runDurations(events []map[string]any) []float64 {
	var ds []float64
	for _, e := range events {
		if d, ok := e["duration"].(float64); ok && e["step"] == "Run" {
			ds = append(ds, d)
		}
	}
	return ds
}

func medianF(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = append([]float64(nil), v...)
	sort.Float64s(v)
	return v[len(v)/2]
}

func medianD(v []time.Duration) time.Duration {
	f := make([]float64, len(v))
	for i, d := range v {
		f[i] = float64(d)
	}
	return time.Duration(medianF(f))
}
