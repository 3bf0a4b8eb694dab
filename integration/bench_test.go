package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/integration/harness"
)

func readFileB(b *testing.B, p string) string {
	data, err := os.ReadFile(p)
	must(b, err)
	return string(data)
}

// median runs fn n times and returns the median duration.
func median(b *testing.B, n int, fn func() error) time.Duration {
	var ds []time.Duration
	for range n {
		start := time.Now()
		if err := fn(); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

// BenchmarkJumpLatency is the latency of `ssh -J gomux host true` against a
// plain OpenSSH jump host in the same place (an sshd on loopback), both warm,
// median of 20, at the lab RTT set by GOMUX_BENCH_RTT (default 0).
func BenchmarkJumpLatency(b *testing.B) {
	rtt := time.Duration(0)
	if v := os.Getenv("GOMUX_BENCH_RTT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		rtt = d
	}
	lab := harness.Start(b, harness.Options{Targets: 1, RTT: rtt})
	g := startGomux(b, lab, gomuxOptions{})
	target := lab.Targets[0]
	// The plain OpenSSH jump host sits where gomux does: on loopback next
	// to the client, with the lab's RTT between it and the target.
	jump := lab.StartJumpHost(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	jumpHost, jumpPort, _ := net.SplitHostPort(jump.Addr)
	khPath := filepath.Join(b.TempDir(), "known_hosts")
	kh := readFileB(b, lab.KnownHostsFile()) + fmt.Sprintf("[%s]:%s %s", jumpHost, jumpPort, gossh.MarshalAuthorizedKey(jump.HostKey))
	must(b, os.WriteFile(khPath, []byte(kh), 0o600))
	plainCfg := writeSSHConfig(b, b.TempDir(), lab, khPath, fmt.Sprintf("Host jump\n  HostName %s\n  Port %s\n", jumpHost, jumpPort))
	run := func(cmd *exec.Cmd) func() error {
		return func() error {
			c := exec.CommandContext(ctx, cmd.Args[0], cmd.Args[1:]...)
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %v\n%s", c.Args, err, out)
			}
			return nil
		}
	}
	viaGomux := run(g.SSH(ctx, target.Addr, "true"))
	viaPlain := run(exec.Command("ssh", "-F", plainCfg, "-J", "jump", target.Addr, "true"))
	// Warm both paths: gomux's pool and agent, the targets' page cache.
	for range 3 {
		if err := viaGomux(); err != nil {
			b.Fatal(err)
		}
		if err := viaPlain(); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	var mg, mp time.Duration
	for range b.N {
		mg = median(b, 20, viaGomux)
		mp = median(b, 20, viaPlain)
	}
	b.ReportMetric(float64(mg.Microseconds())/1000, "gomux-ms")
	b.ReportMetric(float64(mp.Microseconds())/1000, "openssh-jump-ms")
	b.ReportMetric(mg.Seconds()/mp.Seconds(), "ratio")
	fmt.Printf("ssh -J ... true, warm, median of 20, RTT %v: gomux %v, OpenSSH jump host %v (ratio %.2f)\n",
		rtt, mg.Round(time.Millisecond), mp.Round(time.Millisecond), mg.Seconds()/mp.Seconds())
}

// benchMode is one way of running a playbook in the benchmark.
type benchMode struct {
	name string
	// via is "" (direct), "gomux" or "gomux_cold" (warm Python off).
	via string
	env []string
}

func benchModes() []benchMode {
	return []benchMode{
		{name: "stock", env: []string{"ANSIBLE_PIPELINING=False"}},
		{name: "stock_pipe", env: []string{"ANSIBLE_PIPELINING=True"}},
		{name: "mitogen_linear", env: []string{"ANSIBLE_STRATEGY=mitogen_linear"}},
		{name: "mitogen_free", env: []string{"ANSIBLE_STRATEGY=mitogen_free"}},
		{name: "gomux", via: "gomux", env: []string{"ANSIBLE_PIPELINING=False"}},
		{name: "gomux_pipe", via: "gomux", env: []string{"ANSIBLE_PIPELINING=True"}},
		{name: "gomux_cold", via: "gomux_cold", env: []string{"ANSIBLE_PIPELINING=False"}},
		{name: "gomux_pipe_cold", via: "gomux_cold", env: []string{"ANSIBLE_PIPELINING=True"}},
	}
}

// benchWorkload is one playbook on one lab shape.
type benchWorkload struct {
	name     string
	playbook string
	targets  int
	rtt      time.Duration
	// bastion places gomux next to the targets: the RTT is between the
	// controller and gomux, and gomux reaches the targets at once. Direct
	// modes still cross the RTT to the targets.
	bastion bool
}

// benchWorkloads are the tables: the seed playbook (10 hosts at
// RTT 0 and 50 ms, 30 hosts), the latency-bound one, the file-heavy one,
// and gomux as a bastion.
func benchWorkloads() []benchWorkload {
	ms := time.Millisecond
	return []benchWorkload{
		{name: "seed-10h-0ms", playbook: "seed.yml", targets: 10},
		{name: "seed-10h-50ms", playbook: "seed.yml", targets: 10, rtt: 50 * ms},
		{name: "latency-2h-50ms", playbook: "latency.yml", targets: 2, rtt: 50 * ms},
		{name: "seed-30h-50ms", playbook: "seed.yml", targets: 30, rtt: 50 * ms},
		{name: "files-10h-50ms", playbook: "files.yml", targets: 10, rtt: 50 * ms},
		{name: "seed-10h-50ms-bastion", playbook: "seed.yml", targets: 10, rtt: 50 * ms, bastion: true},
	}
}

// benchSample is what one run of one mode cost.
type benchSample struct {
	wall, controller, ssh, proxy, target time.Duration
	roundTrips                           int64
	bytesToTargets                       int64
	tasks                                int
}

// BenchmarkAnsible runs each workload in every mode (stock Ansible with and
// without pipelining, Debian's Mitogen linear and free, gomux with and
// without pipelining, each with warm Python on and off) one after another in the same lab, each from a cold
// ControlMaster, GOMUX_BENCH_REPS times (default 3), and prints a markdown
// table of medians, also written to bench-results/<workload>.md, with the
// wall times drawn in bench-results/<workload>.svg. A mode
// with a failed or unreachable host is reported as failed, not timed.
// GOMUX_BENCH_MODES (comma separated mode names) limits the modes, and
// GOMUX_BENCH_WORKLOADS (comma separated workload names, as in
// benchWorkloads) the workloads; -bench 'BenchmarkAnsible/^name$' does too.
//
// CPU is measured by cgroup: the controller (ansible-playbook and every
// process it starts, sftp included), the ssh processes Ansible starts
// (ControlMasters included; a cgroup of their own, beside the
// controller's, so the controller's total is the sum of the two), gomux's
// own process, and everything on the targets.
func BenchmarkAnsible(b *testing.B) {
	want := commaSet(os.Getenv("GOMUX_BENCH_WORKLOADS"))
	ran := false
	for _, w := range benchWorkloads() {
		if want != nil && !want[w.name] {
			continue
		}
		ran = true
		b.Run(w.name, func(b *testing.B) { benchAnsible(b, w) })
	}
	if !ran {
		b.Fatalf("GOMUX_BENCH_WORKLOADS=%q names no workload", os.Getenv("GOMUX_BENCH_WORKLOADS"))
	}
}

// commaSet is the set of a comma-separated list's names, nil for "".
func commaSet(v string) map[string]bool {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	set := map[string]bool{}
	for _, n := range strings.Split(v, ",") {
		if n = strings.TrimSpace(n); n != "" {
			set[n] = true
		}
	}
	return set
}

// selectModes keeps the modes a comma-separated list names, in the
// benchmark's order; "" keeps them all.
func selectModes(modes []benchMode, list string) []benchMode {
	want := commaSet(list)
	if want == nil {
		return modes
	}
	var keep []benchMode
	for _, m := range modes {
		if want[m.name] {
			keep = append(keep, m)
		}
	}
	return keep
}

func benchAnsible(b *testing.B, w benchWorkload) {
	reps := 3
	if v := os.Getenv("GOMUX_BENCH_REPS"); v != "" {
		fmt.Sscan(v, &reps)
	}
	modes := selectModes(benchModes(), os.Getenv("GOMUX_BENCH_MODES"))
	if len(modes) == 0 {
		b.Fatalf("GOMUX_BENCH_MODES=%q names no mode", os.Getenv("GOMUX_BENCH_MODES"))
	}
	lab := harness.Start(b, harness.Options{Targets: w.targets, RTT: w.rtt, CPUAccounting: true})
	// gomux_cold is the same with the fork server off: a fresh Python
	// per task, as before warm Python.
	gomuxes := map[string]*Gomux{}
	for _, m := range modes {
		switch {
		case m.via == "" || gomuxes[m.via] != nil:
		case m.via == "gomux_cold":
			gomuxes[m.via] = startGomux(b, lab, gomuxOptions{Upstream: "  warm_python: false\n"})
		default:
			gomuxes[m.via] = startGomux(b, lab, gomuxOptions{})
		}
	}
	// In the bastion placement the controller reaches gomux through a
	// relay with the RTT, and gomux reaches the targets at once.
	sshConfigs := map[string]string{}
	if w.bastion {
		for name, g := range gomuxes {
			r, err := harness.StartRelay("127.0.0.1:0", g.Addr, w.rtt)
			must(b, err)
			b.Cleanup(r.Close)
			_, port, _ := net.SplitHostPort(r.Addr())
			sshConfigs[name] = writeSSHConfig(b, b.TempDir(), lab, g.KnownHosts,
				fmt.Sprintf("Host gomux\n  HostName 127.0.0.1\n  Port %s\n  HostKeyAlias gomux\n", port))
		}
	}
	// gomux is an appliance that stays up: the agent is on the targets
	// after the first run ever. Warm it so that one-time upload (a few MB
	// per target) is not counted against the first mode's bytes.
	for _, g := range gomuxes {
		for _, t := range lab.Targets {
			c := g.SSH(context.Background(), t.Addr, "true")
			if out, err := c.CombinedOutput(); err != nil {
				b.Fatalf("warming gomux for %s: %v\n%s", t.Addr, err, out)
			}
		}
	}
	ctlCPU, err := harness.NewCPUGroup("gmx-bench-" + lab.Targets[0].Name + "-controller")
	if err != nil {
		b.Logf("controller CPU not measured: %v", err)
	} else {
		b.Cleanup(ctlCPU.Close)
	}
	sshCPU, _ := harness.NewCPUGroup("gmx-bench-" + lab.Targets[0].Name + "-ssh")
	env := []string{}
	if sshCPU != nil {
		b.Cleanup(sshCPU.Close)
		// Every ssh the controller starts joins the ssh group first.
		wrapper := filepath.Join(b.TempDir(), "ssh")
		must(b, os.WriteFile(wrapper, []byte("#!/bin/sh\necho $$ > "+sshCPU.ProcsFile()+"\nexec ssh \"$@\"\n"), 0o755))
		env = append(env, "ANSIBLE_SSH_EXECUTABLE="+wrapper)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Minute)
	defer cancel()

	samples := map[string][]benchSample{}
	failed := map[string]string{}
	usage := func(g *harness.CPUGroup) time.Duration {
		if g == nil {
			return 0
		}
		return g.Usage()
	}
	for range b.N {
		for rep := range reps {
			for _, m := range modes {
				if _, bad := failed[m.name]; bad {
					continue
				}
				g := gomuxes[m.via]
				for _, t := range lab.Targets {
					if w.bastion && g != nil {
						t.Relay.SetRTT(0)
					} else {
						t.Relay.SetRTT(w.rtt)
					}
				}
				var before benchSample
				before.controller, before.ssh, before.target = usage(ctlCPU), usage(sshCPU), usage(lab.TargetCPU)
				before.bytesToTargets = relayBytes(lab)
				if g != nil {
					before.proxy = g.CPU()
					before.roundTrips = g.RoundTrips()
				}
				r := runPlaybookOpts(ctx, b, lab, g, playbookPath(w.playbook), playOpts{
					env:       append(append([]string(nil), env...), m.env...),
					args:      []string{"-e", fmt.Sprintf("gmx_run=%s-%d", m.name, rep)},
					cpu:       ctlCPU,
					sshConfig: sshConfigs[m.via],
				})
				rc := parseRecap(r.Output)
				if r.Err != nil || len(rc) != w.targets || rc.sum("unreachable") > 0 || rc.sum("failed") > 0 {
					failed[m.name] = fmt.Sprintf("%v", r.Err)
					// What failed, not the play's tail: the fatal and
					// unreachable lines, and what gomux logged above info.
					why := failureLines(r.Output)
					if g != nil {
						why += "\ngomux:\n" + g.Problems()
					}
					fmt.Printf("%s failed: %v\n%s\n", m.name, r.Err, why)
					continue
				}
				s := benchSample{
					wall:           r.Wall,
					controller:     usage(ctlCPU) - before.controller,
					ssh:            usage(sshCPU) - before.ssh,
					target:         usage(lab.TargetCPU) - before.target,
					bytesToTargets: relayBytes(lab) - before.bytesToTargets,
					// An ignored failure counts in ok and in ignored.
					tasks: rc.sum("ok") + rc.sum("failed"),
				}
				if g != nil {
					s.proxy = g.CPU() - before.proxy
					s.roundTrips = g.RoundTrips() - before.roundTrips
				}
				samples[m.name] = append(samples[m.name], s)
				b.Logf("%s rep %d: %.2f s", m.name, rep+1, r.Wall.Seconds())
			}
		}
	}
	table := benchStamp() + benchTable(w, reps, modes, samples, failed)
	fmt.Print(table)
	dir := filepath.Join(repoRoot(), "bench-results")
	if err := os.MkdirAll(dir, 0o755); err == nil {
		os.WriteFile(filepath.Join(dir, w.name+".md"), []byte(table), 0o644)
		if svg, err := benchChartSVG(w, reps, modes, samples); err == nil {
			os.WriteFile(filepath.Join(dir, w.name+".svg"), svg, 0o644)
		}
	}
	if s, ok := medianSample(samples["gomux"]); ok {
		b.ReportMetric(s.wall.Seconds(), "gomux-s")
	}
	if s, ok := medianSample(samples["mitogen_linear"]); ok {
		b.ReportMetric(s.wall.Seconds(), "mitogen_linear-s")
	}
}

// relayBytes is what crossed the relays towards the targets so far.
func relayBytes(lab *harness.Lab) int64 {
	var n int64
	for _, t := range lab.Targets {
		sent, _ := t.Relay.Bytes()
		n += sent
	}
	return n
}

// medianSample takes each figure's median on its own.
func medianSample(ss []benchSample) (benchSample, bool) {
	if len(ss) == 0 {
		return benchSample{}, false
	}
	med := func(f func(benchSample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	d := func(f func(benchSample) time.Duration) time.Duration {
		return time.Duration(med(func(s benchSample) float64 { return float64(f(s)) }))
	}
	return benchSample{
		wall:           d(func(s benchSample) time.Duration { return s.wall }),
		controller:     d(func(s benchSample) time.Duration { return s.controller }),
		ssh:            d(func(s benchSample) time.Duration { return s.ssh }),
		proxy:          d(func(s benchSample) time.Duration { return s.proxy }),
		target:         d(func(s benchSample) time.Duration { return s.target }),
		roundTrips:     int64(med(func(s benchSample) float64 { return float64(s.roundTrips) })),
		bytesToTargets: int64(med(func(s benchSample) float64 { return float64(s.bytesToTargets) })),
		tasks:          int(med(func(s benchSample) float64 { return float64(s.tasks) })),
	}, true
}

// benchStamp is the line that heads each table a benchmark writes: the
// day (UTC) and the commit measured, "+dirty" when the tree had changes,
// so a figure copied to docs/BENCHMARKS.md keeps where it came from.
func benchStamp() string {
	rev := "unknown"
	if out, err := exec.Command("git", "-C", repoRoot(), "rev-parse", "--short", "HEAD").Output(); err == nil {
		rev = strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "-C", repoRoot(), "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
			rev += "+dirty"
		}
	}
	return fmt.Sprintf("\nmeasured %s, commit %s\n", time.Now().UTC().Format("2006-01-02"), rev)
}

// benchTable renders the medians as the markdown table docs/BENCHMARKS.md carries.
func benchTable(w benchWorkload, reps int, modes []benchMode, samples map[string][]benchSample, failed map[string]string) string {
	var t strings.Builder
	place := "gomux next to the controller, RTT between gomux and the targets"
	if w.bastion {
		place = "gomux as a bastion next to the targets, RTT between the controller and gomux (direct modes cross it to the targets)"
	}
	fmt.Fprintf(&t, "\n%s: %s, %d targets, RTT %v, %s; %d cores, median of %d\n\n",
		w.name, w.playbook, w.targets, w.rtt, place, runtime.NumCPU(), reps)
	t.WriteString("| mode | wall (s) | vs stock | vs mitogen_linear | controller CPU, ssh apart (s) | ssh CPU (s) | gomux CPU (s) | gomux CPU / task (ms) | target CPU (s) | target CPU / task (ms) | requests to targets / task (gomux's count) | KB to targets / task |\n")
	t.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	ref := map[string]benchSample{}
	for _, name := range []string{"stock", "mitogen_linear"} {
		if s, ok := medianSample(samples[name]); ok {
			ref[name] = s
		}
	}
	for _, m := range modes {
		s, ok := medianSample(samples[m.name])
		if !ok {
			fmt.Fprintf(&t, "| %s | failed | | | | | | | | | | |\n", m.name)
			continue
		}
		ratio := func(name string) string {
			if r, ok := ref[name]; ok {
				return fmt.Sprintf("%.2f", s.wall.Seconds()/r.wall.Seconds())
			}
			return "n/a"
		}
		tasks := float64(max(s.tasks, 1))
		proxy, proxyPerTask, rts := "", "", ""
		if m.via != "" {
			proxy = fmt.Sprintf("%.2f", s.proxy.Seconds())
			proxyPerTask = fmt.Sprintf("%.1f", float64(s.proxy.Microseconds())/1000/tasks)
			rts = fmt.Sprintf("%.2f", float64(s.roundTrips)/tasks)
		}
		fmt.Fprintf(&t, "| %s | %.2f | %s | %s | %.2f | %.2f | %s | %s | %.2f | %.0f | %s | %.1f |\n",
			m.name, s.wall.Seconds(), ratio("stock"), ratio("mitogen_linear"),
			s.controller.Seconds(), s.ssh.Seconds(), proxy, proxyPerTask, s.target.Seconds(),
			float64(s.target.Milliseconds())/tasks, rts, float64(s.bytesToTargets)/1024/tasks)
	}
	var names []string
	for name := range failed {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(&t, "\n%s failed: %s\n", name, failed[name])
	}
	return t.String()
}

// recap is the PLAY RECAP: per host, each counter.
type recap map[string]map[string]int

var recapFields = regexp.MustCompile(`(\w+)=(\d+)`)

// parseRecap reads every counter of the PLAY RECAP lines.
func parseRecap(out string) recap {
	rc := recap{}
	i := strings.LastIndex(out, "PLAY RECAP")
	if i < 0 {
		return rc
	}
	for _, line := range strings.Split(out[i:], "\n")[1:] {
		host, rest, ok := strings.Cut(line, " : ")
		if !ok {
			continue
		}
		m := map[string]int{}
		for _, f := range recapFields.FindAllStringSubmatch(rest, -1) {
			n, _ := strconv.Atoi(f[2])
			m[f[1]] = n
		}
		rc[strings.TrimSpace(host)] = m
	}
	return rc
}

func (rc recap) sum(field string) int {
	n := 0
	for _, m := range rc {
		n += m[field]
	}
	return n
}

// failureLines picks the lines of a playbook's output that say why it
// failed: fatal or unreachable results.
func failureLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "fatal:") || strings.Contains(l, "UNREACHABLE") {
			if !strings.Contains(l, "...ignoring") {
				keep = append(keep, l)
			}
		}
	}
	return strings.Join(keep, "\n")
}

// TestBenchStamp: every table make bench writes names its day and commit
// ("unknown" outside a git checkout).
func TestBenchStamp(t *testing.T) {
	if got := benchStamp(); !regexp.MustCompile(`^\nmeasured \d{4}-\d\d-\d\d, commit ([0-9a-f]+(\+dirty)?|unknown)\n$`).MatchString(got) {
		t.Errorf("benchStamp() = %q", got)
	}
}
