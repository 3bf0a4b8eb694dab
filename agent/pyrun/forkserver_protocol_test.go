package pyrun

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestForkServerVersionAgrees: the request version forkserver.py accepts
// (its VERSION) is the one pyrun sends (Protocol). The two files
// change together or every warm run goes cold.
func TestForkServerVersionAgrees(t *testing.T) {
	m := regexp.MustCompile(`(?m)^VERSION = (\d+)\s*(?:#.*)?$`).FindAllSubmatch(forkServerScript, -1)
	if len(m) != 1 {
		t.Fatalf("forkserver.py has %d top-level VERSION = N lines, want 1", len(m))
	}
	v, err := strconv.Atoi(string(m[0][1]))
	if err != nil {
		t.Fatal(err)
	}
	if v != Protocol {
		t.Fatalf("forkserver.py VERSION = %d, pyrun sends %d (Protocol)", v, Protocol)
	}
}

// TestForkServerRefusesOtherVersion: a well-formed request of another
// version is answered cold ("unknown request version", PROTOCOL.md), and
// the same request of this version is answered ready.
func TestForkServerRefusesOtherVersion(t *testing.T) {
	l := newPyLab(t)
	script := fakeAnsiballZ(t, l.work, `{"act": "warm"}`)
	if r := l.run(true, "", l.python, script); r.stdout != "True\n" {
		t.Fatalf("%+v", r)
	}
	socks, _ := filepath.Glob(filepath.Join(l.dir, "gomux", "py-*.sock"))
	if len(socks) != 1 {
		t.Fatalf("sockets %v", socks)
	}
	peer := filepath.Join(t.TempDir(), pyPeerHelperName)
	self, _ := os.Executable()
	if err := os.Symlink(self, peer); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		version int
		want    string
	}{
		{Protocol + 1, "cold: unknown request version"},
		{Protocol - 1, "cold: unknown request version"},
		{Protocol, "ready"},
	} {
		cmd := exec.Command(peer, "-v", strconv.Itoa(c.version), socks[0], l.python, script)
		cmd.Env, cmd.Dir = l.env, l.work
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != c.want {
			t.Errorf("version %d: %q %v, want %q", c.version, out, err, c.want)
		}
	}
}
