package agent

import (
	"os"
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
