package pyrun

import (
	"os/exec"
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
// version is answered cold ("unknown request version" from forkserver.py), and
// the same request of this version is answered ready.
func TestForkServerRefusesOtherVersion(t *testing.T) {
	l, script, sock, peer := warmServerAndPeer(t)
	for _, c := range []struct {
		version int
		want    string
	}{
		{Protocol + 1, "cold: unknown request version"},
		{Protocol - 1, "cold: unknown request version"},
		{Protocol, "ready"},
	} {
		cmd := exec.Command(peer, "-v", strconv.Itoa(c.version), sock, l.python, script)
		cmd.Env, cmd.Dir = l.env, l.work
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != c.want {
			t.Errorf("version %d: %q %v, want %q", c.version, out, err, c.want)
		}
	}
}
