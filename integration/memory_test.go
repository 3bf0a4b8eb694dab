package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// unreadFlood is one person's attack on gomux's memory: masters
// ControlMasters, each carrying perMaster sessions of a command that never
// reads its stdin, each fed 2 MiB. x/crypto/ssh keeps a 2 MiB receive
// window per channel, so the data waits in gomux.
type unreadFlood struct {
	t       *testing.T
	masters []*exec.Cmd
	cmds    []*exec.Cmd
	once    sync.Once
	wg      sync.WaitGroup
}

// startUnreadFlood starts the attack as person and returns once every
// session has started or been refused.
func startUnreadFlood(ctx context.Context, t *testing.T, g *Gomux, person, target string, masters, perMaster int) *unreadFlood {
	t.Helper()
	f := &unreadFlood{t: t}
	dir := t.TempDir()
	data := filepath.Join(dir, "2mib")
	must(t, os.WriteFile(data, make([]byte, 2<<20), 0o600))
	for m := range masters {
		sock := filepath.Join(dir, fmt.Sprintf("cm%d", m))
		master := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", person+"@gomux", "-M", "-S", sock, "-N", target)
		must(t, master.Start())
		f.masters = append(f.masters, master)
		up := false
		for end := time.Now().Add(20 * time.Second); !up && time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			up = exec.Command("ssh", "-S", sock, "-O", "check", target).Run() == nil
		}
		if !up {
			continue // refused at login (a ceiling): its sessions too
		}
		for range perMaster {
			in, err := os.Open(data)
			must(t, err)
			c := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-S", sock, target, "sleep 120")
			c.Stdin = in
			must(t, c.Start())
			f.cmds = append(f.cmds, c)
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer in.Close()
				c.Wait()
			}()
		}
	}
	t.Cleanup(f.stop)
	return f
}

// refusals are gomux's limit events for person, with their messages.
func refusals(g *Gomux, person string) (n int, why map[string]bool) {
	why = map[string]bool{}
	for _, e := range g.Events(proxy.EventLimit) {
		if e["user"] == person {
			n++
			why[fmt.Sprint(e["error"])] = true
		}
	}
	return n, why
}

// stop ends every process of the attack.
func (f *unreadFlood) stop() {
	f.once.Do(func() {
		for _, c := range append(f.cmds, f.masters...) {
			c.Process.Kill()
		}
		f.wg.Wait()
		for _, c := range f.masters {
			c.Wait()
		}
	})
}

// memoryAttackChannels is the attack's size: GOMUX_MEMORY_CHANNELS
// sessions (default 200, as 4 masters of 50).
func memoryAttackChannels() (masters, perMaster int) {
	n := 200
	if v, err := strconv.Atoi(os.Getenv("GOMUX_MEMORY_CHANNELS")); err == nil && v > 0 {
		n = v
	}
	return 4, (n + 3) / 4
}

// TestMemoryShareAttack: one person opens 200 sessions through 4
// ControlMasters, each fed 2 MiB by a command that never reads it. Before,
// gomux's RSS grew by about 3 MiB a channel with no bound (607 MiB for
// 200; about 700 channels killed every person's sessions under the
// shipped 2 GiB unit). Now that person holds at most their share
// (limits.person_memory_mib, 512 MiB by default, 4 MiB a channel): the channels past it are
// refused with a message, gomux's growth stays about there, and another
// person's playbook, pipelining off and on, runs as it does directly.
func TestMemoryShareAttack(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{Persons: []string{"mallory"}})
	ctx := ctxT(t, 10*time.Minute)
	if r := runCmd(g.SSH(ctx, tg.Addr, "true"), nil); r.Code != 0 {
		t.Fatalf("warm-up: %+v", r)
	}
	before := int(peakRSS(t, g.cmd.Process.Pid) >> 10) // VmHWM, kB
	masters, per := memoryAttackChannels()
	flood := startUnreadFlood(ctx, t, g, "mallory", tg.Addr, masters, per)
	time.Sleep(8 * time.Second) // the data arrives
	out, _ := exec.Command("pgrep", "-c", "-f", "^sleep 120$").Output()
	t.Logf("sessions running on the target: %s (a master refused at the share loses its sessions)", strings.TrimSpace(string(out)))
	for _, pipelining := range []string{"False", "True"} {
		env := "ANSIBLE_PIPELINING=" + pipelining
		direct := runPlaybook(ctx, t, lab, nil, playbookPath("seed.yml"), env)
		via := runPlaybook(ctx, t, lab, g, playbookPath("seed.yml"), env)
		if direct.Err != nil || len(direct.Recap) != len(lab.Targets) {
			t.Fatalf("direct run (pipelining=%s): %v\n%s", pipelining, direct.Err, direct.Output)
		}
		if via.Err != nil || via.recapString() != direct.recapString() {
			t.Errorf("another person's playbook during the attack (pipelining=%s):\n%s\nwant:\n%s\n%s",
				pipelining, via.recapString(), direct.recapString(), via.Output)
		}
	}
	during := int(peakRSS(t, g.cmd.Process.Pid) >> 10)
	const shareMiB = 512
	growth := (during - before) / 1024
	refused, why := refusals(g, "mallory")
	t.Logf("%d sessions fed 2 MiB each by one person: %d refused at their share; gomux peak RSS %d MiB before, %d MiB after: growth %d MiB (share %d MiB)",
		masters*per, refused, before/1024, during/1024, growth, shareMiB)
	for w := range why {
		t.Logf("refusal: %s", w)
	}
	if refused == 0 && masters*(per+1)*4 > shareMiB {
		t.Errorf("no session refused past the person's share")
	}
	// The share counts channel windows; what gomux holds beyond the bytes
	// waiting in them (goroutines, buffers, the other person's run) is
	// small beside it.
	if growth > shareMiB {
		t.Errorf("gomux grew by %d MiB, past one person's share of %d MiB", growth, shareMiB)
	}
	// Once the sessions end, the share is the person's again.
	flood.stop()
	waitFor(t, 30*time.Second, func() bool {
		again := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", "mallory@gomux", tg.Addr, "echo again")
		return runCmd(again, nil).Stdout == "again\n"
	})
}

// TestMemoryCeiling: the same attack against a gomux whose ceiling is
// lower than what the attack would hold (limits.max_memory_mib: 256).
// New work is refused with a message, the process lives, its RSS stays
// within about a quarter above the ceiling, and a session that was running
// before finishes with its output.
func TestMemoryCeiling(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{Persons: []string{"mallory"}, Limits: "  max_memory_mib: 256\n"})
	ctx := ctxT(t, 10*time.Minute)
	running := g.SSH(ctx, tg.Addr, "sleep 15; echo finished")
	var out syncBuffer
	running.Stdout = &out
	must(t, running.Start())
	masters, per := memoryAttackChannels()
	flood := startUnreadFlood(ctx, t, g, "mallory", tg.Addr, masters, per)
	time.Sleep(8 * time.Second)
	peak := int(peakRSS(t, g.cmd.Process.Pid) >> 10)
	// The jump leg at INFO, where ssh prints the banner saying why.
	jump := fmt.Sprintf("ProxyCommand=ssh -F %s -o LogLevel=INFO -W %%h:%%p gomux", g.SSHConfig)
	r := runCmd(exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-o", "ProxyJump=none", "-o", jump, tg.Addr, "echo new"), nil)
	refused, _ := refusals(g, "mallory")
	t.Logf("ceiling 256 MiB: gomux peak RSS %d MiB; %d of mallory's channels and logins refused; a new login: %+v", peak/1024, refused, r)
	if r.Code == 0 || !strings.Contains(r.Stderr, "memory ceiling") {
		t.Errorf("new work at the ceiling: %+v", r)
	}
	if peak/1024 > 256*5/4 {
		t.Errorf("gomux RSS %d MiB, more than a quarter above its 256 MiB ceiling", peak/1024)
	}
	if err := running.Wait(); err != nil || out.String() != "finished\n" {
		t.Errorf("the session running before the attack: %v %q", err, out.String())
	}
	flood.stop()
	select {
	case <-g.done:
		t.Fatalf("gomux died")
	default:
	}
	waitFor(t, 30*time.Second, func() bool { return runCmd(g.SSH(ctx, tg.Addr, "echo back"), nil).Stdout == "back\n" })
}
