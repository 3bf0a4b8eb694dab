package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// gomuxBinary is built once per test binary, with the agents embedded.
type builtBinary struct {
	once sync.Once
	path string
	err  error
}

var build builtBinary // set once, read-only afterwards

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

func gomuxBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root := repoRoot()
		if _, err := os.Stat(filepath.Join(root, "agent/dist/bin/gomux-agent-linux-amd64")); err != nil {
			build.err = fmt.Errorf("agent binaries are not built: run `make agents` (or make test) first")
			return
		}
		dir, err := os.MkdirTemp("", "gomux-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "gomux")
		cmd := exec.Command("go", "build", "-o", build.path, "./cmd/gomux")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// Gomux is one gomux process under test.
type Gomux struct {
	t      testing.TB
	Addr   string
	Port   int
	Dir    string
	cmd    *exec.Cmd
	logMu  sync.Mutex
	logBuf bytes.Buffer
	done   chan struct{}
	// SSHConfig is an ssh_config with `Host gomux` and the client key.
	SSHConfig  string
	KnownHosts string
}

// gomuxOptions tweak the config a test runs gomux with.
type gomuxOptions struct {
	// Targets is the YAML of the targets: list; default accelerates the
	// lab's targets.
	Targets string
	// Extra is appended to the upstream: section.
	Upstream string
	// StateDir reuses a state dir (a second gomux sharing the host CA).
	StateDir string
	// KnownHosts overrides the upstream known_hosts file.
	KnownHosts string
	// AgentSock makes gomux log in to targets with this ssh-agent only.
	AgentSock string
	// IdentityFiles is the YAML list of upstream.identity_files; default
	// the lab's client key.
	IdentityFiles string
	// HostsFile, when set, is what gomux (alone) sees as /etc/hosts: it
	// runs in a private mount namespace with the file bound over it, so
	// tests can give lab targets names without touching the machine.
	HostsFile string
	// Port reuses a front port (a gomux restarted in place); 0 picks one.
	Port int
	// Limits is the YAML body of the limits: section.
	Limits string
	// Auth, when set, is the body of the auth: section (indented two
	// spaces); by default the lab's client key may log in as lab.User
	// through <dir>/users/%u.keys.
	Auth string
	// Extra is top-level YAML appended to the config (e.g. an audit: section).
	Extra string
	// Persons are more login names the lab's key may log in to gomux as
	// (with the default auth), for tests of one person against another.
	Persons []string
	// Env is added to gomux's environment (GOMUX_CPUPROFILE).
	Env []string
	// LogLevel replaces the tests' log_level (debug).
	LogLevel string
	// Binary runs this gomux build instead of the working tree's (an
	// older release, for the upgrade test).
	Binary string
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startGomux(t testing.TB, lab *harness.Lab, o gomuxOptions) *Gomux {
	t.Helper()
	bin := o.Binary
	if bin == "" {
		bin = gomuxBinary(t)
	}
	dir := t.TempDir()
	port := o.Port
	if port == 0 {
		port = freePort(t)
	}
	state := o.StateDir
	if state == "" {
		state = filepath.Join(dir, "state")
	}
	kh := o.KnownHosts
	if kh == "" {
		kh = lab.KnownHostsFile()
	}
	auth := o.Auth
	if auth == "" {
		// One file per login name, as a shared bastion is set up: the
		// lab's key counts for the lab's user only.
		users := filepath.Join(dir, "users")
		must(t, os.MkdirAll(users, 0o700))
		pub, err := os.ReadFile(lab.ClientKey + ".pub")
		must(t, err)
		for _, name := range append([]string{lab.User}, o.Persons...) {
			must(t, os.WriteFile(filepath.Join(users, name+".keys"), pub, 0o600))
		}
		auth = fmt.Sprintf("  authorized_keys: [%s]\n", filepath.Join(users, "%u.keys"))
	}
	targets := o.Targets
	if targets == "" {
		var ips []string
		for _, tg := range lab.Targets {
			ips = append(ips, fmt.Sprintf("%q", tg.Addr))
		}
		// The second rule is for the local-forward test: a service on
		// the target's loopback, reached by a forward inside an
		// accelerated session.
		targets = fmt.Sprintf("  - hosts: [%s]\n    remote_users: [\"*\"]\n    mode: accelerate\n  - cidrs: [127.0.0.1/32]\n    ports: [18080]\n    mode: forward\n", strings.Join(ips, ", "))
	}
	identity := "[" + lab.ClientKey + "]"
	if o.AgentSock != "" {
		identity = "[]"
	}
	if o.IdentityFiles != "" {
		identity = o.IdentityFiles
	}
	logLevel := o.LogLevel
	if logLevel == "" {
		logLevel = "debug"
	}
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
state_dir: %s
log_level: %s
drain_timeout: 5s
auth:
%s
upstream:
  identity_files: %s
  use_ssh_agent: %v
  known_hosts: [%s]
  keepalive_interval: 2s
  keepalive_count_max: 3
%s
limits:
%s
%s
targets:
%s`, port, state, logLevel, strings.TrimRight(auth, "\n"), identity, o.AgentSock != "", kh, o.Upstream, o.Limits, o.Extra, targets)
	cfgPath := filepath.Join(dir, "gomux.yaml")
	must(t, os.WriteFile(cfgPath, []byte(cfg), 0o600))

	g := &Gomux{t: t, Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, Dir: dir, done: make(chan struct{})}
	g.cmd = exec.Command(bin, "serve", "-config", cfgPath)
	if o.HostsFile != "" {
		// unshare and sh exec in place, so the PID is gomux's own.
		g.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
			`mount --bind "$0" /etc/hosts && exec "$@"`, o.HostsFile, bin, "serve", "-config", cfgPath)
	}
	g.cmd.Env = append(append(os.Environ(), "SSH_AUTH_SOCK="+o.AgentSock), o.Env...)
	stderr, err := g.cmd.StderrPipe()
	must(t, err)
	must(t, g.cmd.Start())
	go func() {
		defer close(g.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			g.logMu.Lock()
			g.logBuf.Write(sc.Bytes())
			g.logBuf.WriteByte('\n')
			g.logMu.Unlock()
		}
		g.cmd.Wait()
	}()
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() {
			t.Logf("gomux log:\n%s", g.Log())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", g.Addr)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-g.done:
			t.Fatalf("gomux exited at start:\n%s", g.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("gomux did not listen on %s:\n%s", g.Addr, g.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := exec.Command(bin, "ca", "-state", state).Output()
	must(t, err)
	g.KnownHosts = filepath.Join(dir, "client_known_hosts")
	must(t, os.WriteFile(g.KnownHosts, out, 0o600))
	g.SSHConfig = writeSSHConfig(t, dir, lab, g.KnownHosts, fmt.Sprintf("Host gomux\n  HostName 127.0.0.1\n  Port %d\n  HostKeyAlias gomux\n", port))
	return g
}

// writeSSHConfig writes an ssh_config for the lab's user and key, with host
// keys checked strictly against knownHosts; head holds Host blocks that
// come first.
func writeSSHConfig(t testing.TB, dir string, lab *harness.Lab, knownHosts, head string) string {
	t.Helper()
	p := filepath.Join(dir, "ssh_config")
	must(t, os.WriteFile(p, []byte(head+fmt.Sprintf(`Host *
  User %s
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
`, lab.User, lab.ClientKey, knownHosts)), 0o600))
	return p
}

// Stop sends SIGTERM and waits for the drain.
func (g *Gomux) Stop() {
	if g.cmd.Process == nil {
		return
	}
	select {
	case <-g.done:
		return
	default:
	}
	g.cmd.Process.Signal(os.Interrupt)
	select {
	case <-g.done:
	case <-time.After(15 * time.Second):
		g.cmd.Process.Kill()
		<-g.done
	}
}

// Log returns everything gomux logged so far.
func (g *Gomux) Log() string {
	g.logMu.Lock()
	defer g.logMu.Unlock()
	return g.logBuf.String()
}

// Events returns the JSON log events with the given "event" field.
func (g *Gomux) Events(name string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(g.Log(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["event"] == name {
			out = append(out, m)
		}
	}
	return out
}

// eventTag is how an event's name appears in a JSON log line, for tests
// that count or find lines by it.
func eventTag(name string) string {
	return `"event":"` + name + `"`
}

// SSH returns a real ssh client going through gomux to target.
func (g *Gomux) SSH(ctx context.Context, target string, args ...string) *exec.Cmd {
	a := append([]string{"-F", g.SSHConfig, "-J", "gomux", target}, args...)
	return exec.CommandContext(ctx, "ssh", a...)
}

// SSHVerbose is SSH at OpenSSH's default log level, where the reason for
// a refused channel ("open failed: ...") is printed.
func (g *Gomux) SSHVerbose(ctx context.Context, target string, args ...string) *exec.Cmd {
	cfg := g.SSHConfig + ".info"
	if _, err := os.Stat(cfg); err != nil {
		b, err := os.ReadFile(g.SSHConfig)
		must(g.t, err)
		must(g.t, os.WriteFile(cfg, bytes.ReplaceAll(b, []byte("LogLevel ERROR"), []byte("LogLevel INFO")), 0o600))
	}
	a := append([]string{"-F", cfg, "-J", "gomux", target}, args...)
	return exec.CommandContext(ctx, "ssh", a...)
}

// ClientArgs returns the client options without the destination, for sftp/scp.
func (g *Gomux) ClientArgs() []string {
	return []string{"-F", g.SSHConfig, "-J", "gomux"}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// CPU is the user and system time gomux's process has used so far.
func (g *Gomux) CPU() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", g.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (USER_HZ, 100 on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// RoundTrips adds up, over every target, the shim's count of requests that
// reached the target so far (the counters are cumulative per target).
func (g *Gomux) RoundTrips() int64 {
	last := map[string]float64{}
	for _, e := range g.Events(proxy.EventChannel) {
		rt, ok := e["round_trips"].(float64)
		if !ok {
			continue
		}
		k := fmt.Sprintf("%v/%v", e["target"], e["remote_user"])
		last[k] = max(last[k], rt)
	}
	var n int64
	for _, v := range last {
		n += int64(v)
	}
	return n
}

// Problems returns gomux's log lines above info, and those of channels
// that ended without an exit status: what a failed benchmark run needs.
func (g *Gomux) Problems() string {
	var b strings.Builder
	for _, l := range strings.Split(g.Log(), "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) || strings.Contains(l, "without exit status") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
