package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/proxy"
)

func TestRunUsageAndConfigErrors(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("upstream:\n  idle_timeout: forever\n"), 0o600)
	noTargets := filepath.Join(dir, "no-targets.yaml")
	os.WriteFile(noTargets, []byte("listen: 127.0.0.1:2022\ntargets:\n#  - hosts: ['*']\n"), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"serve", "-config", bad}, 2, "invalid duration"},
		{[]string{"serve", "-config", filepath.Join(dir, "missing.yaml")}, 2, "no such file"},
		{[]string{"serve", "-config", noTargets}, 2, "targets: required"},
		{[]string{"serve", "extra"}, 2, "unexpected argument"},
		{[]string{"version"}, 0, "gomux"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("%v: code %d, output %q %q; want %d and %q", tc.args, code, out.String(), errb.String(), tc.code, tc.want)
		}
	}
}

func TestCAPrintsKnownHostsLine(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	state := t.TempDir()
	var out, errb bytes.Buffer
	// An empty state dir: no new CA minted without -init.
	if code := run([]string{"ca", "-state", state}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "-init") {
		t.Fatalf("ca on an empty state dir: %d %q", code, errb.String())
	}
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Fatalf("ca without -init wrote %v", ents)
	}
	if code := run([]string{"ca", "-init", "-state", state}, &out, &errb); code != 0 {
		t.Fatalf("ca -init: %d %s", code, errb.String())
	}
	first := out.String()
	if !strings.HasPrefix(first, "@cert-authority * ssh-ed25519 ") {
		t.Fatalf("ca printed %q", first)
	}
	out.Reset()
	run([]string{"ca", "-state", state}, &out, &errb)
	if out.String() != first {
		t.Errorf("CA changed between runs")
	}
}

func TestLevelFilterFollowsReload(t *testing.T) {
	var buf bytes.Buffer
	log, lf := newLogger(&buf, "info")
	log.Debug().Msg("hidden")
	log.Info().Msg("shown")
	lf.set("debug")
	log.Debug().Msg("now-shown")
	lf.set("error")
	log.Warn().Msg("hidden-again")
	out := buf.String()
	if strings.Contains(out, `"hidden"`) || !strings.Contains(out, "shown") || !strings.Contains(out, "now-shown") || strings.Contains(out, "hidden-again") {
		t.Fatalf("log output %q", out)
	}
}

func TestWatchFileSignalsAChange(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gomux.yaml")
	os.WriteFile(p, []byte("a"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan []byte)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchFile(ctx, p, []byte("a"), 10*time.Millisecond, changed)
	}()
	defer func() { cancel(); <-done }()
	select {
	case b := <-changed:
		t.Fatalf("change signalled for an untouched file: %q", b)
	case <-time.After(50 * time.Millisecond):
	}
	// A ConfigMap update: a new file renamed over the old one.
	os.WriteFile(p+".new", []byte("bb"), 0o600)
	os.Rename(p+".new", p)
	select {
	case b := <-changed:
		if string(b) != "bb" {
			t.Fatalf("watcher sent %q, want the settled content", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled")
	}
}

// TestSettledFileNeverAppliesAHalfWrite: a file read in the middle of a
// write differs from the next read, so it is never applied; the complete
// file is, once two reads agree; the same content again is not.
func TestSettledFileNeverAppliesAHalfWrite(t *testing.T) {
	full := "targets:\n  - hosts: [a]\n    mode: deny\n  - hosts: ['*']\n"
	half := full[:len(full)/2]
	f := newSettledFile([]byte("targets: []\n"))
	for i, step := range []struct {
		read  string
		apply bool
	}{
		{"targets: []\n", false}, // unchanged
		{half, false},            // changed, first read
		{full, false},            // changed again: the half was never applied
		{full, true},             // two reads agree
		{full, false},            // already in force
		{half, false},            // a rewrite begins
		{half, true},             // the writer stopped at half: it is the file now
	} {
		if got := f.read([]byte(step.read)); got != step.apply {
			t.Fatalf("read %d (%q): apply %v, want %v", i, step.read, got, step.apply)
		}
	}
}

// TestCAHostsScopesTheLine: `gomux ca -hosts` trusts the CA only for gomux
// and the accelerate rules' names, and says on stderr what it left out.
func TestCAHostsScopesTheLine(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	state := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "gomux.yaml")
	os.WriteFile(cfg, []byte(`targets:
  - hosts: ["*.prod.example.com"]
    remote_users: [deploy]
  - hosts: ["legacy.example.com"]
    mode: splice
  - cidrs: [10.20.0.0/16]
    ports: [22, 2222]
    remote_users: [deploy]
`), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"ca", "-init", "-state", state, "-config", cfg, "-hosts"}, &out, &errb); code != 0 {
		t.Fatalf("ca -hosts: %d %s", code, errb.String())
	}
	want := "@cert-authority gomux,*.prod.example.com,10.20.*.*,[10.20.*.*]:2222 ssh-ed25519 "
	if !strings.HasPrefix(out.String(), want) {
		t.Errorf("ca -hosts printed %q, want it to start %q", out.String(), want)
	}
	if !strings.Contains(errb.String(), "targets[2]") {
		t.Errorf("no note about the cidrs-only rule's names: %q", errb.String())
	}
	// Without -hosts: the line for every host, as before.
	out.Reset()
	run([]string{"ca", "-state", state, "-config", cfg}, &out, &errb)
	if !strings.HasPrefix(out.String(), "@cert-authority * ") {
		t.Errorf("ca printed %q", out.String())
	}
}

// TestAdminCommandLines: gomux kill takes a connection id or -person,
// not both and not neither; sessions takes -json and no argument.
func TestAdminCommandLines(t *testing.T) {
	for _, c := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"sessions"}, true},
		{[]string{"sessions", "-json", "-state", "/x"}, true},
		{[]string{"sessions", "abc"}, false},
		{[]string{"kill", "1a2b3c4d"}, true},
		{[]string{"kill", "-person", "alice"}, true},
		{[]string{"kill"}, false},
		{[]string{"kill", "-person", "alice", "1a2b3c4d"}, false},
		{[]string{"kill", "a", "b"}, false},
	} {
		inv, _, ok := parseArgs(c.args, io.Discard, io.Discard)
		if ok != c.ok {
			t.Errorf("%v: ok %v, want %v", c.args, ok, c.ok)
		}
		if ok && c.args[0] == "kill" && inv.target == "" && inv.person == "" {
			t.Errorf("%v: nothing to kill", c.args)
		}
	}
}

// TestSessionsTable: one row per thing held, the connection's columns on
// its first row, the running command and readable byte counts.
func TestSessionsTable(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	conns := []proxy.ConnInfo{{ID: "1a2b3c4d", Person: "alice", Source: "192.0.2.7:5555", Since: since, Holds: []proxy.HeldInfo{
		{Target: "web1:22", RemoteUser: "deploy", Mode: "accelerate", Running: []string{"sleep 300", "sftp"}, BytesIn: 512, BytesOut: 3 << 20},
		{Target: "db1:5432", Mode: "forward", BytesIn: 1536},
	}}, {ID: "9f8e7d6c", Person: "bob", Source: "192.0.2.8:4444", Since: since}}
	var b strings.Builder
	writeSessions(&b, conns, since.Add(90*time.Second))
	rows := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(rows) != 4 {
		t.Fatalf("rows:\n%s", b.String())
	}
	for i, want := range [][]string{
		{"ID", "PERSON", "RUNNING"},
		{"1a2b3c4d", "alice", "192.0.2.7:5555", "(1m30s)", "web1:22", "deploy", "accelerate", "512B", "3.0MiB", "sleep 300; sftp"},
		{"db1:5432", "forward", "1.5KiB", "0B"},
		{"9f8e7d6c", "bob", "192.0.2.8:4444"},
	} {
		for _, w := range want {
			if !strings.Contains(rows[i], w) {
				t.Errorf("row %d %q lacks %q", i, rows[i], w)
			}
		}
	}
	if strings.Contains(rows[2], "alice") {
		t.Errorf("the connection's columns repeat: %q", rows[2])
	}
}

// TestSessionsTableEscapesClientText: a command line a client chose
// cannot forge rows or send escape sequences to the operator's terminal.
func TestSessionsTableEscapesClientText(t *testing.T) {
	for in, want := range map[string]string{
		"sleep 1":                 "sleep 1",
		"x\x1b[2J\r\nFORGED\tROW": `x\x1b[2J\r\nFORGED\tROW`,
		strings.Repeat("a", 200):  strings.Repeat("a", maxRunningText) + "…",
		"ünï cødé ✓":              "ünï cødé ✓",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestWatchFileComparesWithWhatRuns: a file edited between the start's
// read and the watcher's first poll is applied once it settles: the
// watcher compares with the content in force, not with its own first
// read.
func TestWatchFileComparesWithWhatRuns(t *testing.T) {
	p := filepath.Join(t.TempDir(), "gomux.yaml")
	os.WriteFile(p, []byte("edited"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan []byte)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchFile(ctx, p, []byte("as loaded"), 10*time.Millisecond, changed)
	}()
	defer func() { cancel(); <-done }()
	select {
	case b := <-changed:
		if string(b) != "edited" {
			t.Fatalf("watcher sent %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an edit made before the watcher started was never applied")
	}
}
