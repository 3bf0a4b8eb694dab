package agent_test

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gomux/gomux/shim"
)

// BenchmarkChainStages measures the target CPU of each stage of a module
// run as the agent starts it, so the cost of the chain (login shell -c,
// Ansible's /bin/sh -c, sudo, the pyrun client, the fork server's fork
// and child, the module itself) can be compared stage by stage. Each
// sub-benchmark runs one command line b.N times and reports cpu-ms/op:
// the CPU of the processes it started (getrusage RUSAGE_CHILDREN) plus,
// for warm runs, what the fork server and its templates spent meanwhile
// (their utime+stime+cutime+cstime in /proc, which includes the forked
// runs they reaped); warm runs also report that total split into
// client-ms (shells, sudo, pyrun), forkserver-ms (server and templates
// themselves) and runs-ms (the forked runs and their children). A stage's own cost is the difference between two
// lines: sh-c minus exec-true is /bin/sh's start, and so on.
//
// It needs /usr/bin/python3, the agent binary of `make agents`, and for
// the real `command` module ansible-core; sub-benchmarks whose parts are
// missing are skipped. Run it with
//
//	go test -run '^$' -bench BenchmarkChainStages -benchtime 40x ./agent
func BenchmarkChainStages(b *testing.B) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		b.Skip("no /usr/bin/python3")
	}
	agentBin, err := filepath.Abs(filepath.Join("dist", "bin", "gomux-agent-linux-"+runtime.GOARCH))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := os.Stat(agentBin); err != nil {
		b.Skip("no agent binary: run `make agents` first")
	}
	login := "/bin/bash"
	if _, err := os.Stat(login); err != nil {
		login = "/bin/sh"
	}
	xdg := b.TempDir()
	os.Chmod(xdg, 0o700)
	work := filepath.Join(b.TempDir(), "ansible-tmp-1700000000.1-42-1234")
	if err := os.Mkdir(work, 0o700); err != nil {
		b.Fatal(err)
	}
	// Under become the shim runs only an agent named by its SHA-256,
	// which the become user copies into its own $HOME/.cache/gomux.
	agentBin = namedAgent(b, agentBin, xdg)
	// sudo -H runs the become user's copy from root's own home.
	b.Cleanup(func() { os.Remove(filepath.Join(os.Getenv("HOME"), ".cache", "gomux", filepath.Base(agentBin))) })
	trivial := trivialAnsiballZ(b, work)
	command := commandAnsiballZ(b, work)
	// The login user's home is a new account's: /etc/skel's files, as
	// the integration lab's users have.
	home := b.TempDir()
	for _, f := range []string{".bashrc", ".profile"} {
		if data, err := os.ReadFile(filepath.Join("/etc/skel", f)); err == nil {
			os.WriteFile(filepath.Join(home, f), data, 0o644)
		}
	}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + home, "LANG=C.UTF-8",
		"XDG_RUNTIME_DIR=" + xdg, "USER=root", "LOGNAME=root", "SHELL=" + login}
	// The fork servers of this benchmark, under sudo too, are the ones
	// whose command line names this process as their agent.
	self := fmt.Sprintf("%d:%s", os.Getpid(), startTime(b, os.Getpid()))
	pyrun := func(script string) []string {
		return []string{agentBin, "pyrun", "-agent", self, "-idle", "1m", "--", python, script}
	}
	// warmChain is the command the shim hands the agent for Ansible's
	// run of script, with or without sudo; the agent runs it with the
	// login shell's -c.
	warmChain := func(script string, become bool) string {
		cmd := "/bin/sh -c '" + python + " " + script + " && sleep 0'"
		if become {
			cmd = `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-abcdefghijklmnopqrstuvwxyzabcdef ; ` + python + " " + script + `'"'"' && sleep 0'`
		}
		out, ok := shim.Warm(cmd, shim.WarmOptions{Agent: agentBin, AgentID: self, Idle: time.Minute})
		if !ok {
			b.Fatalf("shim did not rewrite %q", cmd)
		}
		return out
	}
	cases := []struct {
		name string
		argv func() []string
		warm bool
		sudo bool
		ssh  bool
	}{
		{name: "exec-true", argv: func() []string { return []string{"/bin/true"} }},
		{name: "login-shell-c", argv: func() []string { return []string{login, "-c", ":"} }},
		// As sshd (and the agent) run it: Debian's bash then reads
		// ~/.bashrc even for -c (SSH_SOURCE_BASHRC).
		{name: "login-shell-c-ssh", ssh: true, argv: func() []string { return []string{login, "-c", ":"} }},
		{name: "sh-c", argv: func() []string { return []string{"/bin/sh", "-c", ":"} }},
		// Ansible's `&& sleep 0` after every run.
		{name: "sh-c-true-sleep0", argv: func() []string { return []string{"/bin/sh", "-c", "/bin/true && sleep 0"} }},
		{name: "sudo-n-true", sudo: true, argv: func() []string { return []string{"sudo", "-H", "-S", "-n", "-u", "root", "/bin/true"} }},
		{name: "agent-binary-start", argv: func() []string { return []string{agentBin, "version"} }},
		{name: "cold-trivial", argv: func() []string { return []string{python, trivial} }},
		{name: "pyrun-trivial", warm: true, argv: func() []string { return pyrun(trivial) }},
		{name: "cold-command", argv: func() []string { return []string{python, command} }},
		{name: "pyrun-command", warm: true, argv: func() []string { return pyrun(command) }},
		{name: "chain-command", warm: true, argv: func() []string { return []string{login, "-c", warmChain(command, false)} }},
		{name: "chain-sudo-command", warm: true, sudo: true, argv: func() []string { return []string{login, "-c", warmChain(command, true)} }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if command == "" && strings.Contains(c.name, "command") {
				b.Skip("no ansible-core to build AnsiballZ_command.py")
			}
			if c.sudo {
				if err := exec.Command("sudo", "-n", "true").Run(); err != nil {
					b.Skip("sudo -n does not work here")
				}
			}
			argv := c.argv()
			run := func() {
				cmd := exec.Command(argv[0], argv[1:]...)
				cmd.Env, cmd.Dir = env, work
				if c.ssh {
					cmd.Env = append(env[:len(env):len(env)], "SSH_CLIENT=192.0.2.1 50000 22", "SSH_CONNECTION=192.0.2.1 50000 192.0.2.2 22")
				}
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Run(); err != nil {
					b.Fatalf("%v: %v\n%s", argv, err, out.Bytes())
				}
				if strings.Contains(out.String(), "gomux pyrun: cold") {
					b.Fatalf("warm run went cold: %s", out.Bytes())
				}
			}
			if c.warm {
				run() // starts the fork server and the template
			}
			self0, runs0 := forkServerCPU(self)
			child0 := childrenCPU()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				run()
			}
			b.StopTimer()
			// A template reaps its run just after it reports the exit.
			time.Sleep(50 * time.Millisecond)
			child := childrenCPU() - child0
			self1, runs1 := forkServerCPU(self)
			server, runs := self1-self0, runs1-runs0
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
			b.ReportMetric(ms(child+server+runs), "cpu-ms/op")
			if c.warm {
				// The client side (shells, sudo, pyrun), the fork
				// server and templates themselves, and the forked runs
				// with what they started.
				b.ReportMetric(ms(child), "client-ms/op")
				b.ReportMetric(ms(server), "forkserver-ms/op")
				b.ReportMetric(ms(runs), "runs-ms/op")
			}
		})
	}
	b.Cleanup(func() {
		for _, pid := range forkServerPIDs(self) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// childrenCPU is the user and system CPU of this process's waited-for
// children so far.
func childrenCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// forkServerPIDs are the fork server processes (server and templates)
// whose command line names agent as theirs.
func forkServerPIDs(agent string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(b, []byte("forkserver-")) && bytes.HasSuffix(b, []byte("\x00"+agent+"\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// forkServerCPU is the CPU the fork servers of agent have used
// themselves (self) and the runs they reaped (runs), from the clock
// ticks of /proc/PID/stat.
func forkServerCPU(agent string) (self, runs time.Duration) {
	var ticks [4]int64
	for _, pid := range forkServerPIDs(agent) {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(st, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(st[i+2:]))
		if len(f) < 15 {
			continue
		}
		for i, k := range f[11:15] { // utime stime cutime cstime
			v, _ := strconv.ParseInt(k, 10, 64)
			ticks[i] += v
		}
	}
	const tick = time.Second / 100 // USER_HZ
	return time.Duration(ticks[0]+ticks[1]) * tick, time.Duration(ticks[2]+ticks[3]) * tick
}

// trivialAnsiballZ is an AnsiballZ-shaped wrapper whose module imports
// basic and exits 0: the fork and the start of a child, without a module.
func trivialAnsiballZ(b *testing.B, dir string) string {
	var zb bytes.Buffer
	if err := writeZip(&zb, map[string]string{
		"ansible/__init__.py":               "",
		"ansible/module_utils/__init__.py":  "",
		"ansible/module_utils/basic.py":     "",
		"ansible/modules/__init__.py":       "",
		"ansible/modules/trivial_module.py": "from ansible.module_utils import basic\n",
	}); err != nil {
		b.Fatal(err)
	}
	script := "#!/usr/bin/python3\n_ANSIBALLZ_WRAPPER = True\ndef _ansiballz_main():\n" +
		"    import os, sys, base64, tempfile, runpy, shutil\n" +
		"    ZIPDATA = \"\"\"" + base64Std(zb.Bytes()) + "\"\"\"\n" +
		"    temp_path = tempfile.mkdtemp(prefix='ansible_trivial_module_payload_')\n" +
		"    try:\n" +
		"        zipped_mod = os.path.join(temp_path, 'ansible_trivial_module_payload.zip')\n" +
		"        with open(zipped_mod, 'wb') as f:\n" +
		"            f.write(base64.b64decode(ZIPDATA))\n" +
		"        sys.path.insert(0, zipped_mod)\n" +
		"        runpy.run_module(mod_name='ansible.modules.trivial_module', run_name='__main__', alter_sys=True)\n" +
		"    finally:\n" +
		"        shutil.rmtree(temp_path, True)\n" +
		"if __name__ == '__main__':\n    _ansiballz_main()\n"
	p := filepath.Join(dir, "AnsiballZ_trivial_module.py")
	if err := os.WriteFile(p, []byte(script), 0o700); err != nil {
		b.Fatal(err)
	}
	return p
}

// commandAnsiballZ has ansible-core build AnsiballZ_command.py for
// `command: true` (a local run that keeps its remote files), and returns
// its path, or "" when ansible is not installed.
func commandAnsiballZ(b *testing.B, dir string) string {
	if _, err := exec.LookPath("ansible"); err != nil {
		return ""
	}
	tmp := filepath.Join(dir, "remote-tmp")
	cmd := exec.Command("ansible", "localhost", "-c", "local", "-m", "command", "-a", "true")
	cmd.Env = append(os.Environ(), "ANSIBLE_KEEP_REMOTE_FILES=1", "ANSIBLE_REMOTE_TMP="+tmp,
		"ANSIBLE_LOCALHOST_WARNING=False", "ANSIBLE_INVENTORY_UNPARSED_WARNING=False", "ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Logf("ansible localhost: %v\n%s", err, out)
		return ""
	}
	found, _ := filepath.Glob(filepath.Join(tmp, "ansible-tmp-*", "AnsiballZ_command.py"))
	if len(found) != 1 {
		b.Logf("ansible left %d AnsiballZ_command.py", len(found))
		return ""
	}
	p := filepath.Join(dir, "AnsiballZ_command.py")
	if err := os.Rename(found[0], p); err != nil {
		b.Fatal(err)
	}
	return p
}

func writeZip(w io.Writer, files map[string]string) error {
	zw := zip.NewWriter(w)
	for name, body := range files {
		f, err := zw.Create(name)
		if err != nil {
			return err
		}
		if _, err := f.Write([]byte(body)); err != nil {
			return err
		}
	}
	return zw.Close()
}

func base64Std(p []byte) string { return base64.StdEncoding.EncodeToString(p) }

// namedAgent copies the agent binary to dir/agent-<its SHA-256>, the
// name the proxy gives it on targets.
func namedAgent(b *testing.B, bin, dir string) string {
	data, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(data)
	p := filepath.Join(dir, "agent-"+hex.EncodeToString(sum[:]))
	if err := os.WriteFile(p, data, 0o755); err != nil {
		b.Fatal(err)
	}
	return p
}

// startTime is field 22 of /proc/PID/stat, as the agent names itself.
func startTime(b *testing.B, pid int) string {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+2:]))
	return f[19]
}
