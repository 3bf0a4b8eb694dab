package integration

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// casts lists the recordings in dir.
func casts(t *testing.T, dir string) []string {
	t.Helper()
	got, err := filepath.Glob(filepath.Join(dir, "*.cast"))
	must(t, err)
	return got
}

// asciinemaCat is what the real asciinema player prints for a recording.
func asciinemaCat(t *testing.T, path string) string {
	t.Helper()
	if _, err := exec.LookPath("asciinema"); err != nil {
		t.Skip("asciinema not installed (make deps installs it)")
	}
	// asciinema reads its terminal: it runs on a pty, as a person's.
	cmd := exec.Command("asciinema", "cat", path)
	f, err := pty.Start(cmd)
	must(t, err)
	defer f.Close()
	out, _ := io.ReadAll(f) // EIO once asciinema exits
	if err := cmd.Wait(); err != nil {
		t.Fatalf("asciinema cat %s: %v\n%s", path, err, out)
	}
	return string(out)
}

// TestRecordingsWithoutHoles: with audit.record_dir set, every session a
// person could type into is recorded, whichever way gomux serves it.
// Before, a pty session served in fallback (no agent) and a shell without
// a pty (`ssh -T`) were never recorded.
func TestRecordingsWithoutHoles(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	ctx := ctxT(t, 3*time.Minute)
	for _, tc := range []struct {
		name, upstream string
	}{{"agent", ""}, {"fallback", "  agent: false\n"}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "casts")
			auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
			g := startGomux(t, lab, gomuxOptions{Upstream: tc.upstream,
				Extra: "audit:\n  record_dir: " + dir + "\n  log_file: " + auditPath + "\n"})
			// A pty session.
			if r := runCmd(g.SSH(ctx, tg.Addr, "-tt", "echo pty-"+tc.name), nil); !strings.Contains(r.Stdout, "pty-"+tc.name) {
				t.Fatalf("pty session: %+v", r)
			}
			// A shell without a pty, typed into.
			shell := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", "gomux", "-T", tg.Addr)
			if r := runCmd(shell, strings.NewReader("echo shell-$((6*7))\nexit\n")); !strings.Contains(r.Stdout, "shell-42") {
				t.Fatalf("ssh -T shell: %+v", r)
			}
			// A plain exec without a pty is a command, not a terminal:
			// Ansible's steps are logged, not recorded.
			if r := runCmd(g.SSH(ctx, tg.Addr, "echo not-recorded"), nil); r.Code != 0 {
				t.Fatalf("exec: %+v", r)
			}
			got := casts(t, dir)
			if len(got) != 2 {
				t.Fatalf("recordings: %v", got)
			}
			var all string
			for _, c := range got {
				all += asciinemaCat(t, c)
			}
			for _, want := range []string{"pty-" + tc.name, "shell-42"} {
				if !strings.Contains(all, want) {
					t.Errorf("asciinema cat of the recordings lacks %q:\n%s", want, all)
				}
			}
			if strings.Contains(all, "not-recorded") {
				t.Errorf("a plain exec was recorded")
			}
			g.Stop()
			lines := auditLines(t, auditPath)
			checkAuditSchema(t, lines)
			results := map[any]int{}
			for _, e := range lines[proxy.EventRecording] {
				results[e["result"]]++
			}
			if results["started"] != 2 || results["stopped"] != 2 {
				t.Errorf("recording events in the audit file: %v, want 2 started and 2 stopped", results)
			}
		})
	}
}

// TestRecordingRequired: with audit.record_required, a session that must
// be recorded and cannot be (the quota of record_dir reached, or a
// record_dir that cannot be made) is refused with a message; a plain
// command still runs. Before, recording failed open with no quota.
func TestRecordingRequired(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	ctx := ctxT(t, 3*time.Minute)
	full := filepath.Join(t.TempDir(), "casts")
	must(t, os.MkdirAll(full, 0o700))
	must(t, os.WriteFile(filepath.Join(full, "old.cast"), make([]byte, 2<<20), 0o600))
	notADir := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(notADir, nil, 0o600))
	for _, tc := range []struct{ name, audit string }{
		{"quota-reached", "audit:\n  record_dir: " + full + "\n  record_quota_mib: 1\n  record_required: true\n"},
		{"dir-unusable", "audit:\n  record_dir: " + filepath.Join(notADir, "casts") + "\n  record_required: true\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, upstream := range []string{"", "  agent: false\n"} {
				g := startGomux(t, lab, gomuxOptions{Upstream: upstream, Extra: tc.audit})
				r := runCmd(g.SSH(ctx, tg.Addr, "-tt", "echo must-not-run"), nil)
				if r.Code != 1 || strings.Contains(r.Stdout, "must-not-run") || !strings.Contains(r.Stdout+r.Stderr, "must be recorded") {
					t.Errorf("pty session (agent section %q) that cannot be recorded: %+v", upstream, r)
				}
				shell := exec.CommandContext(ctx, "ssh", "-F", g.SSHConfig, "-J", "gomux", "-T", tg.Addr)
				if r := runCmd(shell, strings.NewReader("echo must-not-run\n")); strings.Contains(r.Stdout, "must-not-run") {
					t.Errorf("shell (agent section %q) that cannot be recorded: %+v", upstream, r)
				}
				if r := runCmd(g.SSH(ctx, tg.Addr, "echo plain"), nil); r.Stdout != "plain\n" {
					t.Errorf("plain exec (agent section %q): %+v", upstream, r)
				}
				if !hasEvent(g, proxy.EventRecording, "result", "refused") {
					t.Errorf("no recording refusal logged")
				}
			}
		})
	}
}
