package agent

import (
	"fmt"
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

// realAnsiballZ writes a wrapper that unpacks its archive the way
// ansible-core's AnsiballZ does: into
// <tmp>/ansible_<module>_payload_<random>/ansible_<module>_payload.zip.
func realAnsiballZ(t *testing.T, dir string) string {
	t.Helper()
	zipdata := moduleArchive(t, map[string]string{
		"ansible/module_utils/basic.py": "",
		"ansible/modules/fidelity.py":   fidelityModule,
	})
	script := fmt.Sprintf(`#!/usr/bin/python3
_ANSIBALLZ_WRAPPER = True
def _ansiballz_main():
    import os, sys, base64, tempfile, runpy, shutil
    ZIPDATA = """%s"""
    temp_path = tempfile.mkdtemp(prefix='ansible_' + 'fidelity' + '_payload_')
    try:
        zipped_mod = os.path.join(temp_path, 'ansible_' + 'fidelity' + '_payload.zip')
        with open(zipped_mod, "wb") as f:
            f.write(base64.b64decode(ZIPDATA))
        sys.path.insert(0, zipped_mod)
        runpy.run_module(mod_name='ansible.modules.fidelity', run_name='__main__', alter_sys=True)
    finally:
        shutil.rmtree(temp_path, True)
if __name__ == "__main__":
    _ansiballz_main()
`, zipdata)
	p := filepath.Join(dir, "AnsiballZ_fidelity.py")
	if err := os.WriteFile(p, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

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
	script := realAnsiballZ(t, l.work)
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
