package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// TestAdminSessionsKill: during open sessions through gomux (a
// ControlMaster with a running `sleep`, for two persons), `gomux
// sessions -json` lists the person, source, target, remote user and the
// running command; `gomux kill -person` closes that person's connection
// (the master exits, the command is gone from the target) while the
// other person's session goes on; the admin_kill audit line names the
// asking uid; the socket is mode 0600 and another user cannot use it.
func TestAdminSessionsKill(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	// A state dir others may traverse, so only the socket's own mode
	// keeps another user out.
	state, err := os.MkdirTemp("", "gmx-admin-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(state) })
	must(t, os.Chmod(state, 0o711))
	audit := filepath.Join(t.TempDir(), "audit.log")
	g := startGomux(t, lab, gomuxOptions{StateDir: state, Persons: []string{"bob"},
		Extra: "audit:\n  log_file: " + audit + "\n"})
	tgt := lab.Targets[0]
	ctx := ctxT(t, 3*time.Minute)
	bin := gomuxBinary(t)

	alice := startMaster(t, ctx, g, lab.User, tgt.Addr)
	bob := startMaster(t, ctx, g, "bob", tgt.Addr)
	aliceCmd := alice.run(ctx, tgt.Addr, "sleep 4321")
	bob.run(ctx, tgt.Addr, "sleep 4322")

	// gomux sessions -json, by -state: both persons, with their commands.
	var conns []proxy.ConnInfo
	waitFor(t, 30*time.Second, func() bool {
		out, err := exec.CommandContext(ctx, bin, "sessions", "-json", "-state", state).Output()
		must(t, err)
		conns = nil
		must(t, json.Unmarshal(out, &conns))
		return runs(conns, lab.User, "sleep 4321") && runs(conns, "bob", "sleep 4322")
	})
	want := net.JoinHostPort(tgt.Addr, "22")
	for _, c := range conns {
		if !strings.HasPrefix(c.Source, "127.0.0.1:") || len(c.Holds) != 1 || c.Holds[0].Target != want ||
			c.Holds[0].RemoteUser != lab.User || c.Holds[0].Mode != "accelerate" || c.ID == "" {
			t.Errorf("connection listed as %+v", c)
		}
	}
	if !processRuns("sleep", "4321") {
		t.Fatal("the sleep is not running on the target before the kill")
	}
	table := runCmd(exec.CommandContext(ctx, bin, "sessions", "-config", filepath.Join(g.Dir, "gomux.yaml")), nil)
	if table.Code != 0 || !strings.Contains(table.Stdout, "sleep 4321") || !strings.Contains(table.Stdout, lab.User) {
		t.Errorf("gomux sessions table (exit %d):\n%s%s", table.Code, table.Stdout, table.Stderr)
	}
	t.Logf("gomux sessions:\n%s", table.Stdout)

	// gomux kill -person: alice's master exits, her command is gone.
	kill := runCmd(exec.CommandContext(ctx, bin, "kill", "-state", state, "-person", lab.User), nil)
	if kill.Code != 0 || !strings.Contains(kill.Stdout, "closed 1 connection") {
		t.Fatalf("gomux kill (exit %d):\n%s%s", kill.Code, kill.Stdout, kill.Stderr)
	}
	t.Logf("gomux kill:\n%s", kill.Stdout)
	alice.waitExit(t)
	waitExit(t, aliceCmd)
	waitFor(t, 30*time.Second, func() bool { return !processRuns("sleep", "4321") })

	// bob goes on: his command runs, his master takes a new one.
	if !processRuns("sleep", "4322") {
		t.Error("bob's command was stopped by alice's kill")
	}
	if r := runCmd(bob.cmd(ctx, tgt.Addr, "echo still here"), nil); r.Code != 0 || r.Stdout != "still here\n" {
		t.Errorf("bob's session after the kill: exit %d %q %s", r.Code, r.Stdout, r.Stderr)
	}

	// The audit line names who asked, and what was closed.
	lines := auditLines(t, audit)
	checkAuditSchema(t, lines)
	kills := lines[proxy.EventAdminKill]
	if len(kills) != 1 || kills[0]["user"] != lab.User || kills[0]["by_uid"] != float64(os.Geteuid()) ||
		kills[0]["by_user"] != "root" || !strings.Contains(fmtAny(kills[0]["closed"]), want) {
		t.Errorf("admin_kill lines: %v", kills)
	}

	// Mode 0600; another user cannot connect; the socket is gone at stop.
	sock := filepath.Join(state, "admin.sock")
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket %v: %v", fi, err)
	}
	other := publicCopy(t, bin)
	r := runCmd(exec.CommandContext(ctx, "runuser", "-u", lab.OtherUser, "--", other, "sessions", "-state", state), nil)
	if r.Code == 0 || !strings.Contains(r.Stderr, "permission denied") {
		t.Errorf("another user ran gomux sessions: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	g.Stop()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("admin socket left after gomux stopped: %v", err)
	}
}

// master is a ControlMaster through gomux, for one person.
type master struct {
	g      *Gomux
	person string
	sock   string
	proc   *exec.Cmd
}

// startMaster starts `ssh -M -N` to target through gomux logged in as
// person, and waits for its control socket.
func startMaster(t *testing.T, ctx context.Context, g *Gomux, person, target string) *master {
	t.Helper()
	m := &master{g: g, person: person, sock: filepath.Join(t.TempDir(), "cm")}
	m.proc = m.cmd(ctx, target, "-M", "-N", "-o", "ControlPersist=no")
	must(t, m.proc.Start())
	t.Cleanup(func() { m.proc.Process.Kill(); m.proc.Wait() })
	waitFor(t, 30*time.Second, func() bool {
		return exec.CommandContext(ctx, "ssh", "-S", m.sock, "-O", "check", target).Run() == nil
	})
	return m
}

// cmd is ssh through the master's socket (or making it) as the person.
func (m *master) cmd(ctx context.Context, target string, args ...string) *exec.Cmd {
	a := append([]string{"-F", m.g.SSHConfig, "-J", m.person + "@gomux", "-S", m.sock, target}, args...)
	return exec.CommandContext(ctx, "ssh", a...)
}

// run starts command over the master, in the background.
func (m *master) run(ctx context.Context, target, command string) *exec.Cmd {
	c := m.cmd(ctx, target, command)
	must(m.g.t, c.Start())
	m.g.t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	return c
}

func (m *master) waitExit(t *testing.T) { t.Helper(); waitExit(t, m.proc) }

// waitExit waits for a started command to end, failing the test when it
// has not within a minute.
func waitExit(t *testing.T, c *exec.Cmd) {
	t.Helper()
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("%v still runs", c.Args)
	}
}

// runs says whether gomux sessions lists person running command.
func runs(conns []proxy.ConnInfo, person, command string) bool {
	for _, c := range conns {
		for _, h := range c.Holds {
			if c.Person == person && slices.Contains(h.Running, command) {
				return true
			}
		}
	}
	return false
}

// processRuns says whether a process with exactly argv runs on this
// machine (the lab's targets share its process table).
func processRuns(argv ...string) bool {
	want := []byte(strings.Join(argv, "\x00") + "\x00")
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range dirs {
		if b, err := os.ReadFile(p); err == nil && bytes.Equal(b, want) {
			return true
		}
	}
	return false
}

// publicCopy copies the gomux binary where any user may run it.
func publicCopy(t *testing.T, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gmx-bin-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	b, err := os.ReadFile(bin)
	must(t, err)
	p := filepath.Join(dir, "gomux")
	must(t, os.WriteFile(p, b, 0o755))
	return p
}

func fmtAny(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
