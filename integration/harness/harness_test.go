package harness

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLab(t *testing.T) {
	var lab *Lab
	t.Run("targets", func(t *testing.T) {
		lab = Start(t, Options{Targets: 2})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, tg := range lab.Targets {
			out, err := lab.SSHCommand(ctx, tg.Addr, "id -un; ip -4 -o addr show scope global; sudo -n id -u").CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v %s\n%s", tg.Name, err, out, tg.SSHDLog())
			}
			s := string(out)
			if !strings.HasPrefix(s, lab.User+"\n") || !strings.Contains(s, tg.Addr+"/24") || !strings.HasSuffix(s, "\n0\n") {
				t.Errorf("%s: %q", tg.Name, s)
			}
		}
		dir := t.TempDir()
		src := filepath.Join(dir, "src")
		os.WriteFile(src, []byte("payload"), 0o600)
		batch := filepath.Join(dir, "batch")
		os.WriteFile(batch, []byte("put "+src+" h.txt\nget h.txt "+src+".back\nrm h.txt\n"), 0o600)
		if out, err := lab.SFTPCommand(ctx, "-b", batch, lab.Targets[0].Addr).CombinedOutput(); err != nil {
			t.Fatalf("sftp: %v %s", err, out)
		}
		if b, _ := os.ReadFile(src + ".back"); string(b) != "payload" {
			t.Errorf("sftp round trip: %q", b)
		}
	})
	t.Run("cleanup", func(t *testing.T) {
		if lab == nil {
			t.Skip("no lab")
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), lab.token) {
			t.Errorf("namespaces left: %s", out)
		}
		if exec.Command("id", lab.User).Run() == nil {
			t.Errorf("user %s left", lab.User)
		}
		if _, err := os.Stat(lab.Dir); err == nil {
			t.Errorf("dir %s left", lab.Dir)
		}
		if exec.Command("ip", "link", "show", lab.bridge).Run() == nil {
			t.Errorf("bridge left")
		}
	})
}

func TestRelayLatencyAndDrop(t *testing.T) {
	lab := Start(t, Options{Targets: 1, RTT: 40 * time.Millisecond})
	tg := lab.Targets[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if out, err := lab.SSHCommand(ctx, tg.Addr, "true").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	d := time.Since(start)
	t.Logf("ssh true with RTT 40ms: %v", d)
	if d < 40*time.Millisecond {
		t.Errorf("relay added no delay: %v", d)
	}
	// The drop comes once the session runs (sshd logs its start at
	// LogLevel VERBOSE), not during the handshake.
	sessions := func() int { return strings.Count(tg.SSHDLog(), "Starting session: command") }
	before := sessions()
	cmd := lab.SSHCommand(ctx, tg.Addr, "sleep 30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for tg.Relay.Conns() == 0 || sessions() == before {
		if time.Now().After(deadline) {
			t.Fatalf("the session did not start through the relay (%d conns):\n%s", tg.Relay.Conns(), tg.SSHDLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
	tg.Relay.CloseAll()
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 255 {
		t.Errorf("ssh after drop: %v", err)
	}
}
