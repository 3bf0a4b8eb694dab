package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// becomePlay writes a playbook of module tasks that run as becomeUser
// (empty: no become) and report what they saw in RESULT lines.
func becomePlay(t *testing.T, dir, name, becomeUser string, repeat int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("- hosts: all\n  gather_facts: false\n  tasks:\n")
	head := "      become: false\n"
	if becomeUser != "" {
		head = "      become: true\n      become_user: " + becomeUser + "\n"
	}
	for i := 0; i < repeat; i++ {
		fmt.Fprintf(&b, "    - name: who-%d\n%s      command: id -un\n      register: who%d\n", i, head, i)
		fmt.Fprintf(&b, "    - name: stat-%d\n%s      stat: {path: /etc/hostname}\n      register: st%d\n", i, head, i)
		fmt.Fprintf(&b, "    - name: report-%d\n      debug: {msg: \"RESULT {{ who%d.stdout }}|{{ st%d.stat.exists }}|{{ who%d.rc }}\"}\n", i, i, i, i)
	}
	p := filepath.Join(dir, name+".yml")
	must(t, os.WriteFile(p, []byte(b.String()), 0o600))
	return p
}

// resultLines are the RESULT lines of a playbook's output.
func resultLines(out string) string {
	var rs []string
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "RESULT "); i >= 0 {
			rs = append(rs, strings.Trim(l[i:], `",`))
		}
	}
	return strings.Join(rs, "\n")
}

// sameAsDirect runs p directly and through gomux and fails unless both
// pass with the same recap and results.
func sameAsDirect(t *testing.T, lab *harness.Lab, g *Gomux, p string, env ...string) playbookRun {
	t.Helper()
	ctx := ctxT(t, 10*time.Minute)
	direct := runPlaybook(ctx, t, lab, nil, p, env...)
	via := runPlaybook(ctx, t, lab, g, p, env...)
	if direct.Err != nil || via.Err != nil {
		t.Fatalf("%s: direct %v, gomux %v\n%s\n%s\n%s", p, direct.Err, via.Err, direct.Output, via.Output, g.Log())
	}
	if direct.recapString() != via.recapString() || resultLines(direct.Output) != resultLines(via.Output) || resultLines(via.Output) == "" {
		t.Fatalf("%s differs:\ndirect %s\n%s\ngomux  %s\n%s", p, direct.recapString(), resultLines(direct.Output), via.recapString(), resultLines(via.Output))
	}
	return via
}

// loginAgent is the agent file gomux installed in the login user's cache.
func loginAgent(t *testing.T, lab *harness.Lab) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(lab.Home, ".cache", "gomux", "agent-*"))
	if len(m) != 1 {
		t.Fatalf("want one agent in the login user's cache, have %v", m)
	}
	return m[0]
}

// plantScript is what an attacker with the login user's rights puts in
// place of the agent: it leaves a marker named by the uid that ran it,
// then runs the interpreter command line it was given, so tasks still
// pass and the plant goes unnoticed.
func plantScript(markerDir string) []byte {
	return []byte("#!/bin/sh\ntouch " + markerDir + "/ran-as-$(id -u)\n" +
		"while [ $# -gt 0 ] && [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n")
}

// replaceAs puts content at path, owned by uid, by rename (as the login
// user could: the file is in its own directory).
func replaceAs(path string, content []byte, uid, gid int) error {
	tmp := fmt.Sprintf("%s.plant%d", path, time.Now().UnixNano())
	if err := os.WriteFile(tmp, content, 0o755); err != nil {
		return err
	}
	if err := os.Chown(tmp, uid, gid); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func lookupIDs(t *testing.T, name string) (int, int) {
	t.Helper()
	u, err := user.Lookup(name)
	must(t, err)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

func markers(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestBecomePlantedAgentNotRunAsRoot is the attack of issue 11: the login
// user replaces its cached agent with a script; the next `become: true`
// task through gomux must not run that script as root. The become user's
// shell runs its own copy in $HOME/.cache/gomux (root's), owned by root in
// a 0700 directory only root can write, installed by copying the login
// user's file there and hashing the copy, not the original: nothing the
// login user can write is executed by root, so there is no window
// between check and exec to race.
func TestBecomePlantedAgentNotRunAsRoot(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{Upstream: "  warm_python: true\n  warm_python_idle: 15s\n"})
	tgt := lab.Targets[0]
	dir := t.TempDir()
	t.Cleanup(func() {
		for pid := range forkServers(agentPIDs(t, tgt, lab.User)) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// Start the agent (and its cache) with tasks of the login user.
	sameAsDirect(t, lab, g, becomePlay(t, dir, "login", "", 1), "ANSIBLE_PIPELINING=False")
	agentPath := loginAgent(t, lab)
	genuine, err := os.ReadFile(agentPath)
	must(t, err)
	sum := sha256.Sum256(genuine)
	sha := hex.EncodeToString(sum[:])
	if filepath.Base(agentPath) != "agent-"+sha {
		t.Fatalf("agent %s does not hash to its name (%s)", agentPath, sha)
	}

	markerDir, err := os.MkdirTemp("/tmp", "gmx-plant-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(markerDir) })
	must(t, os.Chmod(markerDir, 0o1777))
	uid, gid := lookupIDs(t, lab.User)
	must(t, replaceAs(agentPath, plantScript(markerDir), uid, gid))

	cp := "/root/.cache/gomux/agent-" + sha
	_, hadCopy := os.Lstat(cp)
	// Planted before root has a copy: the copy cannot be verified, so the
	// tasks run the interpreter as stock Ansible would.
	for _, pipelining := range []string{"True", "False"} {
		sameAsDirect(t, lab, g, becomePlay(t, dir, "root-planted-"+pipelining, "root", 2), "ANSIBLE_PIPELINING="+pipelining)
	}
	if _, err := os.Lstat(cp); hadCopy != nil && err == nil {
		t.Fatalf("root installed a copy of the planted agent")
	}
	// The genuine agent back: root's first become task installs its copy.
	must(t, replaceAs(agentPath, genuine, uid, gid))
	sameAsDirect(t, lab, g, becomePlay(t, dir, "root-genuine", "root", 1), "ANSIBLE_PIPELINING=True")
	// Planted again: root keeps running its own verified copy, warm.
	must(t, replaceAs(agentPath, plantScript(markerDir), uid, gid))
	for _, pipelining := range []string{"True", "False"} {
		sameAsDirect(t, lab, g, becomePlay(t, dir, "root-copy-"+pipelining, "root", 2), "ANSIBLE_PIPELINING="+pipelining)
	}
	// The login user's own runs use its own (planted) file: that is the
	// login user running its own code, and shows the plant was in place.
	sameAsDirect(t, lab, g, becomePlay(t, dir, "login2", "", 1), "ANSIBLE_PIPELINING=False")
	got := markers(markerDir)
	if want := "ran-as-" + strconv.Itoa(uid); strings.Join(got, ",") != want {
		t.Fatalf("markers %v, want only %s (the plant must never run as root)", got, want)
	}
	st, err := os.Lstat(cp)
	if err != nil {
		t.Fatalf("root has no verified copy: %v", err)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 || st.Mode().Perm()&0o022 != 0 || !st.Mode().IsRegular() {
		t.Fatalf("root's copy %s: uid %d mode %v", cp, sys.Uid, st.Mode())
	}
	b, err := os.ReadFile(cp)
	must(t, err)
	if c := sha256.Sum256(b); hex.EncodeToString(c[:]) != sha {
		t.Fatalf("root's copy does not hash to %s", sha)
	}
	if countUser(forkServers(agentPIDs(t, tgt, lab.User)), "root") == 0 {
		t.Fatalf("become tasks did not run warm: no fork server as root\n%s", g.Log())
	}
}

// TestBecomeSwapRace races a swapper that keeps replacing the login
// user's agent (genuine, planted, genuine, ...) against become tasks
// whose become user's verified copy keeps being deleted, so that the
// copy is installed again and again while the swap runs. The install
// hashes the become user's private copy after copying it, and runs only
// that copy: whatever the swapper does, the plant never runs as the
// become user.
func TestBecomeSwapRace(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{Upstream: "  warm_python: true\n  warm_python_idle: 15s\n"})
	tgt := lab.Targets[0]
	dir := t.TempDir()
	t.Cleanup(func() {
		for pid := range forkServers(agentPIDs(t, tgt, lab.User)) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	sameAsDirect(t, lab, g, becomePlay(t, dir, "login", "", 1), "ANSIBLE_PIPELINING=True")
	agentPath := loginAgent(t, lab)
	genuine, err := os.ReadFile(agentPath)
	must(t, err)
	// The login user lets other users read its agent, so the become user
	// (an unprivileged one) can copy it.
	for _, d := range []string{lab.Home, filepath.Join(lab.Home, ".cache"), filepath.Dir(agentPath)} {
		must(t, os.Chmod(d, 0o755))
	}
	markerDir, err := os.MkdirTemp("/tmp", "gmx-race-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(markerDir) })
	must(t, os.Chmod(markerDir, 0o1777))
	uid, gid := lookupIDs(t, lab.User)
	otherCopy := filepath.Join("/home", lab.OtherUser, ".cache", "gomux", filepath.Base(agentPath))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var swaps, deletes int
	wg.Add(2)
	go func() {
		defer wg.Done()
		plant := plantScript(markerDir)
		for i := 0; ; i++ {
			select {
			case <-stop:
				replaceAs(agentPath, genuine, uid, gid)
				return
			default:
			}
			c := genuine
			if i%2 == 1 {
				c = plant
			}
			if replaceAs(agentPath, c, uid, gid) == nil {
				swaps++
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if os.Remove(otherCopy) == nil {
				deletes++
			}
		}
	}()
	sameAsDirect(t, lab, g, becomePlay(t, dir, "race", lab.OtherUser, 8), "ANSIBLE_PIPELINING=True")
	close(stop)
	wg.Wait()
	otherUID, _ := lookupIDs(t, lab.OtherUser)
	for _, m := range markers(markerDir) {
		if m == "ran-as-"+strconv.Itoa(otherUID) || m == "ran-as-0" {
			t.Fatalf("the plant ran as the become user: %v", markers(markerDir))
		}
	}
	t.Logf("%d swaps, %d deletions of the become user's copy, markers %v", swaps, deletes, markers(markerDir))
	// An install that copies the plant half-way through a swap fails
	// its hash and runs plain, so how many installs succeed (and are
	// deleted again) depends on timing: one is enough to show the race ran.
	if swaps < 10 || deletes < 1 {
		t.Fatalf("the race did not run: %d swaps, %d deletions", swaps, deletes)
	}
}
