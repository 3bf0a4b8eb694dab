package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
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
	name  string
	gomux bool
	env   []string
}

func benchModes() []benchMode {
	return []benchMode{
		{name: "stock", env: []string{"ANSIBLE_PIPELINING=False"}},
		{name: "stock_pipe", env: []string{"ANSIBLE_PIPELINING=True"}},
		{name: "mitogen_linear", env: []string{"ANSIBLE_STRATEGY=mitogen_linear"}},
		{name: "mitogen_free", env: []string{"ANSIBLE_STRATEGY=mitogen_free"}},
		{name: "gomux", gomux: true, env: []string{"ANSIBLE_PIPELINING=False"}},
		{name: "gomux_pipe", gomux: true, env: []string{"ANSIBLE_PIPELINING=True"}},
	}
}

// BenchmarkSeed runs the seed playbook (or GOMUX_BENCH_WORKLOAD: latency)
// in every mode (stock Ansible with
// and without pipelining, Debian's Mitogen linear and free, gomux with and
// without pipelining) one after another on GOMUX_BENCH_TARGETS targets
// (default 10) at GOMUX_BENCH_RTT (default 50ms), each from a cold
// ControlMaster, and prints a markdown table. A mode with a failed or
// unreachable host is reported as failed, not timed.
func BenchmarkSeed(b *testing.B) {
	rtt := 50 * time.Millisecond
	if v := os.Getenv("GOMUX_BENCH_RTT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		rtt = d
	}
	n := 10
	if v := os.Getenv("GOMUX_BENCH_TARGETS"); v != "" {
		fmt.Sscan(v, &n)
	}
	workload := "seed"
	if v := os.Getenv("GOMUX_BENCH_WORKLOAD"); v != "" {
		workload = v
	}
	lab := harness.Start(b, harness.Options{Targets: n, RTT: rtt})
	g := startGomux(b, lab, gomuxOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	walls := map[string]time.Duration{}
	failed := map[string]string{}
	for range b.N {
		for _, m := range benchModes() {
			var via *Gomux
			if m.gomux {
				via = g
			}
			r := runPlaybook(ctx, b, lab, via, playbookPath(workload+".yml"), m.env...)
			if r.Err != nil || len(r.Recap) != n || strings.Contains(r.recapString(), "unreachable=1") || strings.Contains(r.recapString(), " failed=1") {
				failed[m.name] = fmt.Sprintf("%v", r.Err)
				b.Logf("%s failed: %v\n%s", m.name, r.Err, lastLines(r.Output, 30))
				continue
			}
			walls[m.name] = r.Wall
		}
	}
	fmt.Printf("\n%s playbook, %d targets, RTT %v, %d cores\n\n", workload, n, rtt, runtime.NumCPU())
	fmt.Println("| mode | wall (s) | vs stock | vs mitogen_linear |")
	fmt.Println("|---|---|---|---|")
	for _, m := range benchModes() {
		w, ok := walls[m.name]
		if !ok {
			fmt.Printf("| %s | failed | | |\n", m.name)
			continue
		}
		ratio := func(ref string) string {
			if rw, ok := walls[ref]; ok {
				return fmt.Sprintf("%.2f", w.Seconds()/rw.Seconds())
			}
			return "n/a"
		}
		fmt.Printf("| %s | %.2f | %s | %s |\n", m.name, w.Seconds(), ratio("stock"), ratio("mitogen_linear"))
	}
	var last map[string]any
	for _, e := range g.Events("channel") {
		if _, ok := e["round_trips"]; ok {
			last = e
		}
	}
	if last != nil {
		fmt.Printf("\ngomux counters of one target after both gomux runs: round_trips=%v local_steps=%v blob_bytes_sent=%v blob_bytes_saved=%v\n",
			last["round_trips"], last["local_steps"], last["blob_bytes_sent"], last["blob_bytes_saved"])
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
