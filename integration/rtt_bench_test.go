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
	"github.com/gomux/gomux/proxy"
)

// BenchmarkRoundTrips measures round trips per task from outside: each
// mode runs the 40-task latency playbook and the same playbook cut to its
// first task (latency-1.yml: same module, same options) on one target, each
// at RTT 0 and at RTT 100 ms. What a playbook's wall time gains with the
// RTT, divided by the RTT, is how many times it waited for the network.
// Two figures per mode:
//
//   - per task, one-off costs included: the 40-task playbook's gain / RTT
//     / 40. It charges the tasks with what a run pays once: the
//     ControlMaster's connection, gomux's upstream handshake and agent
//     session, Mitogen's bootstrap, the first upload of the module.
//   - marginal per task: (gain of the 40-task playbook - gain of the
//     1-task playbook) / RTT / 39. The one-off costs are in both
//     playbooks and cancel; every wait a further task adds is still
//     counted, including the ones gomux's own counters cannot see (a
//     pipelined become waiting for BECOME-SUCCESS before Ansible sends the
//     module).
//
// Each mode runs with become (sudo to root) and without, after one
// unmeasured run of the short playbook (what a mode does once per target,
// such as a become user's agent copy or the fork server, is not a per-task
// round trip). GOMUX_BENCH_REPS (default 3) repeats the four runs, the
// medians are printed and written to bench-results/roundtrips.md, with, for
// gomux, its own count of requests per task and the same RTT difference
// taken on the median time of a module run in gomux's log, which a loaded
// controller disturbs less. GOMUX_BENCH_MODES narrows the modes (default:
// all of BenchmarkAnsible's), and GOMUX_BENCH_RTT replaces 100 ms (a larger
// RTT drowns a loaded machine's noise).
func BenchmarkRoundTrips(b *testing.B) {
	reps := 3
	if v := os.Getenv("GOMUX_BENCH_REPS"); v != "" {
		fmt.Sscan(v, &reps)
	}
	modes := selectModes(benchModes(), os.Getenv("GOMUX_BENCH_MODES"))
	if len(modes) == 0 {
		b.Fatalf("GOMUX_BENCH_MODES=%q names no mode", os.Getenv("GOMUX_BENCH_MODES"))
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
	gomuxes := map[string]*Gomux{}
	for _, m := range modes {
		if m.via == "" || gomuxes[m.via] != nil {
			continue
		}
		o := gomuxOptions{}
		if m.via == "gomux_cold" {
			o.Upstream = "  warm_python: false\n"
		}
		g := startGomux(b, lab, o)
		warm := g.SSH(context.Background(), lab.Targets[0].Addr, "true")
		if out, err := warm.CombinedOutput(); err != nil {
			b.Fatalf("warming %s: %v\n%s", m.via, err, out)
		}
		gomuxes[m.via] = g
	}
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Minute)
	defer cancel()

	const long, short = "latency.yml", "latency-1.yml"
	// run is one playbook run at one RTT.
	type run struct {
		wall      time.Duration
		tasks     int
		counted   int64   // gomux's requests to the target
		runMedian float64 // median module run in gomux's log, ms
	}
	type row struct {
		mode, become      string
		perTask, marginal float64 // outside, round trips per task
		counted, waits    float64 // gomux's own figures
		long0, longR      time.Duration
		short0, shortR    time.Duration
		failed            string
	}
	var rows []row
	for range b.N {
		for _, m := range modes {
			g := gomuxes[m.via]
			for _, become := range []bool{false, true} {
				r := row{mode: m.name, become: "no"}
				args := []string{}
				if become {
					r.become = "sudo"
					args = append(args, "--become")
				}
				play := func(playbook string, d time.Duration, tag string) (run, error) {
					lab.Targets[0].Relay.SetRTT(d)
					before, seen := int64(0), 0
					if g != nil {
						before, seen = g.RoundTrips(), len(g.Events(proxy.EventChannel))
					}
					res := runPlaybookOpts(ctx, b, lab, g, playbookPath(playbook), playOpts{
						env:  m.env,
						args: append(append([]string(nil), args...), "-e", "gmx_run="+tag),
					})
					rc := parseRecap(res.Output)
					if res.Err != nil || rc.sum("unreachable") > 0 || rc.sum("failed") > 0 || rc.sum("ok") == 0 {
						return run{}, fmt.Errorf("%s at RTT %v: %v: %s", playbook, d, res.Err, failureLines(res.Output))
					}
					out := run{wall: res.Wall, tasks: rc.sum("ok")}
					if g != nil {
						out.counted = g.RoundTrips() - before
						out.runMedian = medianF(runDurations(g.Events(proxy.EventChannel)[seen:]))
					}
					return out, nil
				}
				var per, marg, counted, waits []float64
				var l0s, lRs, s0s, sRs []time.Duration
				_, err := play(short, 0, fmt.Sprintf("rt-%s-%v-warm", m.name, become))
				for rep := 0; err == nil && rep < reps; rep++ {
					var runs [4]run // long at 0, long at rtt, short at 0, short at rtt
					for i, p := range []struct {
						playbook string
						d        time.Duration
					}{{long, 0}, {long, rtt}, {short, 0}, {short, rtt}} {
						if runs[i], err = play(p.playbook, p.d, fmt.Sprintf("rt-%s-%v-%d-%d", m.name, become, rep, i)); err != nil {
							break
						}
					}
					if err != nil {
						break
					}
					n, k := float64(runs[0].tasks), float64(runs[2].tasks)
					if n <= k {
						err = fmt.Errorf("%s ran %v tasks, %s %v: want more in the first", long, n, short, k)
						break
					}
					gainLong := (runs[1].wall - runs[0].wall).Seconds() / rtt.Seconds()
					gainShort := (runs[3].wall - runs[2].wall).Seconds() / rtt.Seconds()
					per = append(per, gainLong/n)
					marg = append(marg, (gainLong-gainShort)/(n-k))
					counted = append(counted, float64(runs[1].counted)/n)
					waits = append(waits, (runs[1].runMedian-runs[0].runMedian)/float64(rtt.Milliseconds()))
					l0s, lRs = append(l0s, runs[0].wall), append(lRs, runs[1].wall)
					s0s, sRs = append(s0s, runs[2].wall), append(sRs, runs[3].wall)
				}
				lab.Targets[0].Relay.SetRTT(0)
				if err != nil {
					r.failed = err.Error()
				} else {
					r.perTask, r.marginal = medianF(per), medianF(marg)
					r.counted, r.waits = medianF(counted), medianF(waits)
					r.long0, r.longR = medianD(l0s), medianD(lRs)
					r.short0, r.shortR = medianD(s0s), medianD(sRs)
				}
				rows = append(rows, r)
				b.Logf("%s become=%s: %.2f round trips per task, %.2f marginal", r.mode, r.become, r.perTask, r.marginal)
			}
		}
	}
	var t strings.Builder
	t.WriteString(benchStamp())
	fmt.Fprintf(&t, "\nround trips per task, measured from outside: latency.yml (40 tasks) and latency-1.yml (its first task), 1 target, each at RTT 0 and RTT %v; "+
		"per task = (wall40 at %v - wall40 at 0) / %v / 40; marginal = ((wall40 at %v - wall40 at 0) - (wall1 at %v - wall1 at 0)) / %v / 39; %d cores, median of %d\n\n",
		rtt, rtt, rtt, rtt, rtt, rtt, runtime.NumCPU(), reps)
	fmt.Fprintf(&t, "| mode | become | 40 tasks, RTT 0 (s) | 40 tasks, RTT %v (s) | 1 task, RTT 0 (s) | 1 task, RTT %v (s) |", rtt, rtt)
	t.WriteString(" round trips / task, one-off costs included (outside) | round trips / task, marginal (outside) | gomux requests / task (counted) | RTTs in a module run's median time (gomux's log) |\n")
	t.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		if r.failed != "" {
			fmt.Fprintf(&t, "| %s | %s | failed | | | | | | | |\n", r.mode, r.become)
			continue
		}
		counted, waits := "", ""
		if strings.HasPrefix(r.mode, "gomux") {
			counted, waits = fmt.Sprintf("%.2f", r.counted), fmt.Sprintf("%.2f", r.waits)
		}
		fmt.Fprintf(&t, "| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %s |\n", r.mode, r.become,
			r.long0.Seconds(), r.longR.Seconds(), r.short0.Seconds(), r.shortR.Seconds(), r.perTask, r.marginal, counted, waits)
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
