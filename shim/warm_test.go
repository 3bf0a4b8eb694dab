package shim

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/target"
)

const (
	warmT      = "/home/u/.ansible/tmp/ansible-tmp-1700000000.1-42-1234"
	warmKey    = "abcdefghijklmnopqrstuvwxyzabcdef"
	warmScript = warmT + "/AnsiballZ_command.py"
)

const warmSHA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestWarmRewrites(t *testing.T) {
	agent := "/home/u/.cache/gomux/agent-" + warmSHA
	o := WarmOptions{Agent: agent, AgentID: "77:9000", Idle: 5 * time.Minute}
	guard := func(run string) string {
		return "if [ -x " + agent + " ]; then " + agent + " pyrun -agent 77:9000 -idle 5m0s -- " +
			run + "; else " + run + "; fi"
	}
	// Under become the login user's agent is only the source of a copy.
	bguard := func(run string) string {
		g, ok := target.WarmRun{Agent: agent, Become: true, AgentID: "77:9000", Idle: 5 * time.Minute, Run: run}.Program()
		if !ok {
			t.Fatal("no become guard for the agent")
		}
		return g
	}
	q := func(s string) string { return strings.ReplaceAll(s, "'", `'"'"'"'"'"'"'"'"'`) }
	for _, c := range []struct {
		name, cmd, want string
	}{
		{
			name: "plain",
			cmd:  `/bin/sh -c '/usr/bin/python3 ` + warmScript + ` && sleep 0'`,
			want: `/bin/sh -c '` + guard(`/usr/bin/python3 `+warmScript) + ` && sleep 0'`,
		},
		{
			name: "pipelined",
			cmd:  `/bin/sh -c '/usr/bin/python3.11 && sleep 0'`,
			want: `/bin/sh -c '` + guard(`/usr/bin/python3.11`) + ` && sleep 0'`,
		},
		{
			name: "rm folded in",
			cmd:  `/bin/sh -c '/usr/bin/python3 ` + warmScript + `; rm -f -r ` + warmT + `/ > /dev/null 2>&1 && sleep 0'`,
			want: `/bin/sh -c '` + guard(`/usr/bin/python3 `+warmScript) + `; rm -f -r ` + warmT + `/ > /dev/null 2>&1 && sleep 0'`,
		},
		{
			name: "sudo",
			cmd: `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` + warmKey + ` ; /usr/bin/python3 ` +
				warmScript + `'"'"' && sleep 0'`,
			want: `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` + warmKey + ` ; ` +
				q(bguard(`/usr/bin/python3 `+warmScript)) + `'"'"' && sleep 0'`,
		},
		{
			name: "sudo with a password prompt, pipelined",
			cmd: `/bin/sh -c 'sudo -H -S -p "[sudo via ansible, key=` + warmKey + `] password:" -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` +
				warmKey + ` ; /usr/bin/python3'"'"' && sleep 0'`,
			want: `/bin/sh -c 'sudo -H -S -p "[sudo via ansible, key=` + warmKey + `] password:" -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` +
				warmKey + ` ; ` + q(bguard(`/usr/bin/python3`)) + `'"'"' && sleep 0'`,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := Warm(c.cmd, o)
			if !ok || got != c.want {
				t.Fatalf("Warm(%s)\n= %v %s\nwant %s", c.cmd, ok, got, c.want)
			}
		})
	}
}

func TestWarmLeavesAlone(t *testing.T) {
	o := WarmOptions{Agent: "/home/u/.cache/gomux/agent-ab"}
	for _, cmd := range []string{
		// async_wrapper
		`/bin/sh -c 'ANSIBLE_ASYNC_DIR='"'"'~/.ansible_async'"'"' /usr/bin/python3 ` + warmT + `/async_wrapper.py j1 10 ` + warmScript + ` _ && sleep 0'`,
		// AnsiballZ debug subcommand
		`/bin/sh -c '/usr/bin/python3 ` + warmScript + ` explode && sleep 0'`,
		// not python3
		`/bin/sh -c '/usr/bin/python2.7 ` + warmScript + ` && sleep 0'`,
		`/bin/sh -c '/usr/bin/pypy3 ` + warmScript + ` && sleep 0'`,
		// a script that is not a module
		`/bin/sh -c '/usr/bin/python3 ` + warmT + `/other.py && sleep 0'`,
		// interpreter flags (not even a Run)
		`/bin/sh -c '/usr/bin/python3 -tt ` + warmScript + ` && sleep 0'`,
		// other steps
		`/bin/sh -c 'echo ~ && sleep 0'`,
		`echo raw-hello`,
		// quoting Ansible would not produce
		`/bin/sh -c "/usr/bin/python3 ` + warmScript + ` && sleep 0"`,
	} {
		got, ok := Warm(cmd, o)
		if ok || got != cmd {
			t.Errorf("Warm(%s) = %v %s, want it unchanged", cmd, ok, got)
		}
	}
	cmd := `/bin/sh -c '/usr/bin/python3 ` + warmScript + ` && sleep 0'`
	if _, ok := Warm(cmd, WarmOptions{}); ok {
		t.Errorf("rewritten without an agent path")
	}
	// Under become, an agent not named by its hash cannot be copied and
	// verified: the run stays as Ansible sent it.
	cmd = `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` + warmKey + ` ; /usr/bin/python3 ` + warmScript + `'"'"' && sleep 0'`
	if got, ok := Warm(cmd, o); ok || got != cmd {
		t.Errorf("become run rewritten with an agent not named by its hash: %s", got)
	}
}

// TestWarmRunsInShell runs rewritten commands in sh with a stand-in
// agent and interpreter: the agent gets the interpreter command line;
// when it is not executable, the interpreter runs as before.
func TestWarmRunsInShell(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "my agent")
	py := filepath.Join(dir, "python3")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\necho AGENT \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(py, []byte("#!/bin/sh\necho PY \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	wrap := func(inner string) string { return "/bin/sh -c " + target.Quote(inner) }
	plain := wrap(py + " " + warmScript + " && sleep 0")
	o := WarmOptions{Agent: agent, AgentID: "1:2"}
	w, ok := Warm(plain, o)
	if !ok {
		t.Fatalf("not rewritten: %s", plain)
	}
	out, err := exec.Command("/bin/sh", "-c", w).CombinedOutput()
	if err != nil || !strings.HasSuffix(string(out), "AGENT pyrun -agent 1:2 -- "+py+" "+warmScript+"\n") {
		t.Errorf("%s: %q %v", w, out, err)
	}
	if err := os.Chmod(agent, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("/bin/sh", "-c", w).CombinedOutput()
	if err != nil || !strings.HasSuffix(string(out), "PY "+warmScript+"\n") {
		t.Errorf("agent not executable: %s: %q %v", w, out, err)
	}
}

// becomeLab is a login user's agent, named by its hash, and a become
// user's home, for running rewritten become commands in sh.
type becomeLab struct {
	t          *testing.T
	loginAgent string
	home       string
	py         string
	// env is more NAME=value the become wrapper sets (a PATH it keeps).
	env []string
}

const fakeAgent = "#!/bin/sh\necho AGENT \"$@\"\n"

func newBecomeLab(t *testing.T) *becomeLab {
	t.Helper()
	login, home := t.TempDir(), t.TempDir()
	sum := sha256.Sum256([]byte(fakeAgent))
	l := &becomeLab{t: t, loginAgent: filepath.Join(login, ".cache", "gomux", "agent-"+hex.EncodeToString(sum[:])), home: home,
		py: filepath.Join(login, "python3")}
	if err := os.MkdirAll(filepath.Dir(l.loginAgent), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.loginAgent, []byte(fakeAgent), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.py, []byte("#!/bin/sh\necho PY \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return l
}

// run runs a module under a become wrapper (env standing in for sudo -H)
// and returns its output.
func (l *becomeLab) run() string {
	l.t.Helper()
	inner := "echo BECOME-SUCCESS-" + warmKey + " ; " + l.py + " " + warmScript
	env := strings.Join(append([]string{"HOME=" + l.home}, l.env...), " ")
	cmd := "/bin/sh -c " + target.Quote("/usr/bin/env "+env+" /bin/sh -c "+target.Quote(inner)+" && sleep 0")
	w, ok := Warm(cmd, WarmOptions{Agent: l.loginAgent, AgentID: "1:2"})
	if !ok {
		l.t.Fatalf("not rewritten: %s", cmd)
	}
	out, err := exec.Command("/bin/sh", "-c", w).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s: %v\n%s", w, err, out)
	}
	return strings.TrimPrefix(string(out), "BECOME-SUCCESS-"+warmKey+"\n")
}

func (l *becomeLab) copyPath() string {
	return filepath.Join(l.home, ".cache", "gomux", filepath.Base(l.loginAgent))
}

// TestWarmBecomeRunsVerifiedCopy: under become the shell runs the become
// user's own verified copy of the agent, never the login user's file.
func TestWarmBecomeRunsVerifiedCopy(t *testing.T) {
	l := newBecomeLab(t)
	want := "AGENT pyrun -agent 1:2 -- " + l.py + " " + warmScript + "\n"
	if got := l.run(); got != want {
		t.Fatalf("first run: %q, want %q", got, want)
	}
	st, err := os.Lstat(l.copyPath())
	if err != nil || st.Mode() != 0o500 {
		t.Fatalf("verified copy: %v %v", st, err)
	}
	if d, err := os.Stat(filepath.Dir(l.copyPath())); err != nil || d.Mode().Perm() != 0o700 {
		t.Fatalf("copy directory: %v %v", d, err)
	}
	// The login user rewrites its agent: the become user keeps running
	// the copy it verified.
	if err := os.WriteFile(l.loginAgent, []byte("#!/bin/sh\necho EVIL\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != want {
		t.Fatalf("after the login user rewrote its agent: %q, want %q", got, want)
	}
	// Without a copy, a login agent that does not hash to its name is
	// never run: the interpreter runs as Ansible asked.
	if err := os.Remove(l.copyPath()); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != "PY "+warmScript+"\n" {
		t.Fatalf("tampered login agent: %q", got)
	}
	if _, err := os.Lstat(l.copyPath()); err == nil {
		t.Fatalf("a copy that failed verification was kept")
	}
	// A login agent that is endless (a symlink to /dev/zero) is copied
	// no further than 64 MiB, and not kept.
	if err := os.Remove(l.loginAgent); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", l.loginAgent); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != "PY "+warmScript+"\n" {
		t.Fatalf("endless login agent: %q", got)
	}
	if ents, _ := os.ReadDir(filepath.Dir(l.copyPath())); len(ents) != 0 {
		t.Fatalf("endless login agent left %v", ents)
	}
	os.Remove(l.loginAgent)
	// A copy that cannot be executed here (as on a noexec mount) runs the
	// interpreter, and is not copied again for every task.
	if err := os.WriteFile(l.loginAgent, []byte(fakeAgent), 0o700); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != want {
		t.Fatalf("reinstall: %q", got)
	}
	if err := os.Chmod(l.copyPath(), 0o400); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != "PY "+warmScript+"\n" {
		t.Fatalf("copy not executable: %q", got)
	}
	if st, err := os.Lstat(l.copyPath()); err != nil || st.Mode().Perm() != 0o400 {
		t.Fatalf("copy installed again: %v %v", st, err)
	}
}

// TestWarmBecomeRefusesUnsafeCopy: a copy or directory that is a symlink
// or owned by another user is not run; a directory open to others is
// closed (0700) before anything is copied into it.
func TestWarmBecomeRefusesUnsafeCopy(t *testing.T) {
	l := newBecomeLab(t)
	want := "AGENT pyrun -agent 1:2 -- " + l.py + " " + warmScript + "\n"
	d := filepath.Dir(l.copyPath())
	if err := os.MkdirAll(d, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o777); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != want {
		t.Fatalf("run: %q", got)
	}
	if st, _ := os.Stat(d); st.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v after install", st.Mode())
	}
	// A symlinked copy (someone else's file) is replaced by a verified one.
	evil := filepath.Join(t.TempDir(), "evil")
	if err := os.WriteFile(evil, []byte("#!/bin/sh\necho EVIL\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(l.copyPath())
	if err := os.Symlink(evil, l.copyPath()); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != want {
		t.Fatalf("symlinked copy: %q", got)
	}
	// A symlinked directory is refused altogether.
	if err := os.RemoveAll(d); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, filepath.Base(l.copyPath())), []byte("#!/bin/sh\necho EVIL\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, d); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != "PY "+warmScript+"\n" {
		t.Fatalf("symlinked directory: %q", got)
	}
	if os.Geteuid() != 0 {
		return
	}
	// A copy owned by another user (one who could rewrite it) is
	// replaced; a directory owned by another user is refused.
	os.Remove(d)
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.copyPath(), []byte("#!/bin/sh\necho EVIL\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(l.copyPath(), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != want {
		t.Fatalf("copy owned by another user: %q", got)
	}
	if err := os.Chown(d, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != "PY "+warmScript+"\n" {
		t.Fatalf("directory owned by another user: %q", got)
	}
	// A HOME, or a HOME/.cache, of another user (sudo without -H keeps
	// the login user's): that user could swap a directory on the path
	// between the check and the exec, so even a good copy is not run.
	if err := os.Chown(d, 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != want {
		t.Fatalf("own directory again: %q", got)
	}
	for _, p := range []string{filepath.Dir(d), l.home} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if got := l.run(); got != "PY "+warmScript+"\n" {
			t.Fatalf("%s owned by another user: %q", p, got)
		}
		if err := os.Chown(p, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// warmCases are module runs Ansible sends, with how many layers of shell
// text each has: the command, its `sh -c` script, a script path (which
// the recognizer also tries as su's `-c` text), a become wrapper's script,
// su's `-c` text.
var warmCases = []struct {
	name, cmd string
	layers    int
}{
	{"pipelined", `/bin/sh -c '/usr/bin/python3 && sleep 0'`, 2},
	{"script", `/bin/sh -c '/usr/bin/python3 ` + warmScript + ` && sleep 0'`, 3},
	{"sudo", `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` + warmKey + ` ; /usr/bin/python3 ` + warmScript + `'"'"' && sleep 0'`, 3},
	{"su", `/bin/sh -c 'su  root -c '"'"'/bin/sh -c '"'"'"'"'"'"'"'"'echo BECOME-SUCCESS-` + warmKey + ` ; /usr/bin/python3 ` + warmScript + `'"'"'"'"'"'"'"'"''"'"' && sleep 0'`, 4},
}

// TestPlanParsesOnce: recognizing a module run and rewriting it to run
// warm, as Host.Plan does, applies the shell grammar once per layer of
// the command; before the two shared their trees the same runs took 5, 6,
// 8 and 11 parses.
func TestPlanParsesOnce(t *testing.T) {
	o := WarmOptions{Agent: "/home/u/.cache/gomux/agent-" + warmSHA, AgentID: "1:2"}
	for _, c := range warmCases {
		src := new(source)
		step := src.parse(c.cmd)
		want, wantOK := Warm(c.cmd, o)
		got, ok := src.warm(c.cmd, step, o)
		if !ok || !wantOK || got != want {
			t.Errorf("%s: not rewritten as Warm does: %v %s", c.name, ok, got)
		}
		if src.parses != c.layers {
			t.Errorf("%s: %d parses, want %d (one per layer)", c.name, src.parses, c.layers)
		}
		p := NewHost("u", "/home/u", "").planCmd(c.cmd, o)
		if p.Reply || !p.Warm || p.Command != want {
			t.Errorf("%s: Plan = %+v, want the warm command", c.name, p)
		}
		if p := NewHost("u", "/home/u", "").planCmd(c.cmd, WarmOptions{}); p.Warm || p.Command != c.cmd {
			t.Errorf("%s: cold Plan = %+v, want the command as sent", c.name, p)
		}
	}
}

// FuzzWarm: no input panics, a rewrite happens only to a recognized
// module run, and every rewrite parses at every layer it changed (Warm
// does not parse its result again; this is why it need not).
func FuzzWarm(f *testing.F) {
	for _, c := range warmCases {
		f.Add(c.cmd)
	}
	f.Add(`/bin/sh -c 'echo ~ && sleep 0'`)
	o := WarmOptions{Agent: "/home/u/.cache/gomux/agent-" + warmSHA, AgentID: "1:2", Idle: time.Minute}
	f.Fuzz(func(t *testing.T, cmd string) {
		out, ok := Warm(cmd, o)
		if !ok {
			if out != cmd {
				t.Fatalf("not rewritten, yet changed: %q -> %q", cmd, out)
			}
			return
		}
		if _, isRun := Parse(cmd).(Run); !isRun {
			t.Fatalf("rewrote %q, which is not a module run", cmd)
		}
		inner, ok := new(source).unwrapShell(out)
		if !ok {
			t.Fatalf("rewrite of %q is not one sh -c command: %q", cmd, out)
		}
		if _, ok := parseFile(inner); !ok {
			t.Fatalf("rewrite of %q does not parse inside sh -c: %q", cmd, inner)
		}
	})
}

// TestWarmTerminalGoesToTheRun: on a pty, a warm run without become takes
// the terminal (pyrun -ctty 0) and the plan says the shell must be
// started without it; under become the shell keeps it (sudo looks at it)
// and nothing changes.
func TestWarmTerminalGoesToTheRun(t *testing.T) {
	agent := "/home/u/.cache/gomux/agent-" + warmSHA
	plain := `/bin/sh -c '/usr/bin/python3 ` + warmScript + ` && sleep 0'`
	sudo := `/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-` + warmKey + ` ; /usr/bin/python3 ` +
		warmScript + `'"'"' && sleep 0'`
	for _, c := range []struct {
		name, cmd string
		terminal  bool
		want      bool
	}{
		{"plain on a pty", plain, true, true},
		{"plain on pipes", plain, false, false},
		{"sudo on a pty", sudo, true, false},
	} {
		h := NewHost("u", "/home/u", "")
		p := h.planCmd(c.cmd, WarmOptions{Agent: agent, AgentID: "1:2", Terminal: c.terminal})
		if !p.Warm {
			t.Fatalf("%s: not warm: %+v", c.name, p)
		}
		if p.TerminalToRun != c.want || strings.Contains(p.Command, "-ctty 0") != c.want {
			t.Errorf("%s: TerminalToRun %v, command %q; want %v", c.name, p.TerminalToRun, p.Command, c.want)
		}
	}
}

// TestWarmBecomeIgnoresHostilePath: a become wrapper that keeps the login
// user's PATH (su, sudo without secure_path), with a directory of fake
// tools first in it: the install runs none of them, installs the copy,
// and the module run keeps the PATH it was given.
func TestWarmBecomeIgnoresHostilePath(t *testing.T) {
	l := newBecomeLab(t)
	hostile, marks := t.TempDir(), t.TempDir()
	for _, tool := range []string{"mkdir", "chmod", "head", "sha256sum", "cut", "mv", "rm"} {
		fake := "#!/bin/sh\n: > " + marks + "/" + tool + "\nexec /usr/bin/" + tool + " \"$@\"\n"
		if err := os.WriteFile(filepath.Join(hostile, tool), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(l.py, []byte("#!/bin/sh\necho PY \"$PATH\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := hostile + ":/usr/bin:/bin"
	l.env = []string{"PATH=" + path}
	// The fake agent runs the interpreter it was given, as pyrun would.
	agent := "#!/bin/sh\nwhile [ \"$1\" != -- ]; do shift; done; shift; exec \"$@\"\n"
	sum := sha256.Sum256([]byte(agent))
	os.Remove(l.loginAgent)
	l.loginAgent = filepath.Join(filepath.Dir(l.loginAgent), "agent-"+hex.EncodeToString(sum[:]))
	if err := os.WriteFile(l.loginAgent, []byte(agent), 0o700); err != nil {
		t.Fatal(err)
	}
	if got := l.run(); got != "PY "+path+"\n" {
		t.Errorf("run: %q, want the interpreter with PATH %s", got, path)
	}
	if _, err := os.Lstat(l.copyPath()); err != nil {
		t.Errorf("no verified copy installed: %v", err)
	}
	if ents, _ := os.ReadDir(marks); len(ents) > 0 {
		var ran []string
		for _, e := range ents {
			ran = append(ran, e.Name())
		}
		t.Errorf("fake tools ran as the become user: %v", ran)
	}
}
