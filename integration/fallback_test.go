package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy/upstream"
)

// TestFallback serves a user whose home cannot hold the agent: gomux must
// say why once and serve the target through its own sshd, channel by
// channel, with the same results.
func TestFallback(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tgt := lab.Targets[0]
	// ~/.cache is a file the user cannot replace: no agent cache possible.
	home := "/home/" + lab.OtherUser
	must(t, os.RemoveAll(filepath.Join(home, ".cache")))
	must(t, os.WriteFile(filepath.Join(home, ".cache"), []byte("not a directory"), 0o644))
	must(t, os.Chmod(home, 0o555))
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 3*time.Minute)
	as := func(args ...string) *exec.Cmd {
		return g.SSH(ctx, tgt.Addr, append([]string{"-l", lab.OtherUser}, args...)...)
	}
	direct := func(args ...string) *exec.Cmd {
		return lab.SSHCommand(ctx, append([]string{"-l", lab.OtherUser, tgt.Addr}, args...)...)
	}
	for _, c := range []string{"echo out; echo err >&2; exit 42", "kill -TERM $$", "echo $LANG"} {
		want := runCmd(direct(c), nil)
		got := runCmd(as(c), nil)
		if got != want {
			t.Errorf("%q:\n got  %+v\n want %+v", c, got, want)
		}
	}
	r := runCmd(as("-tt", "stty size; tty >/dev/null && echo tty"), nil)
	if !strings.Contains(r.Stdout, "tty\r\n") {
		t.Errorf("pty in fallback: %+v", r)
	}
	// sftp in fallback is the target's own sftp-server.
	dir := t.TempDir()
	src := writeRandomFile(t, dir, "f", 1<<20)
	batch := filepath.Join(dir, "batch")
	must(t, os.WriteFile(batch, []byte(fmt.Sprintf("get /etc/hostname %s\nput %s /tmp/gmx-fallback-%d\nrm /tmp/gmx-fallback-%d\n", filepath.Join(dir, "h"), src, os.Getpid(), os.Getpid())), 0o600))
	r = runCmd(exec.CommandContext(ctx, "sftp", append(g.ClientArgs(), "-o", "User="+lab.OtherUser, "-b", batch, tgt.Addr)...), nil)
	if r.Code != 0 {
		t.Errorf("sftp in fallback: %+v", r)
	}
	if !hasEvent(g, upstream.EventAgentFallback, "", nil) {
		t.Errorf("no agent_fallback event logged")
	}
	if n := len(g.Events(upstream.EventAgentFallback)); n != 1 {
		t.Errorf("fallback reason logged %d times, want once", n)
	}
}

// TestDrain sends SIGTERM while a session runs: it finishes with its
// output and exit status, and new connections are refused.
func TestDrain(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	host := lab.Targets[0].Addr
	ctx := ctxT(t, time.Minute)
	if r := runCmd(g.SSH(ctx, host, "true"), nil); r.Code != 0 {
		t.Fatalf("warm-up: %+v", r)
	}
	done := make(chan result, 1)
	go func() { done <- runCmd(g.SSH(ctx, host, "sleep 2; echo finished; exit 7"), nil) }()
	// SIGTERM while the session runs on the target.
	waitFor(t, 30*time.Second, func() bool {
		return len(targetProcs(t, lab.Targets[0], "sleep 2; echo finished; exit 7")) > 0
	})
	must(t, g.cmd.Process.Signal(syscall.SIGTERM))
	r := <-done
	if r.Stdout != "finished\n" || r.Code != 7 {
		t.Errorf("session during drain: %+v", r)
	}
	if r := runCmd(g.SSH(ctx, host, "true"), nil); r.Code != 255 {
		t.Errorf("new session after SIGTERM: %+v", r)
	}
	select {
	case <-g.done:
	case <-time.After(20 * time.Second):
		t.Errorf("gomux did not exit after draining")
	}
}
