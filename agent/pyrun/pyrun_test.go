package pyrun

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/gomux/gomux/target"
)

// pyRunHelperName, as argv[0] of this test binary, makes it act as
// `gomux-agent pyrun` (see TestMain), so the tests run the real client.
const pyRunHelperName = "gomux-pyrun-helper"

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == pyRunHelperName {
		os.Exit(Run(context.Background(), os.Args[2:]))
	}
	if filepath.Base(os.Args[0]) == pyPeerHelperName {
		os.Exit(pyPeerHelper(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// probeModule is a stand-in for an Ansible module: it reports what a
// module can observe of its process, or does what its parameters say.
const probeModule = `
import json, os, sys, signal, gc
from ansible.module_utils import basic
p = json.loads(basic._ANSIBLE_ARGS)
act = p.get("act")
if act == "report":
    data = sys.stdin.read()
    import __main__
    out = {
        "argv": sys.argv[1:], "orig_argv": sys.orig_argv, "cwd": os.getcwd(), "umask": os.umask(0),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("PROBE", "HOME", "PATH", "LANG"))},
        "stdin": data, "isatty": [os.isatty(0), os.isatty(1), os.isatty(2)],
        "path0": sys.path[0], "path": sys.path[2:], "main_file": getattr(__main__, "__file__", None),
        "encoding": sys.stdout.encoding, "next_fd": os.open("/dev/null", os.O_RDONLY),
        "sigint": str(signal.getsignal(signal.SIGINT)), "sigpipe": str(signal.getsignal(signal.SIGPIPE)),
        "nofile": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE),
    }
    print(json.dumps(out, sort_keys=True))
    sys.stderr.write("to stderr\n")
    sys.exit(p.get("code", 0))
elif act == "global":
    basic.COUNTER.append(1)
    print(len(basic.COUNTER))
elif act == "exit":
    sys.exit(p["code"])
elif act == "exitmsg":
    sys.exit("bad things")
elif act == "raise":
    raise ValueError("boom")
elif act == "kill":
    os.kill(os.getpid(), p["sig"])
elif act == "block":
    print("started", flush=True)
    sys.stdin.read()
    print("released", flush=True)
    sys.exit(p.get("code", 0))
elif act == "leave_open":
    LEFT = open(p["path"], "w")
    LEFT.write("unflushed data")
    sys.exit(0)
elif act == "warm":
    print(gc.get_freeze_count() > 0)
elif act == "tty":
    try:
        os.close(os.open("/dev/tty", os.O_RDWR))
        ctty = True
    except OSError:
        ctty = False
    try:
        fg = os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        fg = False
    print("ctty=%s fg=%s" % (ctty, fg))
elif act == "background":
    import subprocess
    subprocess.Popen(["/bin/sh", "-c", "sleep 0.3; echo alive > " + p["path"]],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sys.exit(3)
elif act == "forkexit":
    # A copy forked by the module that ends by sys.exit, as a module's
    # helper process may: the run's status is the module's own.
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        sys.exit(7)
    os.waitpid(pid, 0)
    print("parent")
    sys.exit(3)
elif act == "confinement":
    st = [l.strip() for l in open("/proc/self/status") if l.startswith(("CapBnd", "NoNewPrivs"))]
    print(json.dumps({"warm": gc.get_freeze_count() > 0, "status": st}))
`

// moduleArchive is AnsiballZ's ZIPDATA (base64 of a zip) holding the
// ansible package skeleton and files.
func moduleArchive(t *testing.T, files map[string]string) string {
	t.Helper()
	all := map[string]string{
		"ansible/__init__.py":              "",
		"ansible/module_utils/__init__.py": "",
		"ansible/modules/__init__.py":      "",
	}
	for name, body := range files {
		all[name] = body
	}
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	for name, body := range all {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(body))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(zb.Bytes())
}

// wrapperSpelling is how a fake AnsiballZ wrapper writes the names the
// fork server reads from it: the module's (to pre-import its
// module_utils) and the payload directory's and archive's (to name its
// copy of the archive as the wrapper names its own).
type wrapperSpelling int

const (
	// spellConcatenated names the module as ansible-core does, the
	// payload names as concatenations the server cannot read (it finds
	// them from the archive's listing).
	spellConcatenated wrapperSpelling = iota
	// spellAnsibleCore writes every name as ansible-core 2.14 does.
	spellAnsibleCore
	// spellDoubleQuoted writes every name in double quotes: the server
	// reads none of them.
	spellDoubleQuoted
)

// ansiballZ writes a wrapper shaped like ansible-core's AnsiballZ: the
// marker, the module archive (basic.py and the module's source) as
// ZIPDATA, and a main that unpacks it the way ansible-core does, into
// <tmp>/ansible_<module>_payload_<random>/ansible_<module>_payload.zip,
// hands the module params through basic._ANSIBLE_ARGS and runs it as
// __main__. It is the one fake wrapper of the agent's tests.
func ansiballZ(t *testing.T, dir, module, basic, source, params string) string {
	t.Helper()
	return ansiballZSpelled(t, dir, spellConcatenated, module, basic, source, params)
}

// ansiballZSpelled is ansiballZ with the names spelled as spelling says.
func ansiballZSpelled(t *testing.T, dir string, spelling wrapperSpelling, module, basic, source, params string) string {
	t.Helper()
	zipdata := moduleArchive(t, map[string]string{
		"ansible/module_utils/basic.py":     basic,
		"ansible/modules/" + module + ".py": source,
	})
	modName := "mod_name='ansible.modules." + module + "'"
	prefix := "'ansible_' + '" + module + "' + '_payload_'"
	zipName := "'ansible_' + '" + module + "' + '_payload.zip'"
	switch spelling {
	case spellAnsibleCore:
		prefix = "'ansible_" + module + "_payload_'"
		zipName = "'ansible_" + module + "_payload.zip'"
	case spellDoubleQuoted:
		modName = `mod_name="ansible.modules.` + module + `"`
		prefix = `"ansible_` + module + `_payload_"`
		zipName = `"ansible_` + module + `_payload.zip"`
	}
	script := fmt.Sprintf(`#!/usr/bin/python3
_ANSIBALLZ_WRAPPER = True
def _ansiballz_main():
    import os, sys, base64, tempfile, runpy, shutil
    ZIPDATA = """%[1]s"""
    ANSIBALLZ_PARAMS = %[2]q
    temp_path = tempfile.mkdtemp(prefix=%[3]s)
    try:
        zipped_mod = os.path.join(temp_path, %[4]s)
        with open(zipped_mod, "wb") as f:
            f.write(base64.b64decode(ZIPDATA))
        sys.path.insert(0, zipped_mod)
        from ansible.module_utils import basic
        basic._ANSIBLE_ARGS = ANSIBALLZ_PARAMS
        runpy.run_module(%[5]s, run_name='__main__', alter_sys=True)
    finally:
        shutil.rmtree(temp_path, True)
if __name__ == "__main__":
    _ansiballz_main()
`, zipdata, params, prefix, zipName, modName)
	p := filepath.Join(dir, "AnsiballZ_"+module+".py")
	if err := os.WriteFile(p, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeAnsiballZ is the wrapper of probeModule, run with params.
func fakeAnsiballZ(t *testing.T, dir string, params string) string {
	t.Helper()
	return ansiballZ(t, dir, "probe", "_ANSIBLE_ARGS = None\nCOUNTER = []\n", probeModule, params)
}

// pyLab is one test's interpreter, socket directory and helper.
type pyLab struct {
	t      *testing.T
	python string
	dir    string // XDG_RUNTIME_DIR of the runs
	work   string
	helper string
	env    []string
}

func newPyLab(t *testing.T) *pyLab {
	t.Helper()
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Skip("no /usr/bin/python3: the fork server tests need a CPython 3")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Descriptors this test process inherited must not reach the cold
	// runs either: the agent's children see only 0, 1 and 2.
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				unix.CloseOnExec(fd)
			}
		}
	}
	l := &pyLab{t: t, python: python, dir: t.TempDir(), work: t.TempDir()}
	l.helper = filepath.Join(t.TempDir(), pyRunHelperName)
	if err := os.Symlink(self, l.helper); err != nil {
		t.Fatal(err)
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PYTHON") && !strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") {
			l.env = append(l.env, kv)
		}
	}
	l.env = append(l.env, "XDG_RUNTIME_DIR="+l.dir, "PROBE_VAR=probe value", "GOMUX_PYRUN_DEBUG=1")
	t.Cleanup(l.killServers)
	return l
}

// servers returns the PIDs of fork server processes (servers and
// templates) using this lab's directory.
func (l *pyLab) servers() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(b, []byte("forkserver-")) && bytes.Contains(b, []byte(l.dir)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// serverPID is the fork server proper: the one whose parent is not a
// fork server too.
func (l *pyLab) serverPID() int {
	all := l.servers()
	for _, p := range all {
		pp := ppidOf(p)
		isChild := false
		for _, q := range all {
			if q == pp {
				isChild = true
			}
		}
		if !isChild {
			return p
		}
	}
	return 0
}

// procStat is /proc/PID/stat split into fields after the command name
// (which may hold spaces and parentheses): [0] is the state, [1] the
// parent, [19] the start time.
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return nil, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return strings.Fields(string(b[i+2:])), nil
}

// waitExited waits until process pid has exited (gone, or a zombie
// whose files are closed), for at most ten seconds.
func waitExited(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200; i++ {
		f, err := procStat(pid)
		if err != nil || len(f) > 0 && f[0] == "Z" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("process %d did not exit after SIGKILL", pid)
}

func ppidOf(pid int) int {
	f, _ := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// agentID names process pid as `pyrun -agent` takes an agent:
// "PID:STARTTIME", the start time being /proc/PID/stat field 22.
func agentID(t *testing.T, pid int) string {
	t.Helper()
	f, err := procStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	if len(f) < 20 {
		t.Fatalf("bad /proc/%d/stat", pid)
	}
	return fmt.Sprintf("%d:%s", pid, f[19])
}

func (l *pyLab) killServers() {
	for _, p := range l.servers() {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

type pyResult struct {
	stdout, stderr string
	code           int
	signal         syscall.Signal
}

// cmd builds a run: warm through the helper, or cold as the shell would
// run the module. sh sets the umask, as a login would.
func (l *pyLab) cmd(warm bool, argv ...string) *exec.Cmd {
	line := ""
	if warm {
		line = target.Quote(l.helper) + " pyrun -agent " + target.Quote(agentID(l.t, os.Getpid())) + " -- "
	}
	for _, a := range argv {
		line += target.Quote(a) + " "
	}
	c := exec.Command("/bin/sh", "-c", "umask 027; exec "+line)
	c.Env = l.env
	c.Dir = l.work
	return c
}

func (l *pyLab) run(warm bool, stdin string, argv ...string) pyResult {
	l.t.Helper()
	return l.runCmd(l.cmd(warm, argv...), warm, stdin)
}

// runCmd runs c, built by cmd, with stdin.
func (l *pyLab) runCmd(c *exec.Cmd, warm bool, stdin string) pyResult {
	l.t.Helper()
	c.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	r := pyResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		l.t.Fatal(err)
	}
	ws := c.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		r.signal = ws.Signal()
	} else {
		r.code = ws.ExitStatus()
	}
	if warm && strings.Contains(r.stderr, "gomux pyrun: cold") {
		l.t.Fatalf("run went cold: %s", r.stderr)
	}
	return r
}

// zipPaths are the random paths of the unpacked module archive, which
// differ between any two runs.
var zipPaths = regexp.MustCompile(`/[^" ]*\.zip/|ansible_probe_payload_[a-z0-9_]+`)

func TestPyRunMatchesColdRun(t *testing.T) {
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "report", "code": 3}`)
	cold := l.run(false, "some input\n", l.python, script)
	cold.stdout = zipPaths.ReplaceAllString(cold.stdout, "/Z/")
	for i := 0; i < 2; i++ {
		warm := l.run(true, "some input\n", l.python, script)
		warm.stdout = zipPaths.ReplaceAllString(warm.stdout, "/Z/")
		if warm != cold {
			t.Errorf("run %d:\nwarm %+v\ncold %+v", i, warm, cold)
		}
	}
	if r := l.run(true, "", l.python, fakeAnsiballZ(t, l.work, `{"act": "warm"}`)); r.stdout != "True\n" {
		t.Errorf("the run was not served by the fork server: %+v", r)
	}
	if len(l.servers()) < 2 {
		t.Errorf("want a fork server and a template, have %v", l.servers())
	}
}

func TestPyRunPipelined(t *testing.T) {
	l := newPyLab(t)
	b, err := os.ReadFile(fakeAnsiballZ(t, l.work, `{"act": "report"}`))
	if err != nil {
		t.Fatal(err)
	}
	cold := l.run(false, string(b), l.python)
	warm := l.run(true, string(b), l.python)
	cold.stdout = zipPaths.ReplaceAllString(cold.stdout, "/Z/")
	warm.stdout = zipPaths.ReplaceAllString(warm.stdout, "/Z/")
	if warm != cold {
		t.Errorf("warm %+v\ncold %+v", warm, cold)
	}
	if !strings.Contains(cold.stdout, `"orig_argv": ["/usr/bin/python3"]`) {
		t.Errorf("unexpected pipelined report %s", cold.stdout)
	}
}

func TestPyRunExitStatuses(t *testing.T) {
	l := newPyLab(t)
	for _, params := range []string{
		`{"act": "exit", "code": 0}`, `{"act": "exit", "code": 7}`, `{"act": "exit", "code": 256}`,
		`{"act": "exitmsg"}`, `{"act": "raise"}`, `{"act": "kill", "sig": 15}`, `{"act": "kill", "sig": 9}`,
		`{"act": "kill", "sig": 2}`, `{"act": "kill", "sig": 3}`,
	} {
		script := fakeAnsiballZ(t, l.work, params)
		cold := l.run(false, "", l.python, script)
		warm := l.run(true, "", l.python, script)
		cold.stderr = zipPaths.ReplaceAllString(cold.stderr, "/Z/")
		warm.stderr = zipPaths.ReplaceAllString(warm.stderr, "/Z/")
		if warm != cold {
			t.Errorf("%s:\nwarm %+v\ncold %+v", params, warm, cold)
		}
	}
}

func TestPyRunFlushesFilesLeftOpen(t *testing.T) {
	l := newPyLab(t)
	for _, warm := range []bool{false, true} {
		p := filepath.Join(l.work, fmt.Sprintf("left-%v", warm))
		r := l.run(warm, "", l.python, fakeAnsiballZ(t, l.work, `{"act": "leave_open", "path": "`+p+`"}`))
		b, err := os.ReadFile(p)
		if r.code != 0 || err != nil || string(b) != "unflushed data" {
			t.Errorf("warm=%v: %+v %q %v", warm, r, b, err)
		}
	}
}

func TestPyRunIsolation(t *testing.T) {
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "global"}`)
	for i := 0; i < 3; i++ {
		if r := l.run(true, "", l.python, script); r.stdout != "1\n" || r.code != 0 {
			t.Fatalf("run %d saw state of an earlier run: %+v", i, r)
		}
	}
}

// blockingRun starts a run that prints "started" and waits for its stdin
// to close; it returns once the module has started.
func (l *pyLab) blockingRun(script string) (*exec.Cmd, *os.File, *bufio.Reader) {
	l.t.Helper()
	c := l.cmd(true, l.python, script)
	in, err := c.StdinPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	out, err := c.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		l.t.Fatal(err)
	}
	br := bufio.NewReader(out)
	line, err := br.ReadString('\n')
	if err != nil || line != "started\n" {
		l.t.Fatalf("blocking run: %q %v", line, err)
	}
	return c, in.(*os.File), br
}

func TestPyRunServerKilledMidRun(t *testing.T) {
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "block", "code": 5}`)
	c, in, out := l.blockingRun(script)
	old := l.serverPID()
	if old == 0 {
		t.Fatal("no fork server")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	in.Close()
	rest, _ := out.ReadString('\n')
	err := c.Wait()
	if rest != "released\n" || c.ProcessState.ExitCode() != 5 {
		t.Fatalf("run across a killed server: %q %v", rest, err)
	}
	// The next run starts a new server once the old one is gone. Until
	// its socket closes (kill returns before the process has exited), a
	// run may connect to it, be reset and go cold, as it should.
	waitExited(t, old)
	if r := l.run(true, "", l.python, fakeAnsiballZ(t, l.work, `{"act": "warm"}`)); r.stdout != "True\n" {
		t.Fatalf("after the kill: %+v", r)
	}
	if p := l.serverPID(); p == 0 || p == old {
		t.Fatalf("no new fork server (old %d, now %d)", old, p)
	}
}

func TestPyRunTemplateKilledMidRun(t *testing.T) {
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "block", "code": 4}`)
	c, in, out := l.blockingRun(script)
	server := l.serverPID()
	for _, p := range l.servers() {
		if ppidOf(p) == server {
			syscall.Kill(p, syscall.SIGKILL) // the template
		}
	}
	in.Close()
	rest, _ := out.ReadString('\n')
	c.Wait()
	if rest != "released\n" || c.ProcessState.ExitCode() != 4 {
		t.Fatalf("run across a killed template: %q %v", rest, c.ProcessState)
	}
}

// TestPyRunLeavesBackgroundChildren: a module that leaves a process
// running in its group and exits ends the client with its code at once,
// and that process lives on as it does after the interpreter's exit: the
// template does not take the client's leaving for an abandoned task.
func TestPyRunLeavesBackgroundChildren(t *testing.T) {
	l := newPyLab(t)
	for _, warm := range []bool{false, true} {
		p := filepath.Join(l.work, fmt.Sprintf("alive-%v", warm))
		r := l.run(warm, "", l.python, fakeAnsiballZ(t, l.work, `{"act": "background", "path": "`+p+`"}`))
		if r.code != 3 || r.signal != 0 {
			t.Fatalf("warm=%v: %+v, want exit 3", warm, r)
		}
		var b []byte
		var err error
		for i := 0; i < 200; i++ {
			if b, err = os.ReadFile(p); err == nil && string(b) == "alive\n" {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if string(b) != "alive\n" {
			t.Errorf("warm=%v: the module's background process did not live on: %q %v", warm, b, err)
		}
	}
}

// TestPyRunForkedCopyDoesNotReport: a process the module forks that ends
// by sys.exit goes through the run's ending too; only the run itself
// reports its status, so pyrun exits with the module's code, warm as
// cold.
func TestPyRunForkedCopyDoesNotReport(t *testing.T) {
	l := newPyLab(t)
	for _, warm := range []bool{false, true} {
		r := l.run(warm, "", l.python, fakeAnsiballZ(t, l.work, `{"act": "forkexit"}`))
		if r.code != 3 || r.signal != 0 || r.stdout != "parent\n" {
			t.Errorf("warm=%v: %+v, want exit 3 and the parent's output", warm, r)
		}
	}
}

func TestPyRunForwardsSignals(t *testing.T) {
	l := newPyLab(t)
	c, _, _ := l.blockingRun(fakeAnsiballZ(t, l.work, `{"act": "block"}`))
	// sh exec'd the client, so c.Process is the client.
	c.Process.Signal(syscall.SIGTERM)
	c.Wait()
	ws := c.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("client ended %v, want killed by SIGTERM like the module", c.ProcessState)
	}
}

func TestPyRunColdCases(t *testing.T) {
	l := newPyLab(t)
	// Not an AnsiballZ module: the server says cold, the client runs
	// the interpreter itself.
	plain := filepath.Join(l.work, "plain.py")
	os.WriteFile(plain, []byte("import sys\nprint(sys.argv[1:])\nsys.exit(3)\n"), 0o600)
	c := l.cmd(true, l.python, plain, "a")
	out, _ := c.Output()
	if string(out) != "['a']\n" || c.ProcessState.ExitCode() != 3 {
		t.Errorf("plain script: %q %v", out, c.ProcessState)
	}
	// A missing script: python's own error.
	c = l.cmd(true, l.python, filepath.Join(l.work, "missing.py"))
	var errb bytes.Buffer
	c.Stderr = &errb
	c.Run()
	if c.ProcessState.ExitCode() != 2 || !strings.Contains(errb.String(), "can't open file") {
		t.Errorf("missing script: %v %s", c.ProcessState, errb.String())
	}
}

func TestPyRunMalformedRequests(t *testing.T) {
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "warm"}`)
	if r := l.run(true, "", l.python, script); r.stdout != "True\n" {
		t.Fatalf("%+v", r)
	}
	socks, _ := filepath.Glob(filepath.Join(l.dir, "gomux", "py-*.sock"))
	if len(socks) != 1 {
		t.Fatalf("sockets %v", socks)
	}
	null, _ := unix.Open("/dev/null", unix.O_RDONLY, 0)
	defer unix.Close(null)
	for _, m := range []struct {
		msg string
		fds []int
	}{
		{"not json", []int{null, null, null, null, null}},
		{`{"v": 1}`, []int{null, null, null, null, null}},
		{`{"v": 99}`, nil},
		{`[1,2]`, []int{null}},
	} {
		fd, err := pyDial(socks[0])
		if err != nil {
			t.Fatal(err)
		}
		var oob []byte
		if m.fds != nil {
			oob = unix.UnixRights(m.fds...)
		}
		if err := unix.Sendmsg(fd, []byte(m.msg), oob, nil, 0); err != nil {
			t.Fatal(err)
		}
		r, err := pyRecv(context.Background(), fd)
		unix.Close(fd)
		if err != nil || r.Cold == "" {
			t.Errorf("%q: %+v %v, want a cold answer", m.msg, r, err)
		}
	}
	if r := l.run(true, "", l.python, script); r.stdout != "True\n" {
		t.Fatalf("server stopped serving after bad requests: %+v", r)
	}
}

func TestParsePyRunArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		ok   bool
		argv int
	}{
		{[]string{"--", "/usr/bin/python3", "x.py"}, true, 2},
		{[]string{"-agent", "12:345", "-idle", "5m", "--", "/usr/bin/python3"}, true, 1},
		{[]string{"-idle", "--", "/usr/bin/python3"}, false, 1},
		{[]string{"-agent", "x", "--", "/usr/bin/python3"}, false, 1},
		{[]string{"-bogus", "1", "--", "/usr/bin/python3"}, false, 1},
		{[]string{"--", "python3"}, false, 1},
		{[]string{"/usr/bin/python3"}, false, 0},
	} {
		o, err := parsePyRunArgs(c.args)
		if (err == nil) != c.ok || len(o.Argv) != c.argv {
			t.Errorf("%q: %+v %v", c.args, o, err)
		}
	}
}

func TestDecodePyReply(t *testing.T) {
	r, err := decodePyReply([]byte(`{"status":{"signal":15}}`))
	if err != nil || r.Status == nil || r.Status.Signal != 15 {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{"", "x", `{"status":{"code":300}}`, `{"exit":-1}`} {
		if _, err := decodePyReply([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	b, _ := json.Marshal(pyRequest{V: 1})
	if !bytes.Contains(b, []byte(`"v":1`)) {
		t.Errorf("request encoding %s", b)
	}
}

func FuzzDecodePyReply(f *testing.F) {
	f.Add([]byte(`{"ready":1}`))
	f.Add([]byte(`{"cold":"why"}`))
	f.Add([]byte(`{"exit":3}`))
	f.Add([]byte(`{"status":{"code":1,"signal":9,"core":true}}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := decodePyReply(p)
		if err == nil && r.Status != nil && (r.Status.Signal < 0 || r.Status.Signal > 64) {
			t.Fatalf("out of range signal accepted: %+v", r.Status)
		}
	})
}

// TestPyRunOpenFilesLimitAsStarted: a warm run has the soft open files
// limit its shell gave the interpreter, not the one Go's runtime raised
// pyrun's own to (hard-1). The shell does not exec pyrun, as in the
// shim's command, so it stays pyrun's parent.
func TestPyRunOpenFilesLimitAsStarted(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	const soft = 256
	if lim.Max != unix.RLIM_INFINITY && lim.Max < soft+2 {
		t.Skipf("hard open files limit %d too low", lim.Max)
	}
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "report"}`)
	run := func(warm bool) pyResult {
		c := l.cmd(warm, l.python, script)
		c.Args[2] = strings.Replace(c.Args[2], "exec ", fmt.Sprintf("ulimit -Sn %d; ", soft), 1)
		r := l.runCmd(c, warm, "")
		r.stdout = zipPaths.ReplaceAllString(r.stdout, "/Z/")
		return r
	}
	cold := run(false)
	if !strings.Contains(cold.stdout, fmt.Sprintf(`"nofile": [%d, `, soft)) {
		t.Fatalf("cold run did not get the limit: %s", cold.stdout)
	}
	for i := 0; i < 2; i++ {
		if warm := run(true); warm != cold {
			t.Errorf("run %d:\nwarm %+v\ncold %+v", i, warm, cold)
		}
	}
}

func TestStartNofile(t *testing.T) {
	limits := func(soft, hard string) []byte {
		return []byte("Limit                     Soft Limit           Hard Limit           Units     \n" +
			"Max cpu time              unlimited            unlimited            seconds   \n" +
			"Max open files            " + soft + "                 " + hard + "                 files     \n")
	}
	inf := uint64(unix.RLIM_INFINITY)
	for _, c := range []struct {
		name      string
		cur, max  uint64
		ppids     []int
		file      []byte
		fileErr   error
		want      uint64
		wantError bool
	}{
		{name: "not raised", cur: 1024, max: 4096, want: 1024},
		{name: "soft is hard", cur: 4096, max: 4096, want: 4096},
		{name: "no hard limit", cur: inf - 1, max: inf, want: inf - 1},
		{name: "raised", cur: 4095, max: 4096, ppids: []int{7, 7}, file: limits("1024", "4096"), want: 1024},
		{name: "was hard-1", cur: 4095, max: 4096, ppids: []int{7, 7}, file: limits("4095", "4096"), want: 4095},
		{name: "orphan", cur: 4095, max: 4096, ppids: []int{1}, wantError: true},
		{name: "parent gone meanwhile", cur: 4095, max: 4096, ppids: []int{7, 1}, file: limits("1024", "4096"), wantError: true},
		{name: "parent's hard differs", cur: 4095, max: 4096, ppids: []int{7, 7}, file: limits("1024", "8192"), wantError: true},
		{name: "parent's soft above", cur: 4095, max: 4096, ppids: []int{7, 7}, file: limits("4096", "4096"), wantError: true},
		{name: "unreadable", cur: 4095, max: 4096, ppids: []int{7, 7}, fileErr: os.ErrPermission, wantError: true},
		{name: "garbage", cur: 4095, max: 4096, ppids: []int{7, 7}, file: limits("lots", "4096"), wantError: true},
		{name: "no line", cur: 4095, max: 4096, ppids: []int{7, 7}, file: []byte("Max cpu time 1 2 s\n"), wantError: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			getppid := func() int {
				p := c.ppids[min(calls, len(c.ppids)-1)]
				calls++
				return p
			}
			read := func(name string) ([]byte, error) {
				if name != "/proc/7/limits" {
					t.Errorf("read %s", name)
				}
				return c.file, c.fileErr
			}
			got, err := startNofile(unix.Rlimit{Cur: c.cur, Max: c.max}, getppid, read)
			if (err != nil) != c.wantError || (err == nil && got != c.want) {
				t.Errorf("startNofile = %d, %v; want %d, error %v", got, err, c.want, c.wantError)
			}
		})
	}
}

// TestPyRunControllingTerminal: a module run on a terminal has it as its
// controlling terminal and is in its foreground process group, as
// `python3 script` is in the shell's session that sshd (or the agent)
// gives the terminal to. With -ctty 0 the shell's session was started
// without it (agent.Pty.NotControlling) and the run takes it, warm or
// cold; without, the shell's session holds it and a forked run has none.
func TestPyRunControllingTerminal(t *testing.T) {
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "tty"}`)
	onTerminal := func(line string, setctty bool) string {
		t.Helper()
		m, tty, err := pty.Open()
		if err != nil {
			t.Skipf("no pty: %v", err)
		}
		defer m.Close()
		c := exec.Command("/bin/sh", "-c", line)
		c.Env, c.Dir = l.env, l.work
		c.Stdin, c.Stdout, c.Stderr = tty, tty, tty
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: setctty}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		tty.Close()
		var out bytes.Buffer
		io.Copy(&out, m) // until EIO: every holder of the terminal is gone
		c.Wait()
		return strings.TrimSpace(strings.ReplaceAll(out.String(), "\r", ""))
	}
	run := "exec " + target.Quote(l.python) + " " + target.Quote(script)
	pyrun := target.Quote(l.helper) + " pyrun -agent " + target.Quote(agentID(t, os.Getpid()))
	want := "ctty=True fg=True"
	if got := onTerminal(run, true); got != want {
		t.Fatalf("without gomux: %q, want %q", got, want)
	}
	for i := range 2 {
		if got := onTerminal("exec "+pyrun+" -ctty 0 -- "+target.Quote(l.python)+" "+target.Quote(script), false); got != want {
			t.Errorf("warm run %d with -ctty 0: %q, want %q", i, got, want)
		}
	}
	// A cold run (an interpreter the fork server cannot serve) takes it too.
	cold := "GOMUX_PYRUN_DEBUG=1 PYTHONDONTWRITEBYTECODE=1 exec " + pyrun + " -ctty 0 -- " + target.Quote(l.python) + " " + target.Quote(script)
	if got := onTerminal(cold, false); !strings.HasSuffix(got, want) || !strings.Contains(got, "cold") {
		t.Errorf("cold run with -ctty 0: %q, want it cold and %q", got, want)
	}
	if got := onTerminal("exec "+pyrun+" -- "+target.Quote(l.python)+" "+target.Quote(script), true); got != "ctty=False fg=False" {
		t.Errorf("warm run while the shell's session holds the terminal: %q", got)
	}
}
