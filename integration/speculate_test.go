package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// TestBecomeSpeculative runs pipelined become tasks directly and through
// gomux and compares what Ansible reports, task by task. Through gomux,
// once sudo -n to a user has worked, the next task to that user gets
// BECOME-SUCCESS from gomux at once (one round trip instead of two) and
// the target's own marker is taken out of the output. Two failures are
// compared too: a become user deleted after gomux learned that sudo to
// it works (the marker was sent ahead, sudo then fails: Ansible must see
// the same failure as directly, with sudo's own message), and a user
// that never existed (never sent ahead). gomux's log must show the
// marker sent ahead for the repeated tasks and that it was wrong once,
// and that the modules went with their commands, archive by reference.
func TestBecomeSpeculative(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	u := "gms" + strings.TrimPrefix(lab.User, "gmx")
	addUser := func() {
		if out, err := exec.Command("useradd", "-m", "-s", "/bin/sh", u).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v %s", u, err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("pkill", "-KILL", "-u", u).Run()
		exec.Command("userdel", "-f", "-r", u).Run()
		os.RemoveAll("/home/" + u)
	})
	play := fmt.Sprintf(`- hosts: all
  gather_facts: false
  become: true
  tasks:
    - {command: id -un, register: a}
    - {command: id -un, register: b}
    - {command: "id -un", become_user: %[1]s, register: c}
    - {command: "id -un", become_user: %[1]s, register: d}
    - {command: "userdel -f %[1]s", failed_when: false}
    - {command: "id -un", become_user: %[1]s, register: e, ignore_errors: true}
    - {command: "id -un", become_user: nosuchuser%[1]s, register: f, ignore_errors: true}
    - {command: id -un, register: h}
    - debug: {msg: "RESULT ok {{ a.stdout }}|{{ b.stdout }}|{{ c.stdout }}|{{ d.stdout }}|{{ h.stdout }}"}
    - debug: {msg: "RESULT e {{ e.rc | default('') }}|{{ e.msg | default('') }}|{{ e.module_stdout | default('') }}|{{ e.module_stderr | default('') }}|{{ e.stdout | default('') }}"}
    - debug: {msg: "RESULT f {{ f.rc | default('') }}|{{ f.msg | default('') }}|{{ f.module_stdout | default('') }}|{{ f.module_stderr | default('') }}|{{ f.stdout | default('') }}"}
`, u)
	p := filepath.Join(t.TempDir(), "speculate.yml")
	must(t, os.WriteFile(p, []byte(play), 0o600))

	ctx := ctxT(t, 10*time.Minute)
	addUser()
	direct := runPlaybook(ctx, t, lab, nil, p, "ANSIBLE_PIPELINING=True")
	exec.Command("pkill", "-KILL", "-u", u).Run()
	exec.Command("userdel", "-f", "-r", u).Run()
	addUser()
	via := runPlaybook(ctx, t, lab, g, p, "ANSIBLE_PIPELINING=True")
	if direct.Err != nil || via.Err != nil {
		t.Fatalf("direct %v, gomux %v\n%s\n%s\n%s", direct.Err, via.Err, direct.Output, via.Output, g.Log())
	}
	dr, vr := resultLines(direct.Output), resultLines(via.Output)
	t.Logf("results:\n%s", vr)
	if dr != vr || direct.recapString() != via.recapString() {
		t.Fatalf("differs:\ndirect %s\n%s\ngomux  %s\n%s", direct.recapString(), dr, via.recapString(), vr)
	}
	if !strings.Contains(vr, "RESULT ok root|root|"+u+"|"+u+"|root") || !strings.Contains(vr, "RESULT e 1|") || !strings.Contains(vr, "RESULT f 1|") {
		t.Fatalf("unexpected results (the play did not do what the test means):\n%s", vr)
	}

	var ahead, aheadOK, aheadWrong, watched int
	for _, e := range g.Events(proxy.EventChannel) {
		spec, ok := e["become_speculated"].(bool)
		if !ok {
			continue
		}
		watched++
		seen, _ := e["become_marker_seen"].(bool)
		switch {
		case spec && seen:
			aheadOK++
			ahead++
		case spec:
			aheadWrong++
			ahead++
		}
	}
	// a and c learn, b, d, h are sent ahead and right, e ahead and wrong;
	// the userdel task goes ahead too (root was learned by a), and f
	// never does.
	if aheadOK < 4 || aheadWrong != 1 || watched < 8 {
		t.Fatalf("BECOME-SUCCESS sent ahead %d times (%d right, %d wrong) of %d become runs; want at least 4 right and exactly 1 wrong\n%s",
			ahead, aheadOK, aheadWrong, watched, g.Log())
	}
	// Pipelined modules went with their command, by parts, and their
	// archives by reference after the first task of each module.
	byParts, saved := 0, 0.0
	for _, e := range g.Events(proxy.EventChannel) {
		if v, _ := e["module_by_parts"].(bool); v {
			byParts++
		}
		if v, ok := e["blob_bytes_saved"].(float64); ok {
			saved = max(saved, v)
		}
	}
	if byParts < 5 || saved < 50_000 {
		t.Fatalf("%d module runs sent by parts, %v bytes saved by reference; want at least 5 (the runs sent ahead) and 50 KB", byParts, saved)
	}
	if len(g.Events(proxy.EventBecomeSpeculation)) != 1 {
		t.Fatalf("want one become_speculation warning, have %d", len(g.Events(proxy.EventBecomeSpeculation)))
	}
}
