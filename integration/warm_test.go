package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// forkServers returns the PIDs of warm-Python fork server processes
// (servers and their templates) tied to one of agents, by the user they
// run as.
func forkServers(agents []int) map[int]string {
	out := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !bytes.Contains(b, []byte("/forkserver-")) {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) != 5 {
			continue
		}
		agentPID, _, _ := strings.Cut(args[4], ":")
		for _, a := range agents {
			if agentPID == strconv.Itoa(a) {
				var st syscall.Stat_t
				if syscall.Stat(fmt.Sprintf("/proc/%d", pid), &st) == nil {
					out[pid] = uidName(st.Uid)
				}
			}
		}
	}
	return out
}

func uidName(uid uint32) string {
	out, err := exec.Command("id", "-nu", strconv.Itoa(int(uid))).Output()
	if err != nil {
		return strconv.Itoa(int(uid))
	}
	return strings.TrimSpace(string(out))
}

// serverPIDs are the fork servers proper (not templates) of user.
func serverPIDs(fs map[int]string, user string) []int {
	var out []int
	for pid, u := range fs {
		if u != user {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+2:]))
		ppid, _ := strconv.Atoi(f[1])
		if _, parentIsServer := fs[ppid]; !parentIsServer {
			out = append(out, pid)
		}
	}
	return out
}

func countUser(fs map[int]string, user string) int {
	n := 0
	for _, u := range fs {
		if u == user {
			n++
		}
	}
	return n
}

// TestWarmPython runs modules through gomux with the warm interpreter on:
// the same results as direct; fork servers for the login user, and for
// root only once a become task asked for one; killing fork servers
// between tasks fails no task and the next task starts new ones; none
// left after the idle timeout.
func TestWarmPython(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{Upstream: "  warm_python: true\n  warm_python_idle: 15s\n"})
	ctx := ctxT(t, 10*time.Minute)
	tgt := lab.Targets[0]
	dir := t.TempDir()
	// play writes a playbook whose module tasks run as the login user
	// and, when become is set, interleaved with the same tasks as root.
	play := func(name string, become bool) string {
		var b strings.Builder
		b.WriteString("- hosts: all\n  gather_facts: false\n  tasks:\n")
		users := []bool{false}
		if become {
			users = append(users, true)
		}
		for i, task := range []string{
			"command: id -un\n      register: who",
			"shell: 'echo \"$HOME\" \"$(umask)\" \"$PWD\"; echo err >&2; exit 3'\n      register: sh\n      failed_when: sh.rc != 3",
			"stat: {path: /etc/hostname}\n      register: st",
			"file: {path: \"/tmp/gmx-warm-{{ inventory_hostname }}-" + name + "-{{ ansible_become | default(false) }}\", state: touch, mode: \"0640\"}\n      register: touched",
			"file: {path: \"{{ touched.dest }}\", state: absent}",
			"command: /bin/false\n      ignore_errors: true\n      register: fails",
			"debug: {msg: \"RESULT {{ who.stdout }}|{{ sh.stdout }}|{{ sh.stderr }}|{{ sh.rc }}|{{ st.stat.exists }}|{{ touched.mode }}|{{ fails.rc }}\"}",
		} {
			for _, u := range users {
				fmt.Fprintf(&b, "    - name: t%d-%v\n      become: %v\n      %s\n", i, u, u, task)
			}
		}
		p := filepath.Join(dir, name+".yml")
		must(t, os.WriteFile(p, []byte(b.String()), 0o600))
		return p
	}
	results := func(out string) []string {
		var rs []string
		for _, l := range strings.Split(out, "\n") {
			if i := strings.Index(l, "RESULT "); i >= 0 {
				rs = append(rs, strings.Trim(l[i:], `",`))
			}
		}
		return rs
	}
	runBoth := func(p string, env ...string) {
		t.Helper()
		direct := runPlaybook(ctx, t, lab, nil, p, env...)
		via := runPlaybook(ctx, t, lab, g, p, env...)
		if direct.Err != nil || via.Err != nil {
			t.Fatalf("%s: direct %v, gomux %v\n%s\n%s", p, direct.Err, via.Err, direct.Output, via.Output)
		}
		if direct.recapString() != via.recapString() || strings.Join(results(direct.Output), "\n") != strings.Join(results(via.Output), "\n") ||
			len(results(via.Output)) == 0 {
			t.Fatalf("%s differs:\ndirect %s%v\ngomux  %s%v", p, direct.recapString(), results(direct.Output), via.recapString(), results(via.Output))
		}
	}
	agents := func() []int { return agentPIDs(t, tgt, lab.User) }
	t.Cleanup(func() {
		for pid := range forkServers(agents()) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	runBoth(play("user", false), "ANSIBLE_PIPELINING=False")
	fs := forkServers(agents())
	if countUser(fs, lab.User) == 0 {
		t.Fatalf("no fork server for %s after its tasks: %v\n%s", lab.User, fs, g.Log())
	}
	if n := countUser(fs, "root"); n != 0 {
		t.Fatalf("%d fork server processes as root before any become task", n)
	}
	warm := 0
	for _, e := range g.Events(proxy.EventChannel) {
		if e["warm"] == true {
			warm++
		}
	}
	if warm == 0 {
		t.Fatalf("no module run went through the fork server")
	}

	runBoth(play("become", true), "ANSIBLE_PIPELINING=True")
	fs = forkServers(agents())
	if countUser(fs, "root") == 0 || countUser(fs, lab.User) == 0 {
		t.Fatalf("want fork servers for root and %s after become tasks, have %v", lab.User, fs)
	}

	// Kill every fork server (not the templates, which finish their
	// runs) between tasks: the next tasks must pass and start new ones.
	old := map[int]bool{}
	for _, u := range []string{lab.User, "root"} {
		for _, pid := range serverPIDs(fs, u) {
			old[pid] = true
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if len(old) < 2 {
		t.Fatalf("want a server for each user, have %v", fs)
	}
	runBoth(play("become", true), "ANSIBLE_PIPELINING=False")
	fs = forkServers(agents())
	for _, u := range []string{lab.User, "root"} {
		fresh := false
		for _, pid := range serverPIDs(fs, u) {
			if !old[pid] {
				fresh = true
			}
		}
		if !fresh {
			t.Errorf("no new fork server for %s after the kill: %v", u, fs)
		}
	}

	// After the idle timeout, none is left.
	waitFor(t, 2*time.Minute, func() bool { return len(forkServers(agents())) == 0 })
}
