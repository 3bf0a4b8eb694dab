package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// TestShimSeedRoundTrips runs the seed playbook through gomux with
// pipelining off (the zero-change case) and reads gomux's counters: one
// round trip to the target per task, the rest answered in gomux, module
// archives sent once, and no temp dir left behind.
func TestShimSeedRoundTrips(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 5*time.Minute)
	r := runPlaybook(ctx, t, lab, g, playbookPath("seed.yml"), "ANSIBLE_PIPELINING=False")
	if r.Err != nil {
		t.Fatalf("seed playbook: %v\n%s", r.Err, r.Output)
	}
	const tasks = 11 // gather facts and ten commands
	var runs []map[string]any
	var last map[string]any
	removals := 0
	for _, e := range g.Events(proxy.EventChannel) {
		if _, ok := e["round_trips"]; !ok {
			continue
		}
		last = e
		if e["step"] == "Run" {
			runs = append(runs, e)
		}
		if e["step"] == "Remove" && e["local"] == true {
			removals++
		}
	}
	if last == nil {
		t.Fatalf("no counters logged:\n%s", g.Log())
	}
	// One batch per task that the client waits for, the removal of each
	// temp dir, sent after the rm was answered without waiting, and the
	// first temp dir step, which runs on the target to prove its base
	// can be made: every request that reached the target counts. The
	// last removal may go out after the last line was logged.
	if want := tasks + float64(removals) + 1; last["round_trips"].(float64) != want && last["round_trips"].(float64) != want-1 {
		t.Errorf("round trips to the target: %v for %d tasks, %d deferred removals and the first temp dir step, want one per task, per removal and one", last["round_trips"], tasks, removals)
	}
	if removals != tasks {
		t.Errorf("%d temp dir removals answered in gomux, want one per task (%d)", removals, tasks)
	}
	t.Logf("counters after the run: round_trips=%v local_steps=%v blob_bytes_sent=%v blob_bytes_saved=%v",
		last["round_trips"], last["local_steps"], last["blob_bytes_sent"], last["blob_bytes_saved"])
	if len(runs) != tasks {
		t.Fatalf("%d module runs logged, want %d", len(runs), tasks)
	}
	// Runs 2.. are facts then commands: from the second command on, the
	// command module's archive is cached on the target.
	for i := 3; i < len(runs); i++ {
		sent := runs[i]["blob_bytes_sent"].(float64) - runs[i-1]["blob_bytes_sent"].(float64)
		if sent >= 5<<10 {
			t.Errorf("task %d sent %v bytes of files upstream, want under 5 KB", i+1, sent)
		}
	}
	// The temp dirs are gone (their removal is sent without waiting).
	tmp := filepath.Join(lab.Home, ".ansible", "tmp")
	waitFor(t, 10*time.Second, func() bool {
		ents, _ := os.ReadDir(tmp)
		return len(ents) == 0
	})
}

// TestShimBecomeUnprivileged runs tasks as another unprivileged user (the
// setfacl path, temp dirs in /var/tmp): results as direct, and once one
// setfacl has worked on the target the later ones ride with the run.
func TestShimBecomeUnprivileged(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 5*time.Minute)
	play := filepath.Join(t.TempDir(), "become.yml")
	must(t, os.WriteFile(play, []byte(fmt.Sprintf(`- hosts: all
  gather_facts: false
  become: true
  become_user: %s
  tasks:
    - command: id -un
      register: a
    - command: id -un
      register: b
    - copy: {content: "hello\n", dest: "/tmp/gmx-become-{{ inventory_hostname }}-%s"}
      register: c
    - assert: {that: ["a.stdout == '%s'", "b.stdout == '%s'", "c.changed"]}
    - file: {path: "{{ c.dest }}", state: absent}
`, lab.OtherUser, lab.OtherUser, lab.OtherUser, lab.OtherUser)), 0o600))
	for _, via := range []*Gomux{nil, g} {
		r := runPlaybook(ctx, t, lab, via, play, "ANSIBLE_PIPELINING=False")
		if r.Err != nil || !strings.Contains(r.recapString(), "failed=0") {
			t.Fatalf("via gomux=%v: %v\n%s", via != nil, r.Err, r.Output)
		}
	}
	local := 0
	for _, e := range g.Events(proxy.EventChannel) {
		if e["step"] == "Setfacl" && e["local"] == true {
			local++
		}
	}
	if local == 0 {
		t.Errorf("no setfacl was recorded after the first one worked")
	}
	// Temp dirs of this test's user are gone (removal is sent without
	// waiting, so give it a moment).
	waitFor(t, 10*time.Second, func() bool {
		ents, _ := filepath.Glob("/var/tmp/ansible-tmp-*")
		for _, e := range ents {
			if fi, err := os.Stat(e); err == nil && ownedBy(fi, lab.User) {
				return false
			}
		}
		return true
	})
}

func ownedBy(fi os.FileInfo, user string) bool {
	out, err := exec.Command("id", "-u", user).Output()
	if err != nil {
		return false
	}
	return fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid) == strings.TrimSpace(string(out))
}
