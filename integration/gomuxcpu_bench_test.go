package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// BenchmarkGomuxCPU runs the 40-task latency playbook on two targets
// through gomux, with pipelining off and on, each through its own gomux
// process, and reports gomux's own CPU per task. gomux runs with a pprof
// CPU profile (GOMUX_CPUPROFILE), written at its clean shutdown to
// bench-results/gomux-cpu-<mode>.pprof for `go tool pprof -top`, and
// what it allocated to gomux-allocs-<mode>.pprof (GOMUX_MEMPROFILE).
// GOMUX_BENCH_RTT sets the lab RTT (default 0: CPU, not wall time, is
// what is measured), GOMUX_BENCH_REPS the runs per mode after one warm-up
// run (default 3), GOMUX_BENCH_LOG_LEVEL gomux's log level (default
// info, a deployment's default; the tests' debug costs more).
// GOMUX_BENCH_STRACE=1 also counts gomux's system calls with strace -c;
// GOMUX_BENCH_STRACE=writes logs every write with its fd.
func BenchmarkGomuxCPU(b *testing.B) {
	rtt := time.Duration(0)
	if v := os.Getenv("GOMUX_BENCH_RTT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("GOMUX_BENCH_RTT: %v", err)
		}
		rtt = d
	}
	reps := 3
	if v := os.Getenv("GOMUX_BENCH_REPS"); v != "" {
		fmt.Sscan(v, &reps)
	}
	level := os.Getenv("GOMUX_BENCH_LOG_LEVEL")
	if level == "" {
		level = "info"
	}
	dir := filepath.Join(repoRoot(), "bench-results")
	must(b, os.MkdirAll(dir, 0o755))
	lab := harness.Start(b, harness.Options{Targets: 2, RTT: rtt})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for _, m := range []struct{ name, pipelining string }{{"gomux", "False"}, {"gomux_pipe", "True"}} {
		b.Run(m.name, func(b *testing.B) {
			prof := filepath.Join(dir, "gomux-cpu-"+m.name+".pprof")
			g := startGomux(b, lab, gomuxOptions{Env: []string{"GOMUX_CPUPROFILE=" + prof,
				"GOMUX_MEMPROFILE=" + filepath.Join(dir, "gomux-allocs-"+m.name+".pprof")}, LogLevel: level})
			run := func(rep string) int {
				r := runPlaybookOpts(ctx, b, lab, g, playbookPath("latency.yml"), playOpts{
					env:  []string{"ANSIBLE_PIPELINING=" + m.pipelining},
					args: []string{"-e", "gmx_run=" + m.name + "-" + rep},
				})
				rc := parseRecap(r.Output)
				if r.Err != nil || len(rc) != len(lab.Targets) || rc.sum("failed") > 0 || rc.sum("unreachable") > 0 {
					b.Fatalf("playbook: %v\n%s\ngomux:\n%s", r.Err, failureLines(r.Output), g.Problems())
				}
				return rc.sum("ok")
			}
			// The first run uploads the agent and starts the fork
			// servers: a deployment's one-time cost, not counted.
			run("warm")
			for range b.N {
				// GOMUX_BENCH_STRACE counts gomux's system calls over the
				// measured runs, into bench-results/gomux-syscalls-<mode>.txt.
				var st *exec.Cmd
				if v := os.Getenv("GOMUX_BENCH_STRACE"); v != "" {
					args := []string{"-c"}
					if v == "writes" {
						// Every write, with its fd and size.
						args = []string{"-e", "trace=write", "-e", "abbrev=all", "-s", "0"}
					}
					st = exec.Command("strace", append(args, "-f", "-o", filepath.Join(dir, "gomux-syscalls-"+m.name+".txt"),
						"-p", fmt.Sprint(g.cmd.Process.Pid))...)
					must(b, st.Start())
					time.Sleep(time.Second)
				}
				before, tasks := g.CPU(), 0
				userBefore, sysBefore := g.cpuSplit()
				for rep := range reps {
					tasks += run(fmt.Sprint(rep))
				}
				cpu := g.CPU() - before
				user, sys := g.cpuSplit()
				b.Logf("%s: user %v, system %v", m.name, user-userBefore, sys-sysBefore)
				if st != nil {
					if os.Getenv("GOMUX_BENCH_STRACE") == "writes" {
						fds, _ := exec.Command("ls", "-l", fmt.Sprintf("/proc/%d/fd", g.cmd.Process.Pid)).Output()
						os.WriteFile(filepath.Join(dir, "gomux-fds-"+m.name+".txt"), fds, 0o644)
						ss, _ := exec.Command("ss", "-tanpe").Output()
						os.WriteFile(filepath.Join(dir, "gomux-ss-"+m.name+".txt"), ss, 0o644)
					}
					st.Process.Signal(os.Interrupt)
					st.Wait()
				}
				b.ReportMetric(float64(cpu.Microseconds())/1000/float64(tasks), "gomux-ms/task")
				b.Logf("%s: gomux CPU %v for %d tasks (%.2f ms per task)", m.name, cpu, tasks, float64(cpu.Microseconds())/1000/float64(tasks))
			}
			if os.Getenv("GOMUX_BENCH_EVENTS") != "" {
				// What gomux logged, by event and message: the per-task work.
				n := map[string]int{}
				for _, line := range strings.Split(g.Log(), "\n") {
					var e map[string]any
					if json.Unmarshal([]byte(line), &e) == nil {
						n[fmt.Sprintf("%v %v %v %v", e["level"], e["event"], e["step"], e["message"])]++
					}
				}
				for k, v := range n {
					b.Logf("%5d %s", v, k)
				}
			}
			g.Stop()
			b.Logf("profile: go tool pprof -top %s", prof)
		})
	}
}

// cpuSplit is gomux's user and system CPU so far.
func (g *Gomux) cpuSplit() (user, sys time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", g.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut) * 10 * time.Millisecond, time.Duration(st) * 10 * time.Millisecond
}
