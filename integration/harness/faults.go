package harness

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SetBlackHole makes the relay swallow everything in both directions
// without closing anything, as a cut cable or a dropped route would: bytes
// sent are lost, connections stay open, new ones are accepted and then
// hear nothing. Only keepalives and timeouts can tell.
func (r *Relay) SetBlackHole(on bool) { r.hole.Store(on) }

// RestartSSHD kills the target's sshd and every process it started (the
// per-connection sshd children and the sessions under them), by PID, then
// starts it again with the same config and host key: what a crash or an
// unclean restart of the daemon does to connections already open.
func (t *Target) RestartSSHD(tb testing.TB) {
	tb.Helper()
	old := t.sshd
	for _, pid := range append(Descendants(old.Process.Pid), old.Process.Pid) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	old.Wait()
	cmd := exec.Command(old.Path, old.Args[1:]...)
	if err := cmd.Start(); err != nil {
		tb.Fatalf("restart sshd of %s: %v", t.Name, err)
	}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	t.sshd = cmd
	addr := net.JoinHostPort(t.Addr, strconv.Itoa(t.SSHDPort))
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("restarted sshd of %s does not listen on %s: %v", t.Name, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Descendants returns the PIDs of every process below pid, children
// first, read from /proc.
func Descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(pid)
	return out
}

// KillUserProcesses SIGKILLs every process of the named user (the
// agent, its fork servers, running commands), found by uid, never by name:
// what an OOM kill or an operator's cleanup does to a target.
func KillUserProcesses(user string) { killUserProcesses(user) }

// InTargetMounts runs argv in the mount namespace of the target's sshd,
// which `ip netns exec` gave it: a file system mounted there is what
// the target's sessions see, and nothing else on the machine sees it.
func (t *Target) InTargetMounts(ctx context.Context, argv ...string) ([]byte, error) {
	args := append([]string{"-t", strconv.Itoa(t.sshd.Process.Pid), "-m", "--"}, argv...)
	return exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
}
