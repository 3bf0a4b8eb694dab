package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

// hostileTools are the tools gomux's shell programs on targets use; an
// attacker's fake of each leaves a marker named by tool and uid, then
// runs the real one, so nothing visibly breaks.
var hostileTools = []string{"uname", "id", "stat", "sha256sum", "cut", "mkdir", "cat", "chmod", "mv", "rm", "head"}

// plantHostilePath makes dir (owned by uid) hold the fake tools, each
// writing a marker into markerDir.
func plantHostilePath(t *testing.T, dir, markerDir string, uid, gid int) {
	t.Helper()
	for _, name := range hostileTools {
		p := filepath.Join(dir, name)
		script := "#!/bin/sh\necho > " + markerDir + "/ran-" + name + "-as-$(/usr/bin/id -u)\nexec /usr/bin/" + name + " \"$@\"\n"
		must(t, os.WriteFile(p, []byte(script), 0o755))
		must(t, os.Chown(p, uid, gid))
	}
	must(t, os.Chown(dir, uid, gid))
	must(t, os.Chmod(dir, 0o755))
}

// foreignMarkers are the markers left by a uid other than the login
// user's (the login user running its own fakes is no escalation).
func foreignMarkers(dir string, loginUID int) []string {
	var out []string
	for _, m := range markers(dir) {
		if !strings.HasSuffix(m, "-as-"+strconv.Itoa(loginUID)) {
			out = append(out, m)
		}
	}
	return out
}

// sudoKeepsPath drops secure_path for user's sudo, for the test's life:
// sudo then keeps the caller's PATH (on its default env_keep list).
func sudoKeepsPath(t *testing.T, user string) {
	t.Helper()
	sudoers := "/etc/sudoers.d/gomux-test-path-" + user
	must(t, os.WriteFile(sudoers, []byte("Defaults:"+user+" !secure_path\n"), 0o440))
	t.Cleanup(func() { os.Remove(sudoers) })
	if out, err := exec.Command("visudo", "-cf", sudoers).CombinedOutput(); err != nil {
		t.Fatalf("sudoers: %v %s", err, out)
	}
}

// TestHardeningBecomeInstallHostilePath is the attack on the become
// install step (target/warm-become.sh): the become user's shell copies,
// hashes and renames the agent into its own cache. Here the login user's sudo
// needs a password (so the login user is not root), sudo is named by
// absolute path (become_exe), and sudoers keeps the caller's PATH (PATH
// is on sudo's default env_keep list; only secure_path, which Debian sets
// and other sudoers leave out, replaces it). An attacker with the login
// account prepends a directory of fake tools to PATH in ~/.bashrc. Stock
// Ansible then runs nothing through PATH as the become user (echo is a
// builtin, the interpreter an absolute path): the direct run leaves no
// marker of the become user, and shows the become user's PATH holds the
// fakes. Through gomux, the install must not run them either.
func TestHardeningBecomeInstallHostilePath(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1, PasswordSudoUser: true})
	g := startGomux(t, lab, gomuxOptions{Upstream: "  warm_python: true\n  warm_python_idle: 15s\n"})
	tgt := lab.Targets[0]
	t.Cleanup(func() {
		for pid := range forkServers(agentPIDs(t, tgt, lab.PasswordUser)) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	sudoKeepsPath(t, lab.PasswordUser)

	uid, gid := lookupIDs(t, lab.PasswordUser)
	otherUID, _ := lookupIDs(t, lab.OtherUser)
	markerDir, err := os.MkdirTemp("/tmp", "gmx-path-mark-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(markerDir) })
	must(t, os.Chmod(markerDir, 0o1777))
	hostile, err := os.MkdirTemp("/tmp", "gmx-path-bin-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(hostile) })
	plantHostilePath(t, hostile, markerDir, uid, gid)
	bashrc := filepath.Join("/home", lab.PasswordUser, ".bashrc")
	old, err := os.ReadFile(bashrc)
	must(t, err)
	must(t, os.WriteFile(bashrc, append([]byte("PATH="+hostile+":$PATH\n"), old...), 0o644))

	dir := t.TempDir()
	play := filepath.Join(dir, "become.yml")
	must(t, os.WriteFile(play, []byte(fmt.Sprintf(`- hosts: all
  gather_facts: false
  vars:
    ansible_user: %s
    ansible_become_password: %s
    ansible_become_exe: /usr/bin/sudo
  tasks:
    - {name: who, become: true, become_user: %s, command: /usr/bin/id -un, register: who}
    - {name: path, become: true, become_user: %s, command: printenv PATH, register: path}
    - debug: {msg: "RESULT {{ who.stdout }}|{{ path.stdout }}"}
`, lab.PasswordUser, lab.Password, lab.OtherUser, lab.OtherUser)), 0o600))

	ctx := ctxT(t, 5*time.Minute)
	// Start the login user's agent with a task without become, and let
	// the become user read it (TestBecomeSwapRace), so that the become
	// user's install runs to its end: the attacker wants every tool run.
	login := filepath.Join(dir, "login.yml")
	must(t, os.WriteFile(login, []byte(fmt.Sprintf("- hosts: all\n  gather_facts: false\n  vars: {ansible_user: %s}\n  tasks:\n    - command: /usr/bin/true\n", lab.PasswordUser)), 0o600))
	if r := runPlaybook(ctx, t, lab, g, login, "ANSIBLE_PIPELINING=True"); r.Err != nil {
		t.Fatalf("login play: %v\n%s", r.Err, r.Output)
	}
	home := filepath.Join("/home", lab.PasswordUser)
	agents, _ := filepath.Glob(filepath.Join(home, ".cache", "gomux", "agent-*"))
	for _, p := range append([]string{home, filepath.Join(home, ".cache"), filepath.Join(home, ".cache", "gomux")}, agents...) {
		must(t, os.Chmod(p, 0o755))
	}
	for _, via := range []*Gomux{nil, g} {
		name := "direct"
		if via != nil {
			name = "gomux"
		}
		r := runPlaybook(ctx, t, lab, via, play, "ANSIBLE_PIPELINING=True")
		res := resultLines(r.Output)
		if r.Err != nil || !strings.HasPrefix(res, "RESULT "+lab.OtherUser+"|"+hostile+":") {
			t.Fatalf("%s: the become user's PATH does not start with the fakes (the attack's premise): %v %q\n%s", name, r.Err, res, r.Output)
		}
		if m := foreignMarkers(markerDir, uid); len(m) > 0 {
			t.Fatalf("%s: a fake tool in the login user's PATH ran as another user (%s is uid %d): %v", name, lab.OtherUser, otherUID, m)
		}
	}
	// Not vacuous: the become user's verified copy was installed, and the
	// tasks ran warm from it.
	if m, _ := filepath.Glob(filepath.Join("/home", lab.OtherUser, ".cache", "gomux", "agent-*")); len(m) != 1 {
		t.Fatalf("the become user has no installed copy: %v\n%s", m, g.Log())
	}
	if countUser(forkServers(agentPIDs(t, tgt, lab.PasswordUser)), lab.OtherUser) == 0 {
		t.Fatalf("become tasks did not run warm\n%s", g.Log())
	}
}
