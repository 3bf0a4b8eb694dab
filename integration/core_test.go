package integration

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
	"github.com/gomux/gomux/proxy/upstream"
)

// result is what a client observes of one ssh run.
type result struct {
	Stdout, Stderr string
	Code           int
}

func runCmd(cmd *exec.Cmd, stdin io.Reader) result {
	var out, errb bytes.Buffer
	cmd.Stdin = stdin
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return result{out.String(), errb.String(), code}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestCore drives the core path with the real OpenSSH client through
// `ssh -J gomux` against real sshd targets, comparing with direct ssh where
// the answer must be identical.
func TestCore(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 2})
	g := startGomux(t, lab, gomuxOptions{})
	tgt := lab.Targets[0]
	host := tgt.Addr

	direct := func(ctx context.Context, args ...string) *exec.Cmd {
		return lab.SSHCommand(ctx, append([]string{tgt.Addr}, args...)...)
	}

	t.Run("exec", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		for _, c := range []string{
			"echo out; echo err >&2",
			"echo one; exit 1",
			"printf 'no newline'; echo e >&2; exit 42",
			"kill -TERM $$",
			"kill -KILL $$",
			"printf '%s\\n' \"$0\"; echo $HOME $USER $LOGNAME $SHELL; pwd",
			"echo $SSH_CONNECTION | wc -w; test -z \"$SSH_TTY\" && echo notty",
		} {
			want := runCmd(direct(ctx, c), nil)
			got := runCmd(g.SSH(ctx, host, c), nil)
			if got != want {
				t.Errorf("%q:\n got  %+v\n want %+v", c, got, want)
			}
		}
	})

	t.Run("unicode-args", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		args := []string{"printf", "'%s|'", "'héllo wörld ✓'", "'日本語'", "'\"q\"'"}
		want := runCmd(direct(ctx, args...), nil)
		got := runCmd(g.SSH(ctx, host, args...), nil)
		if got != want || !strings.Contains(got.Stdout, "日本語") {
			t.Errorf("got %+v want %+v", got, want)
		}
	})

	t.Run("env", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		cmd := g.SSH(ctx, host, "-o", "SendEnv=LANG GOMUX_NOT_ACCEPTED", "echo \"[$LANG][$GOMUX_NOT_ACCEPTED]\"")
		cmd.Env = append(os.Environ(), "LANG=C.UTF-8", "GOMUX_NOT_ACCEPTED=leak")
		got := runCmd(cmd, nil)
		if got.Stdout != "[C.UTF-8][]\n" || got.Code != 0 {
			t.Errorf("env: %+v", got)
		}
	})

	t.Run("tty-identical", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		c := "printf 'a\\nb\\n'; echo err >&2; tty >/dev/null && echo tty; stty size; echo $TERM; exit 3"
		want := runCmd(direct(ctx, "-tt", c), nil)
		got := runCmd(g.SSH(ctx, host, "-tt", c), nil)
		if got.Stdout != want.Stdout || got.Code != want.Code {
			t.Errorf("-tt differs:\n got  %q (%d)\n want %q (%d)", got.Stdout, got.Code, want.Stdout, want.Code)
		}
		if !strings.Contains(got.Stdout, "a\r\nb\r\n") {
			t.Errorf("no CRLF from the pty: %q", got.Stdout)
		}
	})

	t.Run("stdin-100MB", func(t *testing.T) {
		ctx := ctxT(t, 5*time.Minute)
		const size = 100 << 20
		h := sha256.New()
		src := io.TeeReader(io.LimitReader(newPRNG(1), size), h)
		got := runCmd(g.SSH(ctx, host, "sha256sum"), src)
		want := hex.EncodeToString(h.Sum(nil))
		if got.Code != 0 || !strings.HasPrefix(got.Stdout, want) {
			t.Errorf("stdin checksum: got %+v want %s", got, want)
		}
	})

	t.Run("interactive-tmux", func(t *testing.T) {
		testInteractive(t, g, host)
	})

	t.Run("sftp", func(t *testing.T) {
		testSFTP(t, lab, g, host)
	})

	t.Run("scp", func(t *testing.T) {
		ctx := ctxT(t, 2*time.Minute)
		dir := t.TempDir()
		src := writeRandomFile(t, dir, "scp-src", 3<<20)
		for _, legacy := range []bool{false, true} {
			name := fmt.Sprintf("scp-%d-%v", os.Getpid(), legacy)
			args := append(g.ClientArgs(), "-q")
			if legacy {
				args = append(args, "-O")
			}
			up := runCmd(exec.CommandContext(ctx, "scp", append(args, src, host+":"+name)...), nil)
			if up.Code != 0 {
				t.Fatalf("scp upload (legacy=%v): %+v", legacy, up)
			}
			back := filepath.Join(dir, name)
			down := runCmd(exec.CommandContext(ctx, "scp", append(args, host+":"+name, back)...), nil)
			if down.Code != 0 {
				t.Fatalf("scp download (legacy=%v): %+v", legacy, down)
			}
			if fileSum(t, src) != fileSum(t, back) {
				t.Errorf("scp legacy=%v: checksum differs", legacy)
			}
			runCmd(g.SSH(ctx, host, "rm", "-f", name), nil)
		}
	})

	t.Run("local-forward", func(t *testing.T) {
		testLocalForward(t, g, tgt)
	})

	t.Run("concurrent-one-upstream", func(t *testing.T) {
		testConcurrent(t, g, tgt)
	})

	t.Run("accelerated-host-cert", func(t *testing.T) {
		// The client's known_hosts holds only the @cert-authority line,
		// with StrictHostKeyChecking=yes (set in the generated config).
		kh, err := os.ReadFile(g.KnownHosts)
		must(t, err)
		if lines := strings.Split(strings.TrimSpace(string(kh)), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "@cert-authority * ") {
			t.Fatalf("client known_hosts is not just the CA line: %q", kh)
		}
		ctx := ctxT(t, time.Minute)
		got := runCmd(g.SSH(ctx, host, "-o", "StrictHostKeyChecking=yes", "true"), nil)
		if got.Code != 0 {
			t.Fatalf("accelerated session with CA-only known_hosts: %+v", got)
		}
	})

	t.Run("unknown-client-key", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		long := g.SSH(ctx, host, "sleep 3; echo still-alive")
		var longRes result
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); longRes = runCmd(long, nil) }()
		// The other session is running on the target before the stranger
		// knocks.
		waitFor(t, 30*time.Second, func() bool { return len(targetProcs(t, tgt, "sleep 3; echo still-alive")) > 0 })
		key := newClientKey(t)
		// A config that offers only the stranger's key.
		cfg := strings.ReplaceAll(readFile(t, g.SSHConfig), lab.ClientKey, key)
		cfgPath := filepath.Join(t.TempDir(), "ssh_config")
		must(t, os.WriteFile(cfgPath, []byte(cfg), 0o600))
		got := runCmd(exec.CommandContext(ctx, "ssh", "-F", cfgPath, "-J", "gomux", host, "true"), nil)
		if got.Code != 255 || !strings.Contains(got.Stderr, "Permission denied") {
			t.Errorf("stranger key: %+v", got)
		}
		wg.Wait()
		if longRes.Code != 0 || longRes.Stdout != "still-alive\n" {
			t.Errorf("other session disturbed: %+v", longRes)
		}
		if !hasEvent(g, proxy.EventFrontAuth, "accepted", false) {
			t.Errorf("no front_auth rejection logged")
		}
	})

	t.Run("target-not-allowed", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		outside := lab.Targets[1].Addr // not in this gomux's rule set below
		g2 := startGomux(t, lab, gomuxOptions{Targets: fmt.Sprintf("  - hosts: [%q]\n    remote_users: [\"*\"]\n", host)})
		got := runCmd(g2.SSHVerbose(ctx, outside, "true"), nil)
		if got.Code != 255 || !strings.Contains(got.Stderr, "may not reach") {
			t.Errorf("outside target: %+v", got)
		}
		if !hasEvent(g2, proxy.EventForward, "result", "denied") {
			t.Errorf("no denial logged")
		}
		if r := runCmd(g2.SSH(ctx, host, "echo ok"), nil); r.Stdout != "ok\n" {
			t.Errorf("allowed target after a denial: %+v", r)
		}
	})

	t.Run("target-key-mismatch", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		bad := filepath.Join(t.TempDir(), "known_hosts")
		key := newClientKey(t)
		pub := readFile(t, key+".pub")
		must(t, os.WriteFile(bad, []byte(host+" "+pub), 0o600))
		g2 := startGomux(t, lab, gomuxOptions{KnownHosts: bad})
		got := runCmd(g2.SSHVerbose(ctx, host, "true"), nil)
		if got.Code != 255 || !strings.Contains(got.Stderr, "does not match") {
			t.Errorf("mismatching target key: %+v", got)
		}
		if !hasEvent(g2, upstream.EventUpstreamConnect, "", nil) {
			t.Errorf("no upstream_connect failure logged")
		}
	})

	t.Run("splice", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		g2 := startGomux(t, lab, gomuxOptions{Targets: fmt.Sprintf("  - hosts: [%q]\n    mode: splice\n", host)})
		// The target's real key, from the lab's known_hosts, must be what
		// the client sees; the gomux CA alone must not verify it.
		cfg := strings.ReplaceAll(readFile(t, g2.SSHConfig), "UserKnownHostsFile "+g2.KnownHosts, "UserKnownHostsFile "+g2.KnownHosts+" "+lab.KnownHostsFile())
		cfgPath := filepath.Join(t.TempDir(), "ssh_config")
		must(t, os.WriteFile(cfgPath, []byte(cfg), 0o600))
		got := runCmd(exec.CommandContext(ctx, "ssh", "-F", cfgPath, "-J", "gomux", host, "echo spliced"), nil)
		if got.Code != 0 || got.Stdout != "spliced\n" {
			t.Fatalf("splice with the real host key: %+v", got)
		}
		got = runCmd(g2.SSH(ctx, host, "true"), nil)
		if got.Code != 255 || !strings.Contains(got.Stderr, "Host key verification failed") {
			t.Errorf("splice must not present a gomux certificate: %+v", got)
		}
	})

	t.Run("warm-target-second-gomux", func(t *testing.T) {
		ctx := ctxT(t, time.Minute)
		g2 := startGomux(t, lab, gomuxOptions{})
		if r := runCmd(g2.SSH(ctx, host, "echo warm"), nil); r.Stdout != "warm\n" {
			t.Fatalf("second gomux: %+v", r)
		}
		if len(g2.Events(upstream.EventAgentUpload)) != 0 {
			t.Errorf("second gomux uploaded the agent again")
		}
		if !hasEvent(g2, upstream.EventAgentStart, "uploaded", false) {
			t.Errorf("no agent_start without upload logged:\n%s", g2.Log())
		}
	})

	t.Run("agent-killed-mid-exec", func(t *testing.T) {
		ctx := ctxT(t, 2*time.Minute)
		cmd := g.SSH(ctx, host, "echo started; sleep 60")
		var out syncBuffer
		cmd.Stdout = &out
		must(t, cmd.Start())
		waitFor(t, 10*time.Second, func() bool { return strings.Contains(out.String(), "started") })
		pids := agentPIDs(t, tgt, lab.User)
		if len(pids) == 0 {
			t.Fatal("no agent process on the target")
		}
		killed := time.Now()
		for _, p := range pids {
			must(t, exec.Command("kill", "-KILL", strconv.Itoa(p)).Run())
		}
		err := cmd.Wait()
		elapsed := time.Since(killed)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 255 {
			t.Errorf("client after agent kill: %v, want exit 255", err)
		}
		if elapsed > 15*time.Second {
			t.Errorf("client took %v to notice the agent died", elapsed)
		}
		if r := runCmd(g.SSH(ctx, host, "echo next"), nil); r.Stdout != "next\n" {
			t.Errorf("next session after agent kill: %+v", r)
		}
	})
}

// syncBuffer is a bytes.Buffer a test can read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func hasEvent(g *Gomux, event, field string, value any) bool {
	for _, e := range g.Events(event) {
		if field == "" || e[field] == value {
			return true
		}
	}
	return false
}

// waitFor polls ok until it holds, failing the test after d: what a test
// waits for is a condition, never a guessed time.
func waitFor(t *testing.T, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// targetProcs are the processes in the target's network namespace whose
// command line matches pattern (a pgrep -f regular expression), so a test
// can wait for a remote command to be running instead of sleeping.
func targetProcs(t *testing.T, tgt *harness.Target, pattern string) []int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", pattern).Output()
	return inTargetNetns(t, tgt, out)
}

// agentPIDs finds gomux-agent processes of user in the target's namespace.
func agentPIDs(t *testing.T, tgt *harness.Target, user string) []int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-u", user, "-f", "gomux/agent-[0-9a-f]+ serve").Output()
	return inTargetNetns(t, tgt, out)
}

// inTargetNetns keeps the pids of pgrep's output whose network namespace
// is the target's.
func inTargetNetns(t *testing.T, tgt *harness.Target, pgrep []byte) []int {
	t.Helper()
	var pids []int
	for _, f := range strings.Fields(string(pgrep)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		// Only the processes of this target: their netns is the target's.
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p))
		if ns == netnsID(t, tgt) {
			pids = append(pids, p)
		}
	}
	return pids
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return string(b)
}

func newClientKey(t *testing.T) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	blk, err := gossh.MarshalPrivateKey(priv, "stranger")
	must(t, err)
	p := filepath.Join(t.TempDir(), "stranger")
	must(t, os.WriteFile(p, pem.EncodeToMemory(blk), 0o600))
	signer, err := gossh.NewSignerFromKey(priv)
	must(t, err)
	must(t, os.WriteFile(p+".pub", gossh.MarshalAuthorizedKey(signer.PublicKey()), 0o600))
	return p
}

// prng is a fast deterministic byte stream for bulk tests.
type prng struct{ r *mrand.ChaCha8 }

func newPRNG(seed uint64) io.Reader {
	var s [32]byte
	s[0] = byte(seed)
	return &prng{r: mrand.NewChaCha8(s)}
}

func (p *prng) Read(b []byte) (int, error) { return p.r.Read(b) }

func writeRandomFile(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	must(t, err)
	_, err = io.Copy(f, io.LimitReader(newPRNG(uint64(size)), size))
	must(t, err)
	must(t, f.Close())
	return p
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// netnsID is the /proc/PID/ns/net link text of the target's namespace.
func netnsID(t *testing.T, tgt *harness.Target) string {
	t.Helper()
	fi, err := os.Stat("/var/run/netns/" + tgt.Name)
	must(t, err)
	return fmt.Sprintf("net:[%d]", fi.Sys().(*syscall.Stat_t).Ino)
}
