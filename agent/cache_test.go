package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCleanCache runs CleanCache from a copy of this test binary placed
// in a cache directory as the launcher runs the agent: entries older than
// the age go, the running agent (however old), fresh entries, names the
// cache does not use, symbolic links and what they point to, and
// directories stay; the running agent's mtime is now.
func TestCleanCache(t *testing.T) {
	if os.Getenv("GOMUX_CLEAN_CACHE_EXE") != "" {
		return
	}
	home := t.TempDir()
	dir := filepath.Join(home, ".cache", "gomux")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "blobs"), 0o700))
	hex := func(c string) string { return strings.Repeat(c, 64) }
	self := filepath.Join(dir, "agent-"+hex("a"))
	data, err := os.ReadFile(os.Args[0])
	must(err)
	must(os.WriteFile(self, data, 0o700))
	outside := filepath.Join(home, "precious")
	old, fresh := time.Now().Add(-40*24*time.Hour), time.Now().Add(-2*24*time.Hour)
	files := map[string]time.Time{
		"agent-" + hex("b"):             old,   // removed
		"agent-" + hex("c"):             fresh, // kept
		".agent-" + hex("d") + ".123":   old,   // removed
		"agent-" + hex("e") + ".bak":    old,   // not a cache name: kept
		"notes":                         old,   // kept
		"blobs/" + hex("1"):             old,   // removed
		"blobs/" + hex("2"):             fresh, // kept
		"blobs/" + hex("3") + ".77.tmp": old,   // removed
		"blobs/readme":                  old,   // kept
		"../precious":                   old,   // outside: kept
		"agent-" + hex("f") + "/x":      old,   // inside a directory of an agent's name: kept
	}
	for name, mt := range files {
		p := filepath.Join(dir, name)
		must(os.MkdirAll(filepath.Dir(p), 0o700))
		must(os.WriteFile(p, []byte(name), 0o600))
		must(os.Chtimes(p, mt, mt))
	}
	must(os.Chtimes(filepath.Join(dir, "agent-"+hex("f")), old, old))
	// Symbolic links of cache names, pointing outside: neither the link
	// nor its target goes.
	must(os.Symlink(outside, filepath.Join(dir, "agent-"+hex("9"))))
	must(os.Symlink(outside, filepath.Join(dir, "blobs", hex("8"))))
	for _, l := range []string{"agent-" + hex("9"), "blobs/" + hex("8")} {
		must(exec.Command("touch", "-h", "-d", "40 days ago", filepath.Join(dir, l)).Run())
	}
	must(os.Chtimes(self, old, old))

	// The agent runs from the cache: CleanCache checks that its file is
	// the running binary, so run the copy.
	cmd := exec.Command(self, "-test.run", "^TestCleanCacheChild$", "-test.v")
	cmd.Env = append(os.Environ(), "GOMUX_CLEAN_CACHE_EXE="+self)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var left []string
	filepath.Walk(home, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != home {
			rel, _ := filepath.Rel(dir, p)
			left = append(left, rel)
		}
		return nil
	})
	for name := range files {
		gone := strings.HasPrefix(name, "agent-"+hex("b")) || strings.HasPrefix(name, ".agent-") ||
			name == "blobs/"+hex("1") || strings.HasSuffix(name, ".77.tmp")
		if slices.Contains(left, name) == gone {
			t.Errorf("%s: removed %v, want %v; left %v\n%s", name, !slices.Contains(left, name), gone, left, out)
		}
	}
	for _, keep := range []string{"agent-" + hex("a"), "agent-" + hex("9"), "blobs/" + hex("8")} {
		if !slices.Contains(left, keep) {
			t.Errorf("%s removed", keep)
		}
	}
	if fi, err := os.Stat(self); err != nil || time.Since(fi.ModTime()) > time.Hour {
		t.Errorf("the running agent was not marked used: %v %v", fi, err)
	}
}

// TestCleanCacheChild is TestCleanCache's agent, run from the cache.
func TestCleanCacheChild(t *testing.T) {
	exe := os.Getenv("GOMUX_CLEAN_CACHE_EXE")
	if exe == "" {
		t.Skip("run by TestCleanCache")
	}
	res, err := CleanCache(exe, 30*24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("removed %v from %s", res.Removed, res.Dir)
	if res, _ := CleanCache(exe, 0, time.Now()); res.Dir != "" || res.Removed != nil {
		t.Errorf("an age of 0 cleaned: %+v", res)
	}
	if res, _ := CleanCache("/usr/bin/gomux-agent", 30*24*time.Hour, time.Now()); res.Dir != "" {
		t.Errorf("an agent outside a cache cleaned: %+v", res)
	}
}
