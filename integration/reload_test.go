package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// TestReloadRecordDir: the operator turns recording on and sends SIGHUP.
// Before, the reload logged success and the next pty session was not
// recorded (the session read the start-up config). Now what a reload logs
// as applied is what runs.
func TestReloadRecordDir(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 2*time.Minute)
	casts := filepath.Join(t.TempDir(), "casts")
	must(t, os.MkdirAll(casts, 0o700))
	cfgPath := filepath.Join(g.Dir, "gomux.yaml")
	must(t, os.WriteFile(cfgPath, []byte(readFile(t, cfgPath)+"audit:\n  record_dir: "+casts+"\n"), 0o600))
	must(t, g.cmd.Process.Signal(syscall.SIGHUP))
	waitFor(t, 20*time.Second, func() bool { return hasEvent(g, proxy.EventReload, "result", "ok") })
	if r := runCmd(g.SSH(ctx, tg.Addr, "-tt", "echo recorded-after-reload"), nil); r.Code != 0 {
		t.Fatalf("pty session: %+v", r)
	}
	got, _ := filepath.Glob(filepath.Join(casts, "*.cast"))
	if len(got) != 1 || !strings.Contains(readFile(t, got[0]), "recorded-after-reload") {
		t.Errorf("recordings after turning record_dir on by reload: %v", got)
	}
}

// TestReloadHalfWrittenFile: the config file is rewritten by a slow
// writer, half of it standing for less than two polls of the watcher
// (2 s) before the rest arrives. Before, the watcher reloaded whatever it
// saw change, and a poll in that window applied the half (here a file
// whose rules end early, or do not parse). Now a file is applied only once
// two reads a poll apart agree: every reload is of the whole file.
func TestReloadHalfWrittenFile(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 2*time.Minute)
	cfgPath := filepath.Join(g.Dir, "gomux.yaml")
	orig := readFile(t, cfgPath)
	// The whole file adds a deny rule before the others; its first half
	// stops inside the rules.
	i := strings.Index(orig, "targets:\n")
	if i < 0 {
		t.Fatalf("no targets in:\n%s", orig)
	}
	extra := fmt.Sprintf("  - hosts: [denied-%d.lab]\n    mode: deny\n", time.Now().UnixNano())
	full := orig[:i+len("targets:\n")] + extra + orig[i+len("targets:\n"):]
	half := full[:i+len("targets:\n")+len(extra)/2]
	const rounds = 3
	for n := range rounds {
		content := full
		if n%2 == 1 {
			content = orig // and back, so each round changes the file
		}
		content = strings.Replace(content, "drain_timeout: 5s", fmt.Sprintf("drain_timeout: %ds", 5+n), 1)
		f, err := os.OpenFile(cfgPath, os.O_WRONLY|os.O_TRUNC, 0o600)
		must(t, err)
		_, err = f.WriteString(half)
		must(t, err)
		time.Sleep(1500 * time.Millisecond) // less than two polls
		_, err = f.WriteAt([]byte(content), 0)
		must(t, err)
		must(t, f.Truncate(int64(len(content))))
		must(t, f.Close())
		want := n + 1
		waitFor(t, 20*time.Second, func() bool { return len(g.Events(proxy.EventReload)) >= want })
		// The reload came at a poll: the next half is written between
		// two, where a watcher that reloads at the first sight of a
		// change would read it.
		time.Sleep(time.Second)
	}
	time.Sleep(5 * time.Second) // any late reload of a half shows now
	evs := g.Events(proxy.EventReload)
	if len(evs) != rounds {
		t.Errorf("%d reloads for %d rewrites: %v", len(evs), rounds, evs)
	}
	for _, e := range evs {
		if e["result"] != "ok" || e["trigger"] != "config file changed" {
			t.Errorf("a reload of a half-written file: %v", e)
		}
	}
	if r := runCmd(g.SSH(ctx, tg.Addr, "echo ok"), nil); r.Stdout != "ok\n" {
		t.Errorf("target after the rewrites: %+v", r)
	}
}
