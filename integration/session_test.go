package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// testInteractive drives a login shell through tmux, as a person would,
// and checks that a window change reaches the remote tty.
func testInteractive(t *testing.T, g *Gomux, host string) {
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux not installed")
	}
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tmux := func(args ...string) string {
		out, err := exec.Command("tmux", append([]string{"-S", sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tmux %v: %v %s", args, err, out)
		}
		return string(out)
	}
	sshCmd := fmt.Sprintf("ssh -F %s -J gomux %s", g.SSHConfig, host)
	tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "gmx", sshCmd)
	t.Cleanup(func() { exec.Command("tmux", "-S", sock, "kill-server").Run() })
	screen := func() string { return tmux("capture-pane", "-p", "-t", "gmx") }
	waitScreen := func(want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(screen(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("screen never showed %q:\n%s", want, screen())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	tmux("send-keys", "-t", "gmx", "echo hello-$((6*7)); tty", "Enter")
	waitScreen("hello-42")
	waitScreen("/dev/pts/")
	tmux("send-keys", "-t", "gmx", "stty size", "Enter")
	waitScreen("24 80")
	tmux("resize-window", "-t", "gmx", "-x", "100", "-y", "30")
	// The window change travels on its own channel request: ask the
	// remote tty again until it reports the new size.
	waitFor(t, 20*time.Second, func() bool {
		if strings.Contains(screen(), "30 100") {
			return true
		}
		tmux("send-keys", "-t", "gmx", "clear; stty size", "Enter")
		return false
	})
	// Ctrl-C reaches the remote foreground job through the pty, once that
	// job runs there (a name unique to this run, to find it).
	job := fmt.Sprintf("sleep 100.%d", os.Getpid())
	tmux("send-keys", "-t", "gmx", job, "Enter")
	waitFor(t, 20*time.Second, func() bool {
		out, _ := exec.Command("pgrep", "-x", "-f", job).Output()
		return len(out) > 0
	})
	tmux("send-keys", "-t", "gmx", "C-c", "")
	tmux("send-keys", "-t", "gmx", "echo after-$((1+1))", "Enter")
	waitScreen("after-2")
	tmux("send-keys", "-t", "gmx", "exit", "Enter")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := exec.Command("tmux", "-S", sock, "has-session", "-t", "gmx").Run(); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shell did not exit:\n%s", screen())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func testSFTP(t *testing.T, lab *harness.Lab, g *Gomux, host string) {
	ctx := ctxT(t, 5*time.Minute)
	dir := t.TempDir()
	files := map[string]int64{"zero": 0, "one": 1, "big": 50 << 20}
	remote := fmt.Sprintf("sftp-%d", os.Getpid())
	var batch strings.Builder
	fmt.Fprintf(&batch, "mkdir %s\ncd %s\n", remote, remote)
	for name, size := range files {
		p := writeRandomFile(t, dir, name, size)
		fmt.Fprintf(&batch, "put %s %s\n", p, name)
	}
	for name := range files {
		fmt.Fprintf(&batch, "get %s %s\n", name, filepath.Join(dir, name+".back"))
	}
	fmt.Fprintf(&batch, "rename one one.renamed\nln -s one.renamed link\nls -l\nrm zero\n")
	bf := filepath.Join(dir, "batch")
	must(t, os.WriteFile(bf, []byte(batch.String()), 0o600))
	args := append(g.ClientArgs(), "-b", bf, host)
	r := runCmd(exec.CommandContext(ctx, "sftp", args...), nil)
	if r.Code != 0 {
		t.Fatalf("sftp batch: %+v", r)
	}
	for name := range files {
		if a, b := fileSum(t, filepath.Join(dir, name)), fileSum(t, filepath.Join(dir, name+".back")); a != b {
			t.Errorf("%s: get differs from put", name)
		}
	}
	if !strings.Contains(r.Stdout, "one.renamed") || !strings.Contains(r.Stdout, "link") {
		t.Errorf("ls output lacks renamed file or link:\n%s", r.Stdout)
	}
	// What sftp did is what the target's filesystem shows.
	check := runCmd(g.SSH(ctx, host, fmt.Sprintf("cd %s && ls -1 && readlink link && stat -c %%s big", remote)), nil)
	want := "big\nlink\none.renamed\none.renamed\n52428800\n"
	if check.Stdout != want {
		t.Errorf("target state after sftp:\n got %q\nwant %q", check.Stdout, want)
	}
	// rmdir, and errors map to sftp status codes.
	bf2 := filepath.Join(dir, "batch2")
	must(t, os.WriteFile(bf2, []byte(fmt.Sprintf("rm %s/big\nrm %s/link\nrm %s/one.renamed\nrmdir %s\n", remote, remote, remote, remote)), 0o600))
	if r := runCmd(exec.CommandContext(ctx, "sftp", append(g.ClientArgs(), "-b", bf2, host)...), nil); r.Code != 0 {
		t.Errorf("sftp cleanup: %+v", r)
	}
	bf3 := filepath.Join(dir, "batch3")
	must(t, os.WriteFile(bf3, []byte("get /nonexistent/file\n"), 0o600))
	r = runCmd(exec.CommandContext(ctx, "sftp", append(g.ClientArgs(), "-b", bf3, host)...), nil)
	if r.Code == 0 || !strings.Contains(r.Stderr, "not found") {
		t.Errorf("missing file: %+v", r)
	}
}

// testLocalForward reaches a server bound to the target's own loopback, so
// the connection can only have been dialled on the target.
func testLocalForward(t *testing.T, g *Gomux, tgt *harness.Target) {
	ctx := ctxT(t, time.Minute)
	docroot := t.TempDir()
	must(t, os.WriteFile(filepath.Join(docroot, "hello.txt"), []byte("from-"+tgt.Name), 0o644))
	srv := exec.Command("ip", "netns", "exec", tgt.Name, "python3", "-m", "http.server", "--bind", "127.0.0.1", "18080", "--directory", docroot)
	must(t, srv.Start())
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	lport := freePort(t)
	fwd := g.SSH(ctx, tgt.Addr, "-N", "-o", "ExitOnForwardFailure=yes", "-L", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:18080", lport))
	var stderr bytes.Buffer
	fwd.Stderr = &stderr
	must(t, fwd.Start())
	t.Cleanup(func() { fwd.Process.Kill(); fwd.Wait() })
	var body string
	waitFor(t, 20*time.Second, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/hello.txt", lport))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == 200
	})
	if body != "from-"+tgt.Name {
		t.Errorf("forwarded body %q", body)
	}
}

// testConcurrent runs 50 sessions from separate clients at once and checks
// on the target that they share one upstream TCP connection.
func testConcurrent(t *testing.T, g *Gomux, tgt *harness.Target) {
	ctx := ctxT(t, 3*time.Minute)
	const n = 50
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = runCmd(g.SSH(ctx, tgt.Addr, fmt.Sprintf("sleep 3; echo session-%d", i)), nil)
		}()
	}
	// Once every one of them has started on the target (each runs 3 s,
	// far longer than a poll), count established connections to its ssh
	// port, inside its namespace, while the last ones still run.
	started := map[int]bool{}
	waitFor(t, 2*time.Minute, func() bool {
		for _, p := range targetProcs(t, tgt, "sleep 3; echo session-") {
			started[p] = true
		}
		return len(started) >= n
	})
	maxConns := 0
	for range 5 {
		if c := establishedSSH(t, tgt); c > maxConns {
			maxConns = c
		}
		// Samples spread over the sessions' run: the wait is the sampling.
		time.Sleep(200 * time.Millisecond)
	}
	wg.Wait()
	for i, r := range results {
		if r.Code != 0 || r.Stdout != fmt.Sprintf("session-%d\n", i) {
			t.Errorf("session %d: %+v", i, r)
		}
	}
	if maxConns != 1 {
		t.Errorf("target saw %d ssh connections during 50 sessions, want 1", maxConns)
	}
}

func establishedSSH(t *testing.T, tgt *harness.Target) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", tgt.Name, "ss", "-Htn", "state", "established", "( sport = :22 )").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			n++
		}
	}
	return n
}
