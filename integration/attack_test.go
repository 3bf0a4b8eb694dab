package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// rootLab is one target whose sshd lets root log in by key and authorizes
// gomux's upstream key for root too: only gomux's policy stands between a
// person and a root shell there.
func rootLab(t *testing.T) *harness.Lab {
	t.Helper()
	lab := harness.Start(t, harness.Options{Targets: 1, SSHDConfig: func(int) string {
		return "PermitRootLogin prohibit-password\n"
	}})
	pub := readFile(t, lab.ClientKey+".pub")
	must(t, os.WriteFile(filepath.Join(lab.Dir, "authorized_keys", "root"), []byte(pub), 0o644))
	return lab
}

// TestAttackRemoteUserStyle: OpenSSH's sshd cuts a login name at its
// first ':' (the rest is a BSD auth style, cut on every platform), so
// "root:x" logs in as root. A rule that allows any remote user but root
// must not let that spelling through.
func TestAttackRemoteUserStyle(t *testing.T) {
	lab := rootLab(t)
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 2*time.Minute)
	if r := runCmd(g.SSH(ctx, tg.Addr, "id -un"), nil); r.Stdout != lab.User+"\n" {
		t.Fatalf("control: %+v", r)
	}
	for _, user := range []string{"root:x", "root:", "root:bsdauth", lab.User + ":x"} {
		r := runCmd(g.SSHVerbose(ctx, tg.Addr, "-l", user, "id -un"), nil)
		if r.Code != 255 || strings.Contains(r.Stdout, "root") || !strings.Contains(r.Stderr, "may not log in") {
			t.Errorf("-l %s: %+v", user, r)
		}
		if !hasEvent(g, "inner_auth", "remote_user", user) {
			t.Errorf("no inner_auth denial logged for %q", user)
		}
	}
	if log := tg.SSHDLog(); strings.Contains(log, "Accepted publickey for root") {
		t.Errorf("the target let gomux in as root:\n%s", log)
	}
}
