package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// playbookRun is the outcome of one ansible-playbook run.
type playbookRun struct {
	Wall   time.Duration
	Recap  map[string]string // host → "ok=.. changed=.. unreachable=.. failed=.."
	Output string
	Err    error
}

var recapLine = regexp.MustCompile(`(?m)^(\S+)\s+:\s+(ok=\d+\s+changed=\d+\s+unreachable=\d+\s+failed=\d+)`)

// runPlaybook runs a playbook against every lab target, directly or (when
// g is set) with the one inventory line that sends it through gomux.
func runPlaybook(ctx context.Context, t testing.TB, lab *harness.Lab, g *Gomux, playbook string, env ...string) playbookRun {
	t.Helper()
	return runPlaybookOpts(ctx, t, lab, g, playbook, playOpts{env: env})
}

// playOpts are the less common ways to run a playbook.
type playOpts struct {
	env []string
	// args are extra ansible-playbook arguments (-e ...).
	args []string
	// sshConfig, when set, replaces the gomux's ssh_config (a benchmark
	// reaches gomux through a relay).
	sshConfig string
	// cpu, when set, receives ansible-playbook as soon as it starts, so
	// the benchmark counts the controller's CPU with all its forks.
	cpu *harness.CPUGroup
	// controlDir, when set, is the ControlPath directory, kept across runs
	// (ControlPersist reused as a user's would be); the caller stops the
	// masters. Empty: a fresh directory, its masters stopped at cleanup.
	controlDir string
}

func runPlaybookOpts(ctx context.Context, t testing.TB, lab *harness.Lab, g *Gomux, playbook string, o playOpts) playbookRun {
	t.Helper()
	if _, err := exec.LookPath("ansible-playbook"); err != nil {
		t.Skip("ansible-playbook not installed (apt-get install ansible-core)")
	}
	dir := t.TempDir()
	var sshCfg, commonArgs string
	if g != nil {
		sshCfg = g.SSHConfig
		if o.sshConfig != "" {
			sshCfg = o.sshConfig
		}
		commonArgs = "-F " + sshCfg + " -o ProxyJump=gomux"
	} else {
		sshCfg = writeSSHConfig(t, dir, lab, lab.KnownHostsFile(), "")
		commonArgs = "-F " + sshCfg
	}
	var inv strings.Builder
	inv.WriteString("[all]\n")
	for _, tg := range lab.Targets {
		fmt.Fprintf(&inv, "%s\n", tg.Addr)
	}
	fmt.Fprintf(&inv, "[all:vars]\nansible_user=%s\nansible_ssh_private_key_file=%s\nansible_python_interpreter=/usr/bin/python3\nansible_ssh_common_args=%s\n",
		lab.User, lab.ClientKey, commonArgs)
	invPath := filepath.Join(dir, "inventory")
	must(t, os.WriteFile(invPath, []byte(inv.String()), 0o600))
	cpDir := o.controlDir
	if cpDir == "" {
		cpDir = controlDir(t)
	}
	cmd := exec.CommandContext(ctx, "ansible-playbook", append([]string{"-i", invPath, playbook}, o.args...)...)
	cmd.Env = append(os.Environ(),
		"ANSIBLE_SSH_CONTROL_PATH_DIR="+cpDir,
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(dir, "tmp"),
		"ANSIBLE_HOME="+filepath.Join(dir, "home"),
		"ANSIBLE_FORKS=30",
		"ANSIBLE_NOCOLOR=1",
		"ANSIBLE_RETRY_FILES_ENABLED=0",
	)
	cmd.Env = append(cmd.Env, o.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Start()
	if err == nil && o.cpu != nil {
		// Python takes far longer to start than this write: nothing has
		// forked yet.
		if err = o.cpu.Add(cmd.Process.Pid); err != nil {
			cmd.Process.Kill()
		}
	}
	if err == nil {
		err = cmd.Wait()
	} else if cmd.Process != nil {
		cmd.Wait()
	}
	r := playbookRun{Wall: time.Since(start), Output: out.String(), Err: err, Recap: map[string]string{}}
	for _, m := range recapLine.FindAllStringSubmatch(r.Output, -1) {
		r.Recap[m[1]] = strings.Join(strings.Fields(m[2]), " ")
	}
	return r
}

// controlDir makes a ControlPath directory whose masters are stopped, by
// their sockets, when the test ends.
func controlDir(t testing.TB) string {
	t.Helper()
	cpDir, err := os.MkdirTemp("/tmp", "gmxcp")
	must(t, err)
	t.Cleanup(func() {
		ents, _ := os.ReadDir(cpDir)
		for _, e := range ents {
			exec.Command("ssh", "-O", "exit", "-o", "ControlPath="+filepath.Join(cpDir, e.Name()), "x").Run()
		}
		os.RemoveAll(cpDir)
	})
	return cpDir
}

func playbookPath(name string) string {
	return filepath.Join(repoRoot(), "integration", "testdata", name)
}

func (r playbookRun) recapString() string {
	var hosts []string
	for h := range r.Recap {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	var b strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&b, "%s: %s\n", h, r.Recap[h])
	}
	return b.String()
}

// TestAnsibleSeedThroughGomux runs the seed playbook directly and through
// gomux, with pipelining off and on: the per-host recap must be the same.
func TestAnsibleSeedThroughGomux(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2})
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 10*time.Minute)
	for _, pipelining := range []string{"False", "True"} {
		env := "ANSIBLE_PIPELINING=" + pipelining
		direct := runPlaybook(ctx, t, lab, nil, playbookPath("seed.yml"), env)
		via := runPlaybook(ctx, t, lab, g, playbookPath("seed.yml"), env)
		if direct.Err != nil || len(direct.Recap) != len(lab.Targets) {
			t.Fatalf("direct run (pipelining=%s) failed: %v\n%s", pipelining, direct.Err, direct.Output)
		}
		if via.Err != nil || via.recapString() != direct.recapString() {
			t.Errorf("through gomux (pipelining=%s):\n%s\nwant recap:\n%s\noutput:\n%s", pipelining, via.recapString(), direct.recapString(), via.Output)
		}
		t.Logf("pipelining=%s: direct %v, through gomux %v", pipelining, direct.Wall.Round(time.Millisecond), via.Wall.Round(time.Millisecond))
	}
}

// TestDemo is `make demo`: three targets behind 50 ms of round trip, the
// seed playbook directly and through gomux, both times printed.
func TestDemo(t *testing.T) {
	if os.Getenv("GOMUX_DEMO") == "" {
		t.Skip("run with make demo")
	}
	lab := harness.Start(t, harness.Options{Targets: 3, RTT: 50 * time.Millisecond})
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 10*time.Minute)
	direct := runPlaybook(ctx, t, lab, nil, playbookPath("seed.yml"))
	via := runPlaybook(ctx, t, lab, g, playbookPath("seed.yml"))
	if direct.Err != nil || via.Err != nil {
		t.Fatalf("direct: %v\n%s\nvia gomux: %v\n%s", direct.Err, direct.Output, via.Err, via.Output)
	}
	fmt.Printf("\nseed playbook, 3 targets, RTT 50 ms (pipelining off, Ansible defaults)\n")
	fmt.Printf("  direct ssh:     %6.2f s\n", direct.Wall.Seconds())
	fmt.Printf("  through gomux:  %6.2f s\n", via.Wall.Seconds())
	fmt.Printf("  speedup:        %6.2fx\n\n", direct.Wall.Seconds()/via.Wall.Seconds())
}
