package pyrun

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// fidelityModule reports the locale variables Python's start-up sets and
// dies with a traceback, whose file names show where the module's
// archive was unpacked.
const fidelityModule = `
import os, sys
from ansible.module_utils import basic
print("LC_CTYPE=%r" % os.environ.get("LC_CTYPE"))
print("file=%s" % __file__)
sys.stdout.flush()
raise RuntimeError("boom")
`

// TestPyRunLikeAnsiballZ: a warm run shows a module what a cold one
// does where Ansible can see it: the C locale coerced to UTF-8 in
// LC_CTYPE (PEP 538) when the environment names no locale, and the
// archive's file names in a traceback, up to AnsiballZ's random
// directory name. TestDifferential found both differing.
func TestPyRunLikeAnsiballZ(t *testing.T) {
	l := newPyLab(t)
	var env []string
	for _, kv := range l.env {
		if !strings.HasPrefix(kv, "LANG=") && !strings.HasPrefix(kv, "LC_") {
			env = append(env, kv)
		}
	}
	l.env = env
	// The templates' archive aliases, which a killed template leaves.
	t.Cleanup(func() {
		left, _ := filepath.Glob(filepath.Join(os.TempDir(), "ansible_fidelity_payload_*"))
		for _, d := range left {
			os.RemoveAll(d)
		}
	})
	script := ansiballZ(t, l.work, "fidelity", "", fidelityModule, "{}")
	random := regexp.MustCompile(`ansible_fidelity_payload_[a-z0-9_]+/`)
	norm := func(r pyResult) pyResult {
		r.stdout = random.ReplaceAllString(r.stdout, "ansible_fidelity_payload_X/")
		r.stderr = random.ReplaceAllString(r.stderr, "ansible_fidelity_payload_X/")
		return r
	}
	cold := norm(l.run(false, "", l.python, script))
	if !strings.Contains(cold.stdout, "LC_CTYPE='C.UTF-8'") {
		t.Logf("this Python does not coerce the C locale here: %q", cold.stdout)
	}
	for i := 0; i < 2; i++ {
		warm := norm(l.run(true, "", l.python, script))
		if warm != cold {
			t.Errorf("run %d:\nwarm %+v\ncold %+v", i, warm, cold)
		}
	}
}

// forkServerReadsCheck prints the names the fork server reads from the
// wrapper at argv[2] (forkserver.py at argv[1]): the module's, then the
// payload directory's prefix and the archive's, NUL-separated.
const forkServerReadsCheck = `
import importlib.util, sys
spec = importlib.util.spec_from_file_location("fs", sys.argv[1])
fs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fs)
w = fs.read_wrapper(open(sys.argv[2], "rb").read())
sys.stdout.write("\0".join((w.module, w.prefix, w.zipname)) if w.prefix else w.module)
`

// forkServerReads is what forkServerReadsCheck prints for script.
func forkServerReads(t *testing.T, python, script string) string {
	t.Helper()
	dir := t.TempDir()
	fs := filepath.Join(dir, "forkserver.py")
	if err := os.WriteFile(fs, forkServerScript, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(python, "-c", forkServerReadsCheck, fs, script).Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return string(out)
}

// TestPyRunWrapperSpellings: however a wrapper spells the names the fork
// server reads from it (the module's, the payload directory's and the
// archive's), a warm run shows the module what a cold one does. Where
// the server cannot read a name it goes without: no module_utils
// pre-imported for an unread module name, the archive's alias named from
// its listing for unread payload names. Each case first checks what the
// server reads, so it stays on the path it is for.
func TestPyRunWrapperSpellings(t *testing.T) {
	l := newPyLab(t)
	t.Cleanup(func() {
		left, _ := filepath.Glob(filepath.Join(os.TempDir(), "ansible_fidelity_payload_*"))
		for _, d := range left {
			os.RemoveAll(d)
		}
	})
	random := regexp.MustCompile(`ansible_fidelity_payload_[a-z0-9_]+/`)
	norm := func(r pyResult) pyResult {
		r.stdout = random.ReplaceAllString(r.stdout, "ansible_fidelity_payload_X/")
		r.stderr = random.ReplaceAllString(r.stderr, "ansible_fidelity_payload_X/")
		return r
	}
	for _, c := range []struct {
		name     string
		spelling wrapperSpelling
		reads    string
	}{
		{"ansible-core", spellAnsibleCore, "ansible.modules.fidelity\x00ansible_fidelity_payload_\x00ansible_fidelity_payload.zip"},
		{"concatenated payload names", spellConcatenated, "ansible.modules.fidelity"},
		{"double-quoted names", spellDoubleQuoted, ""},
	} {
		script := ansiballZSpelled(t, t.TempDir(), c.spelling, "fidelity", "", fidelityModule, "{}")
		if got := forkServerReads(t, l.python, script); got != c.reads {
			t.Errorf("%s: the fork server reads %q, want %q", c.name, got, c.reads)
			continue
		}
		cold := norm(l.run(false, "", l.python, script))
		if !strings.Contains(cold.stderr, "RuntimeError: boom") {
			t.Errorf("%s: cold run %+v", c.name, cold)
		}
		for i := 0; i < 2; i++ {
			if warm := norm(l.run(true, "", l.python, script)); warm != cold {
				t.Errorf("%s, run %d:\nwarm %+v\ncold %+v", c.name, i, warm, cold)
			}
		}
	}
}
