package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// asUser runs argv on target tgt as the given user, as any other process
// of that user on the target could (`ip netns exec`, then runuser).
func asUser(ctx context.Context, tgt *harness.Target, user string, argv ...string) ([]byte, error) {
	return tgt.Exec(ctx, append([]string{"runuser", "-u", user, "--"}, argv...)...)
}

// firstMapping is the start address of pid's first memory mapping, read
// as root (the test's side, not the attacker's).
func firstMapping(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	must(t, err)
	start, _, _ := strings.Cut(string(b), "-")
	addr, err := strconv.ParseUint(start, 16, 64)
	must(t, err)
	return addr
}

// userPIDs are the pids of processes of user on tgt whose command line
// matches pattern (pgrep -f).
func userPIDs(t *testing.T, tgt *harness.Target, user, pattern string) []int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-u", user, "-f", pattern).Output()
	return inTargetNetns(t, tgt, out)
}

// TestHardeningAgentNotDumpable: the agent carries what passes through it
// for everyone who uses the target's login (become passwords on stdin,
// environments, file contents), so another process of the same login
// user on the target must not read its environment, its descriptors or
// its memory (ptrace's rights). The agent sets itself non-dumpable; the
// commands it runs are reset to dumpable by execve and stay readable as
// they are under sshd, which the test checks too, so the refusal is the
// agent's and not a failure of the method.
func TestHardeningAgentNotDumpable(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	tgt := lab.Targets[0]
	ctx := ctxT(t, 2*time.Minute)

	// A command that stays, run by the agent: the control.
	marker := "gomux-hardening-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	sleeper := g.SSH(ctx, tgt.Addr, "exec -a "+marker+" sleep 300")
	must(t, sleeper.Start())
	t.Cleanup(func() {
		sleeper.Process.Kill()
		sleeper.Wait()
	})
	var agents, children []int
	for i := 0; i < 300 && (len(agents) != 1 || len(children) != 1); i++ {
		time.Sleep(100 * time.Millisecond)
		agents = agentPIDs(t, tgt, lab.User)
		children = userPIDs(t, tgt, lab.User, "^"+marker)
	}
	if len(agents) != 1 || len(children) != 1 {
		t.Fatalf("want one agent and one command of %s, have agents %v commands %v\n%s", lab.User, agents, children, g.Log())
	}

	reads := []struct {
		name string
		argv func(pid int) []string
	}{
		{"environ", func(pid int) []string { return []string{"cat", fmt.Sprintf("/proc/%d/environ", pid)} }},
		{"fd", func(pid int) []string { return []string{"ls", fmt.Sprintf("/proc/%d/fd", pid)} }},
		{"mem", func(pid int) []string {
			return []string{"dd", fmt.Sprintf("if=/proc/%d/mem", pid), "bs=1", "count=1", "iflag=skip_bytes",
				fmt.Sprintf("skip=%d", firstMapping(t, pid)), "status=none"}
		}},
	}
	for _, r := range reads {
		out, err := asUser(ctx, tgt, lab.User, r.argv(children[0])...)
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			t.Errorf("control: %s of the agent's command (pid %d) as %s: %v %q", r.name, children[0], lab.User, err, out)
		}
		out, err = asUser(ctx, tgt, lab.User, r.argv(agents[0])...)
		if err == nil {
			t.Errorf("%s of the agent (pid %d) read by another process of %s: %q", r.name, agents[0], lab.User, out)
		} else if !bytes.Contains(out, []byte("denied")) && !bytes.Contains(out, []byte("not permitted")) {
			t.Errorf("%s of the agent: refused, but not for want of permission: %v %q", r.name, err, out)
		}
	}
	// The agent still serves, and read its own /proc/self (closeLauncherFD:
	// the launcher's fd 3 did not reach the command).
	if got := runCmd(g.SSH(ctx, tgt.Addr, "echo still; readlink /proc/self/fd/3 || echo closed"), nil); got.Stdout != "still\nclosed\n" || got.Code != 0 {
		t.Errorf("after the reads: %+v", got)
	}
}
