package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
	"github.com/gomux/gomux/proxy/upstream"
)

// TestBecomeUnsafeAgentCache: the login user's agent cache made writable
// by others (chmod 777 ~/.cache/gomux, as a careless user or a hostile
// group member might leave it) is not trusted: the launcher refuses to run
// from it, gomux logs agent_cache_unsafe, and the upload replaces the
// directory with a fresh 0700 one (dropping what others put there) before
// the agent runs. Tasks, become ones included, give stock results.
func TestBecomeUnsafeAgentCache(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	dir := t.TempDir()
	g1 := startGomux(t, lab, gomuxOptions{Upstream: "  warm_python: true\n  warm_python_idle: 15s\n"})
	sameAsDirect(t, lab, g1, becomePlay(t, dir, "login", "", 1), "ANSIBLE_PIPELINING=True")
	g1.Stop()

	cache := filepath.Join(lab.Home, ".cache", "gomux")
	must(t, os.Chmod(cache, 0o777))
	planted := filepath.Join(cache, "left-by-someone-else")
	must(t, os.WriteFile(planted, []byte("x"), 0o666))

	g2 := startGomux(t, lab, gomuxOptions{Upstream: "  warm_python: true\n  warm_python_idle: 15s\n"})
	sameAsDirect(t, lab, g2, becomePlay(t, dir, "mixed-login", "", 1), "ANSIBLE_PIPELINING=True")
	sameAsDirect(t, lab, g2, becomePlay(t, dir, "mixed-root", "root", 1), "ANSIBLE_PIPELINING=True")
	ev := g2.Events(upstream.EventAgentCacheUnsafe)
	if len(ev) != 1 || !strings.Contains(ev[0]["reason"].(string), "writable by others") {
		t.Fatalf("agent_cache_unsafe events %v\n%s", ev, g2.Log())
	}
	if len(g2.Events(upstream.EventAgentUpload)) != 1 || len(g2.Events(upstream.EventAgentFallback)) != 0 {
		t.Fatalf("want one upload and no fallback:\n%s", g2.Log())
	}
	st, err := os.Lstat(cache)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("cache after the upload: %v %v", st, err)
	}
	if _, err := os.Lstat(planted); err == nil {
		t.Fatalf("the upload kept a file from the open cache")
	}
	warm := 0
	for _, e := range g2.Events(proxy.EventChannel) {
		if e["warm"] == true {
			warm++
		}
	}
	if warm == 0 {
		t.Fatalf("no task ran warm with the replaced cache")
	}
}

// TestShimCorruptBlobCache: the module archive parts the agent caches by
// SHA-256 are corrupted on the target between tasks (gomux still believes
// the agent holds them). The agent hashes each cached part again when a
// task uses it, treats the mismatch as a miss and logs it; gomux resends;
// the task's result is stock and the cache holds the right bytes again.
func TestShimCorruptBlobCache(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	dir := t.TempDir()
	g := startGomux(t, lab, gomuxOptions{})
	p := becomePlay(t, dir, "blobs", "", 1)
	sameAsDirect(t, lab, g, p, "ANSIBLE_PIPELINING=False")
	blobs, _ := filepath.Glob(filepath.Join(lab.Home, ".cache", "gomux", "blobs", "*"))
	if len(blobs) == 0 {
		t.Fatalf("no blobs cached on the target")
	}
	for _, b := range blobs {
		data, err := os.ReadFile(b)
		must(t, err)
		if len(data) == 0 {
			continue
		}
		data[len(data)/2] ^= 0x55
		must(t, os.WriteFile(b, data, 0o600))
	}
	sameAsDirect(t, lab, g, p, "ANSIBLE_PIPELINING=False")
	// Parts the second run used (the module archives) hold the right
	// bytes again; parts only the first run had (its own arguments) stay
	// as they were, unused.
	repaired := 0
	for _, b := range blobs {
		data, err := os.ReadFile(b)
		if err != nil {
			continue
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) == filepath.Base(b) {
			repaired++
		}
	}
	g.Stop()
	mismatches := strings.Count(g.Log(), "blob_mismatch")
	if repaired == 0 || mismatches < repaired {
		t.Fatalf("%d of %d corrupt blobs repaired, %d logged mismatches:\n%s", repaired, len(blobs), mismatches, g.Log())
	}
	t.Logf("%d of %d corrupt blobs repaired, %d logged mismatches", repaired, len(blobs), mismatches)
}
