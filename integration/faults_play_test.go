package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
	"github.com/gomux/gomux/proxy/upstream"
)

// faultPlay is one run of testdata/faults.yml through gomux while a test
// breaks something under its victim task.
type faultPlay struct {
	t       *testing.T
	lab     *harness.Lab
	g       *Gomux
	marker  string
	lifted  string // created by finish: the last task may start
	results string
	done    chan playbookRun
	// sleep is the victim's sleep argument, unique to this play, so its
	// process can be found on the target if anything leaves it behind.
	sleep string
}

// startFaultPlay starts the playbook in the background; the victim task
// runs for victimSeconds.
func startFaultPlay(ctx context.Context, t *testing.T, lab *harness.Lab, g *Gomux, victimSeconds int, env ...string) *faultPlay {
	t.Helper()
	if _, err := exec.LookPath("ansible-playbook"); err != nil {
		t.Skip("ansible-playbook not installed (apt-get install ansible-core)")
	}
	// The login user touches the marker: its directory must be reachable.
	mdir, err := os.MkdirTemp("", "gmxfault-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(mdir) })
	must(t, os.Chmod(mdir, 0o777))
	fp := &faultPlay{t: t, lab: lab, g: g, marker: filepath.Join(mdir, "victim-started"), lifted: filepath.Join(mdir, "lifted"),
		results: filepath.Join(t.TempDir(), "results.jsonl"), done: make(chan playbookRun, 1),
		sleep: fmt.Sprintf("%d.%06d", victimSeconds, time.Now().Nanosecond()/1000)}
	o := playOpts{
		env: append([]string{
			"ANSIBLE_CALLBACK_PLUGINS=" + playbookPath("differential/callback_plugins"),
			"ANSIBLE_CALLBACKS_ENABLED=record",
			"GOMUX_DIFF_RESULTS=" + fp.results,
		}, env...),
		args: []string{"-e", "marker=" + fp.marker, "-e", "lifted=" + fp.lifted, "-e", "victim_seconds=" + fp.sleep},
	}
	go func() { fp.done <- runPlaybookOpts(ctx, t, lab, g, playbookPath("faults.yml"), o) }()
	return fp
}

// waitVictim returns once the victim task is running on the target.
func (fp *faultPlay) waitVictim() {
	fp.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(fp.marker); err == nil {
			return
		}
		select {
		case r := <-fp.done:
			fp.t.Fatalf("playbook ended before its victim task started: %v\n%s", r.Err, r.Output)
		default:
		}
		if time.Now().After(deadline) {
			fp.t.Fatalf("victim task did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// result waits for the named task's recorded status.
func (fp *faultPlay) result(task string, within time.Duration) (string, map[string]any) {
	fp.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if f, err := os.Open(fp.results); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var r taskResult
				if json.Unmarshal(sc.Bytes(), &r) == nil && r.Task == task {
					f.Close()
					return r.Status, r.Result
				}
			}
			f.Close()
		}
		if time.Now().After(deadline) {
			return "", nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// finish lets the last task start, the fault being over, waits for the
// playbook and checks the task before and after the victim: the host
// works again.
func (fp *faultPlay) finish() playbookRun {
	fp.t.Helper()
	must(fp.t, os.WriteFile(fp.lifted, nil, 0o644))
	var r playbookRun
	select {
	case r = <-fp.done:
	case <-time.After(3 * time.Minute):
		fp.t.Fatalf("playbook did not finish")
	}
	for _, task := range []string{"before", "after"} {
		if st, res := fp.result(task, time.Second); st != "ok" {
			fp.t.Errorf("task %q: %q %v\n%s", task, st, res, r.Output)
		}
	}
	// Nothing of the victim may outlive its task on the target: the
	// agent takes its children with it, and sshd its sessions. Where the
	// path went silent the agent only learns it from its own unanswered
	// pings (a minute), so this waits that long at most.
	var left string
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, _ := exec.Command("pgrep", "-a", "-f", "sleep "+fp.sleep).Output()
		if left = strings.TrimSpace(string(out)); left == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if left != "" {
		fp.t.Errorf("the victim's processes outlived it on the target:\n%s", left)
	}
	fp.t.Logf("playbook: %v in all", r.Wall.Round(100*time.Millisecond))
	return r
}

// victim waits for the victim's result after a fault injected at start,
// logs how long the failure took to show, and checks it is one of want.
func (fp *faultPlay) victim(start time.Time, want ...string) string {
	fp.t.Helper()
	st, res := fp.result("victim", 2*time.Minute)
	fp.t.Logf("victim: %s %v after the fault", st, time.Since(start).Round(100*time.Millisecond))
	for _, w := range want {
		if st == w {
			if st == "ok" && !strings.Contains(fmt.Sprint(res["stdout"]), "victim-done") {
				fp.t.Errorf("victim ok without its output: %v", res)
			}
			return st
		}
	}
	fp.t.Errorf("victim: %q, want one of %v: %v", st, want, res)
	return st
}

// waitPortFree returns once nothing listens on addr any more.
func waitPortFree(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, 30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
}

// TestFaultsMidPlay breaks the path under a running task, one way per
// subtest, with real Ansible, ControlPersist and pipelining as a user has
// them. The task either finishes or fails as a connection failure
// (UNREACHABLE, from ssh's exit 255), never hangs and never reports a
// success it did not have; the next task on the host works.
func TestFaultsMidPlay(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1, RTT: 10 * time.Millisecond})
	tgt := lab.Targets[0]
	labT := t // the restarted sshd lives as long as the lab
	for _, pipelining := range []string{"False", "True"} {
		env := "ANSIBLE_PIPELINING=" + pipelining
		t.Run("pipelining="+pipelining, func(t *testing.T) {
			// Faults under the target: the victim fails as a connection
			// failure, and lift (if any) ends the fault before the next task.
			for _, f := range []struct {
				name         string
				inject, lift func()
				// byKeepalive: only gomux's keepalive can notice it.
				byKeepalive bool
			}{
				{name: "sshd restarted", inject: func() { tgt.RestartSSHD(labT) }},
				{name: "upstream TCP reset", inject: tgt.Relay.CloseAll},
				{name: "network black hole", inject: func() { tgt.Relay.SetBlackHole(true) }, lift: func() { tgt.Relay.SetBlackHole(false) }, byKeepalive: true},
				{name: "login user's processes killed", inject: func() { harness.KillUserProcesses(lab.User) }},
			} {
				t.Run(f.name, func(t *testing.T) {
					g := startGomux(t, lab, gomuxOptions{})
					fp := startFaultPlay(ctxT(t, 5*time.Minute), t, lab, g, 30, env)
					fp.waitVictim()
					start := time.Now()
					f.inject()
					fp.victim(start, "unreachable")
					if f.lift != nil {
						f.lift()
					}
					fp.finish()
					if f.byKeepalive && len(g.Events(upstream.EventUpstreamKeepaliveTimeout)) == 0 {
						t.Errorf("the dead path was not noticed by keepalive")
					}
				})
			}
			t.Run("gomux SIGKILL and restart", func(t *testing.T) {
				state := t.TempDir()
				g := startGomux(t, lab, gomuxOptions{StateDir: state})
				fp := startFaultPlay(ctxT(t, 5*time.Minute), t, lab, g, 30, env)
				fp.waitVictim()
				start := time.Now()
				must(t, g.cmd.Process.Kill())
				<-g.done
				startGomux(t, lab, gomuxOptions{StateDir: state, Port: g.Port})
				fp.victim(start, "unreachable")
				fp.finish()
			})
			t.Run("gomux SIGTERM drains", func(t *testing.T) {
				state := t.TempDir()
				g := startGomux(t, lab, gomuxOptions{StateDir: state})
				fp := startFaultPlay(ctxT(t, 5*time.Minute), t, lab, g, 3, env)
				fp.waitVictim()
				start := time.Now()
				must(t, g.cmd.Process.Signal(syscall.SIGTERM))
				// The old gomux stops listening at once; the new one
				// takes the port while the old one drains.
				waitPortFree(t, g.Addr)
				g2 := startGomux(t, lab, gomuxOptions{StateDir: state, Port: g.Port})
				fp.victim(start, "ok")
				fp.finish()
				select {
				case <-g.done:
				case <-time.After(30 * time.Second):
					t.Errorf("the old gomux did not exit after its drain")
				}
				if len(g2.Events(proxy.EventInnerConnect)) == 0 {
					t.Errorf("the task after the drain did not reach the new gomux")
				}
			})
		})
	}
}

// TestFaultDiskFull copies a file onto a full file system on the target
// (a small tmpfs, filled up): the task fails with the target's own "No
// space left" error, as it does without gomux, the destination keeps its
// old content, and the next task works.
func TestFaultDiskFull(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tgt := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 5*time.Minute)
	// The tmpfs is mounted where only the target sees it.
	full, err := os.MkdirTemp("", "gmxfull-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(full) })
	inTarget := func(argv ...string) string {
		t.Helper()
		out, err := tgt.InTargetMounts(ctx, argv...)
		if err != nil {
			t.Fatalf("%v: %v %s", argv, err, out)
		}
		return string(out)
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("nsenter not installed (apt-get install util-linux)")
	}
	inTarget("mount", "-t", "tmpfs", "-o", "size=512k,mode=1777", "gomux-full", full)
	t.Cleanup(func() { tgt.InTargetMounts(context.Background(), "umount", full) })
	dest := filepath.Join(full, "dest.txt")
	inTarget("sh", "-c", `echo original > "$0" && (dd if=/dev/zero of="$1" bs=4k 2>/dev/null; true)`, dest, filepath.Join(full, "filler"))
	big := writeRandomFile(t, t.TempDir(), "big.bin", 300_000)
	for _, pipelining := range []string{"False", "True"} {
		for _, via := range []*Gomux{nil, g} {
			results := filepath.Join(t.TempDir(), "results.jsonl")
			r := runPlaybookOpts(ctx, t, lab, via, playbookPath("diskfull.yml"), playOpts{
				env: []string{"ANSIBLE_PIPELINING=" + pipelining,
					"ANSIBLE_CALLBACK_PLUGINS=" + playbookPath("differential/callback_plugins"),
					"ANSIBLE_CALLBACKS_ENABLED=record", "GOMUX_DIFF_RESULTS=" + results},
				args: []string{"-e", "big_file=" + big, "-e", "full_dir=" + full, "-b"},
			})
			name := fmt.Sprintf("pipelining=%s via gomux=%v", pipelining, via != nil)
			fp := &faultPlay{t: t, results: results}
			st, res := fp.result("copy onto a full disk", time.Second)
			if st != "failed_ignored" || !strings.Contains(fmt.Sprint(res), "No space left") {
				t.Errorf("%s: copy: %q %v\n%s", name, st, res, r.Output)
			}
			if st, res := fp.result("after", time.Second); st != "ok" {
				t.Errorf("%s: task after: %q %v", name, st, res)
			}
			if got := inTarget("cat", dest); got != "original\n" {
				t.Errorf("%s: destination changed: %q", name, got)
			}
		}
	}
}

// TestFaultForkServerDirUnusable takes the fork server's directory away
// from the login user (it exists, owned by root): every module runs with
// the plain interpreter and the play succeeds as it would without gomux.
func TestFaultForkServerDirUnusable(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	out, err := exec.Command("id", "-u", lab.User).Output()
	must(t, err)
	dir := "/tmp/gomux-" + strings.TrimSpace(string(out))
	os.RemoveAll(dir) // a uid left over from an earlier lab
	must(t, os.Mkdir(dir, 0o755))
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx := ctxT(t, 5*time.Minute)
	for _, pipelining := range []string{"False", "True"} {
		r := runPlaybook(ctx, t, lab, g, playbookPath("plain.yml"), "ANSIBLE_PIPELINING="+pipelining)
		if r.Err != nil || !strings.Contains(r.recapString(), "ok=3 changed=0 unreachable=0 failed=0") {
			t.Errorf("pipelining=%s: %v\n%s", pipelining, r.Err, r.Output)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a fork server used the directory it does not own: %v", ents)
	}
}
