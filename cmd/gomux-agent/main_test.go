package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gomux/gomux/agent"
)

// TestMain lets the test binary act as the agent, so the test below runs
// the real main path (fd juggling included) in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("GOMUX_AGENT_TEST_SERVE") == "1" {
		os.Exit(serve(0))
	}
	if os.Getenv("GOMUX_AGENT_TEST_DUMPABLE") == "1" {
		// A command the agent runs: say whether it is dumpable.
		d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		fmt.Println(d, err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestServeOverStdio(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "GOMUX_AGENT_TEST_SERVE=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, stdout, stdin)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("NewClient: %v (stderr %s)", err, stderr.String())
	}
	if v := c.Info().AgentVersion; v != version {
		t.Errorf("agent version %q, want %q", v, version)
	}
	p, err := c.Exec(ctx, agent.ExecRequest{Command: "echo ok"})
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, p.Stderr())
	out, _ := io.ReadAll(p.Stdout())
	if st, err := p.Wait(); err != nil || st.Code != 0 || string(out) != "ok\n" {
		t.Fatalf("exec: %q %+v %v", out, st, err)
	}
	c.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("agent exit: %v (stderr %s)", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("agent did not exit when its stdin closed")
	}
	if !bytes.Contains(stderr.Bytes(), []byte(`"msg":"session ended"`)) {
		t.Errorf("stderr log: %s", stderr.String())
	}
}

func TestStdioIsDevNull(t *testing.T) {
	if os.Getenv("GOMUX_AGENT_TEST_SERVE") != "" {
		t.Skip()
	}
	// Once the banner is out, the agent's fds 0 and 1 must point at
	// /dev/null, so nothing but the protocol reaches the stream.
	cmd := exec.Command(os.Args[0])
	serveAgent(t, cmd)
	for _, fd := range []string{"0", "1"} {
		link, err := os.Readlink("/proc/" + itoa(cmd.Process.Pid) + "/fd/" + fd)
		if err != nil || link != "/dev/null" {
			t.Errorf("agent fd %s -> %q %v", fd, link, err)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// serveAgent starts cmd as a serving agent (this test binary in its
// serve mode) and connects a client to it; cleanup closes both and waits.
func serveAgent(t *testing.T, cmd *exec.Cmd) *agent.Client {
	t.Helper()
	cmd.Env = append(os.Environ(), "GOMUX_AGENT_TEST_SERVE=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Wait() })
	t.Cleanup(func() { stdin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, stdout, stdin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestLauncherDescriptorNotInherited: the launcher leaves the descriptor
// it hashed the agent through open (fd 3); the agent closes it, so
// neither it nor any command it runs holds the agent binary open.
func TestLauncherDescriptorNotInherited(t *testing.T) {
	if os.Getenv("GOMUX_AGENT_TEST_SERVE") != "" {
		t.Skip()
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `exec 3<"$1"; exec "$1"`, "sh", self)
	c := serveAgent(t, cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if link, err := os.Readlink("/proc/" + itoa(cmd.Process.Pid) + "/fd/3"); err == nil && link == self {
		t.Errorf("agent still holds fd 3 -> %s", link)
	}
	p, err := c.Exec(ctx, agent.ExecRequest{Command: "readlink /proc/self/fd/3 || echo closed"})
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, p.Stderr())
	out, _ := io.ReadAll(p.Stdout())
	p.Wait()
	if string(out) != "closed\n" {
		t.Errorf("a command of the agent has fd 3: %q", out)
	}
}

// TestCommandsDumpableAgain: the agent is not dumpable (setNotDumpable),
// but what it runs must be as it is under sshd: execve makes a command
// dumpable again, and the agent does nothing between fork and exec that
// would keep it otherwise.
func TestCommandsDumpableAgain(t *testing.T) {
	if os.Getenv("GOMUX_AGENT_TEST_SERVE") != "" {
		t.Skip()
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := serveAgent(t, exec.Command(self))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{self}, Env: []string{"GOMUX_AGENT_TEST_DUMPABLE=1"}})
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, p.Stderr())
	out, _ := io.ReadAll(p.Stdout())
	p.Wait()
	if string(out) != "1 <nil>\n" {
		t.Errorf("a command of the agent: PR_GET_DUMPABLE says %q, want 1", out)
	}
}

// TestSetNotDumpable: the agent's own /proc/self stays open to it once it
// is not dumpable (it reads exe and fd there); run in a child, so the test
// process keeps its own flag.
func TestSetNotDumpable(t *testing.T) {
	if os.Getenv("GOMUX_AGENT_TEST_HARDEN") == "1" {
		if err := setNotDumpable(); err != nil {
			t.Fatal(err)
		}
		if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); d != 0 || err != nil {
			t.Fatalf("PR_GET_DUMPABLE after setNotDumpable: %d %v", d, err)
		}
		for _, p := range []string{"/proc/self/exe", "/proc/self/fd/0"} {
			if _, err := os.Readlink(p); err != nil {
				t.Fatalf("readlink %s: %v", p, err)
			}
		}
		if _, err := os.ReadDir("/proc/self/fd"); err != nil {
			t.Fatalf("list /proc/self/fd: %v", err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSetNotDumpable$", "-test.v")
	cmd.Env = append(os.Environ(), "GOMUX_AGENT_TEST_HARDEN=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestSetNotDumpable")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
