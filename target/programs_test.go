package target

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"text/template/parse"
	"time"

	"mvdan.cc/sh/v3/syntax"

	"github.com/gomux/gomux/internal/fixedpath"
)

var update = flag.Bool("update", false, "rewrite testdata/*.sh, the programs as written filled with sample values")

const (
	sampleSHA  = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	sampleSHA2 = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

// samples fills every program with sample values: the warm runs with
// what Ansible's own text looks like.
func samples(t *testing.T) map[string]any {
	run := "/usr/bin/python3 /home/u/.ansible/tmp/ansible-tmp-1700000000.1-42-1234/AnsiballZ_ping.py"
	w := WarmRun{Agent: "/home/u/.cache/gomux/agent-" + sampleSHA, AgentID: "77:9000", Idle: 5 * time.Minute, Env: "LANG=C ", Run: run}
	_, warm, _ := w.program()
	w.Become = true
	_, become, ok := w.program()
	if !ok {
		t.Fatal("no become program for an agent named by its hash")
	}
	return map[string]any{
		"cachemount.sh":  nil,
		"launcher.sh":    launcherData(map[string]string{"amd64": sampleSHA, "arm64": sampleSHA2}, 30),
		"upload.sh":      uploadData{sampleSHA},
		"warm.sh":        warm,
		"warm-become.sh": become,
	}
}

// TestPrograms renders every program with sample values, as sent and as
// written. As sent, it is one line; both forms are the same program
// (the syntax tree printed the same), it parses as POSIX sh and as
// /bin/sh -n, and it runs no tool by a bare name before it fixes PATH
// (fixedpath). As written (comments kept), it is testdata/NAME, which
// `make lint` checks with sh -n and shellcheck; -update rewrites them.
func TestPrograms(t *testing.T) {
	written := mustLoad(false)
	data := samples(t)
	if names := programNames(); len(names) != len(data) {
		t.Fatalf("programs %v, samples for %d", names, len(data))
	}
	for _, name := range programNames() {
		one, full := sent().render(name, data[name]), written.render(name, data[name])
		if strings.Contains(one, "\n") {
			t.Errorf("%s: more than one line as sent:\n%s", name, one)
		}
		if a, b := printed(t, one), printed(t, full); a != b {
			t.Errorf("%s: as sent and as written differ:\n%s\n--- written:\n%s", name, a, b)
		}
		if out, err := exec.Command("/bin/sh", "-n", "-c", one).CombinedOutput(); err != nil {
			t.Errorf("%s: sh -n: %v %s", name, err, out)
		}
		if bare, err := fixedpath.Unfixed(one); err != nil || len(bare) > 0 {
			t.Errorf("%s runs %q through the PATH it was given (%v):\n%s", name, bare, err, one)
		}
		golden := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(golden, []byte(full+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if b, err := os.ReadFile(golden); err != nil || string(b) != full+"\n" {
			t.Errorf("%s is not %s as written (go test ./target -run TestPrograms -update): %v", golden, name, err)
		}
	}
	for _, cmd := range []string{Launcher(map[string]string{"amd64": sampleSHA}, 1), Upload(sampleSHA)} {
		if bare, err := fixedpath.Unfixed(cmd); err != nil || len(bare) > 0 {
			t.Errorf("runs %q through the PATH it was given (%v):\n%s", bare, err, cmd)
		}
	}
}

// printed is src parsed as POSIX sh and printed back on one line, without comments: the program, whatever its layout.
func printed(t *testing.T, src string) string {
	t.Helper()
	f, err := syntax.NewParser(syntax.Variant(syntax.LangPOSIX)).Parse(strings.NewReader(src), "")
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, src)
	}
	var b bytes.Buffer
	if err := syntax.NewPrinter(syntax.SingleLine(true)).Print(&b, f); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestProgramsQuoteEveryValue: every value a program prints goes
// through q (Quote); only code (Ansible's own text) is printed as is.
func TestProgramsQuoteEveryValue(t *testing.T) {
	for _, tm := range sent().t.Templates() {
		if tm.Tree == nil {
			continue
		}
		walkActions(tm.Tree.Root, func(a *parse.ActionNode) {
			cmds := a.Pipe.Cmds
			first := cmds[0].Args[0]
			if id, ok := first.(*parse.IdentifierNode); len(a.Pipe.Decl) > 0 || len(cmds) != 1 || !ok || (id.Ident != "q" && id.Ident != "code") {
				t.Errorf("%s: %s prints a value without q", tm.Name(), a)
			}
		})
	}
}

func walkActions(n parse.Node, fn func(*parse.ActionNode)) {
	switch x := n.(type) {
	case *parse.ListNode:
		if x != nil {
			for _, c := range x.Nodes {
				walkActions(c, fn)
			}
		}
	case *parse.ActionNode:
		fn(x)
	case *parse.IfNode:
		walkActions(x.List, fn)
		walkActions(x.ElseList, fn)
	case *parse.RangeNode:
		walkActions(x.List, fn)
		walkActions(x.ElseList, fn)
	case *parse.WithNode:
		walkActions(x.List, fn)
		walkActions(x.ElseList, fn)
	}
}

// TestProgramsSpellLayout: the programs spell the cache layout and the
// status lines as this package names them.
func TestProgramsSpellLayout(t *testing.T) {
	data := samples(t)
	launcher := sent().render("launcher.sh", data["launcher.sh"])
	for name, want := range map[string][]string{
		"launcher.sh":    {`d="$HOME/` + CacheDir + `"`, `"$d/` + AgentName("$h") + `"`, `"` + NoAgent + ` `, `"` + NeedAgent + ` `},
		"cachemount.sh":  {`"$HOME/` + path.Dir(CacheDir) + `"`},
		"upload.sh":      {`d="$HOME/` + CacheDir + `"`, `"$d/` + AgentName("$h") + `"`, `"$d/.` + AgentName("$h") + `.$$"`, "echo " + Uploaded + " "},
		"warm-become.sh": {`"$HOME/` + CacheDir + `/` + AgentName(`"`+sampleSHA), `"$d/.` + AgentName(`"`+sampleSHA+`.$$;`)},
	} {
		got := sent().render(name, data[name])
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s does not say %s:\n%s", name, w, got)
			}
		}
	}
	if !strings.Contains(launcher, "x86_64|amd64) h="+sampleSHA+" ;; aarch64|arm64) h="+sampleSHA2+" ;;") {
		t.Errorf("the launcher does not pick the build by uname -m:\n%s", launcher)
	}
}

// TestUploadThenLaunch runs the upload and the launcher with /bin/sh in
// a fresh HOME: the upload puts the agent at CachePath/AgentName(SHA),
// 0700, and the launcher execs it with the PATH it was given; for a
// machine type with no build it says NoAgent.
func TestUploadThenLaunch(t *testing.T) {
	home := t.TempDir()
	os.Chmod(home, 0o755)
	agent := []byte("#!/bin/sh\necho \"agent $*\" \"$PATH\"\n")
	sha := sha256Hex(agent)
	out, err := runSh(t, home, Upload(sha), agent)
	if err != nil || !strings.Contains(out, Uploaded) {
		t.Fatalf("upload: %q %v", out, err)
	}
	st, err := os.Stat(filepath.Join(CachePath(home), AgentName(sha)))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("uploaded agent: %v %v", st, err)
	}
	m, err := exec.Command("uname", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	arch, ok := ArchOf(strings.TrimSpace(string(m)))
	if !ok {
		t.Skipf("no agent build for this machine (%s)", m)
	}
	out, err = runSh(t, home, Launcher(map[string]string{arch: sha}, 7), nil)
	if err != nil || out != "agent serve -cache-days 7 /x:/y\n" {
		t.Errorf("launcher: %q %v", out, err)
	}
	out, _ = runSh(t, home, Launcher(map[string]string{}, 7), nil)
	if !strings.HasPrefix(out, NoAgent+" no agent build for machine ") {
		t.Errorf("launcher without a build: %q", out)
	}
}

// runSh runs cmd as sshd would hand it to a login shell, with HOME and
// PATH=/x:/y.
func runSh(t *testing.T, home, cmd string, stdin []byte) (string, error) {
	t.Helper()
	c := exec.Command("/bin/sh", "-c", cmd)
	c.Env = []string{"HOME=" + home, "PATH=/x:/y"}
	c.Stdin = bytes.NewReader(stdin)
	out, err := c.Output()
	return string(out), err
}

// BenchmarkWarmRunProgram is what the shim pays per warm module run for
// its rewrite: rendering the program, under become and without.
func BenchmarkWarmRunProgram(b *testing.B) {
	w := WarmRun{Agent: "/home/u/.cache/gomux/agent-" + sampleSHA, AgentID: "77:9000", Idle: 5 * time.Minute, Run: "/usr/bin/python3 /tmp/x/AnsiballZ_ping.py"}
	for _, become := range []bool{false, true} {
		w.Become = become
		name := map[bool]string{false: "plain", true: "become"}[become]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, ok := w.Program(); !ok {
					b.Fatal("no program")
				}
			}
		})
	}
}
