package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
	"github.com/gomux/gomux/proxy/upstream"
)

// oldRelease is the commit the upgrade test builds when no release tag
// is reachable in the clone: v0.1.0 in CHANGELOG.md.
const oldRelease = "9d686e18fd7f3d55985866f89aca7d45396ca2cc"

// buildOldGomux builds the last release before HEAD from the repository's
// own history (the newest v* tag reachable from HEAD's parent, else
// oldRelease) into a temp dir, as the Makefile builds a release (make
// agents, then gomux with the agents embedded), under the version
// "old-<commit>". It skips where the source is not a git checkout.
func buildOldGomux(t *testing.T) (bin, version string) {
	t.Helper()
	root := repoRoot()
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", append([]string{"-C", root}, args...)...).Output()
		return strings.TrimSpace(string(out)), err
	}
	if _, err := git("rev-parse", "--git-dir"); err != nil {
		t.Skip("not a git checkout: the upgrade test builds an older gomux from the history")
	}
	ref, err := git("describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", "HEAD^")
	if err != nil {
		ref = oldRelease
	}
	commit, err := git("rev-parse", "--verify", ref+"^{commit}")
	if err != nil {
		t.Fatalf("%s is not in this clone (a shallow clone? git fetch --unshallow): %v", ref, err)
	}
	version = "old-" + commit[:7]
	dir := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh", root, commit, dir)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", ref, err, out)
	}
	bin = filepath.Join(dir, "gomux-"+version)
	for _, c := range [][]string{
		{"make", "-s", "agents", "VERSION=" + version},
		{"go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=" + version, "-o", bin, "./cmd/gomux"},
	} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s (%s): %v\n%s", ref, strings.Join(c, " "), err, out)
		}
	}
	t.Logf("built %s (%s) as %s", ref, commit[:12], version)
	return bin, version
}

// timeline collects what happened when, for the test's log.
type timeline struct {
	start time.Time
	lines []string
}

func (tl *timeline) add(format string, args ...any) {
	tl.lines = append(tl.lines, fmt.Sprintf("%7.1fs  ", time.Since(tl.start).Seconds())+fmt.Sprintf(format, args...))
}

// TestOpsUpgrade is a rolling upgrade: the last release (built from the
// history) and the working tree's gomux run side by side behind haproxy
// against the same targets, and the old one is drained with SIGTERM
// mid-play. Every task finishes (the recap is the direct run's), both
// versions' agents ran from the same target cache (an agent_start of
// each version, two agent binaries there), and the next agent start
// after they have gone unused for limits.agent_cache_days removes the
// old agent and old blobs, and nothing else.
func TestOpsUpgrade(t *testing.T) {
	if os.Getenv("GOMUX_SOAK") == "" {
		t.Skip("minutes long (it builds an older gomux): run by make soak (GOMUX_SOAK=1)")
	}
	tl := &timeline{start: time.Now()}
	oldBin, oldVersion := buildOldGomux(t)
	tl.add("built the old release %s", oldVersion)
	lab := harness.Start(t, harness.Options{Targets: 2})
	// Rules both versions read (no forward rule: the old one predates it).
	rules := fmt.Sprintf("  - hosts: [%q, %q]\n    remote_users: [\"*\"]\n", lab.Targets[0].Addr, lab.Targets[1].Addr)
	old, cur := replicaPair(t, lab, gomuxOptions{Binary: oldBin, Targets: rules}, gomuxOptions{Targets: rules})
	h := startHAProxy(t, old.Addr, cur.Addr)
	tl.add("old gomux on %s, new on %s, haproxy on :%d in front of both", old.Addr, cur.Addr, h.Port)
	ctx := ctxT(t, 20*time.Minute)
	env := []string{"ANSIBLE_SSH_ARGS=-o ControlMaster=no -o ControlPersist=no", "ANSIBLE_PIPELINING=False"}
	direct := runPlaybookOpts(ctx, t, lab, nil, playbookPath("seed.yml"), playOpts{env: env})
	if direct.Err != nil || len(direct.Recap) != len(lab.Targets) {
		t.Fatalf("direct run: %v\n%s", direct.Err, direct.Output)
	}
	tl.add("direct run done (%v)", direct.Wall.Round(time.Millisecond))
	via, served := playAndDrain(ctx, t, lab, old, cur, playOpts{env: env, sshConfig: h.sshConfig(t, lab, old.KnownHosts, "")})
	if via.Err != nil || via.recapString() != direct.recapString() {
		t.Fatalf("rolling upgrade mid-play:\n%s\nwant:\n%s\n%s", via.recapString(), direct.recapString(), via.Output)
	}
	var events []string
	drainedAt := ""
	for _, e := range old.Events(proxy.EventShutdown) {
		if e["message"] == "draining" {
			drainedAt = fmt.Sprint(e["time"])
			events = append(events, fmt.Sprintf("%s: SIGTERM: the old gomux drains", drainedAt))
		}
	}
	for i, g := range []*Gomux{old, cur} {
		ran := false
		for _, e := range g.Events(upstream.EventAgentStart) {
			events = append(events, fmt.Sprintf("%s: agent_start by the %s gomux on %v, agent %v, uploaded %v",
				e["time"], []string{"old", "new"}[i], e["target"], e["agent_version"], e["uploaded"]))
			ran = ran || fmt.Sprint(e["time"]) <= drainedAt
		}
		if !ran {
			t.Errorf("the %s gomux started no agent before the old one drained at %s: the versions did not run side by side", []string{"old", "new"}[i], drainedAt)
		}
	}
	sort.Strings(events)
	for _, e := range events {
		tl.add("%s", e)
	}
	tl.add("play done through the upgrade (%v): recap as direct; the new gomux served %d inner sessions after the drain", via.Wall.Round(time.Millisecond), served)
	oldAgents, curAgents := agentVersions(old), agentVersions(cur)
	if !slices.Contains(oldAgents, oldVersion) || len(curAgents) == 0 || slices.Contains(curAgents, oldVersion) {
		t.Errorf("agent versions started: %v by the old gomux, %v by the new; want %s and another", oldAgents, curAgents, oldVersion)
	}
	cache := filepath.Join(lab.Home, ".cache", "gomux")
	agents := cachedAgents(t, cache)
	if len(agents) != 2 {
		t.Errorf("target cache holds agents %v; want the old and the new one", agents)
	}
	tl.add("target cache %s holds %d agents: %v", cache, len(agents), agents)
	cur.Stop()
	checkCacheCleanup(t, lab, tl, agents)
	t.Logf("timeline:\n%s", strings.Join(tl.lines, "\n"))
}

// agentVersions are the agent versions in g's agent_start events.
func agentVersions(g *Gomux) []string {
	var out []string
	for _, e := range g.Events(upstream.EventAgentStart) {
		if v, ok := e["agent_version"].(string); ok && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// cachedAgents lists the agent binaries in a target's agent cache.
func cachedAgents(t *testing.T, cache string) []string {
	t.Helper()
	ents, err := os.ReadDir(cache)
	must(t, err)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "agent-") && e.Type().IsRegular() {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// checkCacheCleanup ages the target cache as if both gomux versions had
// been gone for 25 days, adds what must survive, and starts the agent
// once more from a gomux with limits.agent_cache_days 20: the old agent
// and the aged blobs are removed, the agent being started (aged too), a
// blob used 5 days ago, a symbolic link of an agent's name and the file
// it points to outside the cache, and a file of another name stay.
func checkCacheCleanup(t *testing.T, lab *harness.Lab, tl *timeline, agents []string) {
	t.Helper()
	cache := filepath.Join(lab.Home, ".cache", "gomux")
	uid, gid := lookupIDs(t, lab.User)
	blobs, _ := filepath.Glob(filepath.Join(cache, "blobs", "*"))
	if len(blobs) == 0 {
		t.Fatalf("no blobs cached on the target after the play")
	}
	touch := func(age, p string) {
		if out, err := exec.Command("touch", "-h", "-d", age+" days ago", p).CombinedOutput(); err != nil {
			t.Fatalf("touch %s: %v %s", p, err, out)
		}
	}
	create := func(p, content string) {
		must(t, os.WriteFile(p, []byte(content), 0o600))
		must(t, os.Chown(p, uid, gid))
	}
	for _, p := range blobs {
		touch("25", p)
	}
	for _, a := range agents {
		touch("25", filepath.Join(cache, a))
	}
	recent := filepath.Join(cache, "blobs", strings.Repeat("5", 64))
	create(recent, "used 5 days ago")
	touch("5", recent)
	outside := filepath.Join(lab.Home, "not-in-cache")
	create(outside, "outside")
	touch("25", outside)
	link := filepath.Join(cache, "agent-"+strings.Repeat("1", 64))
	must(t, os.Symlink(outside, link))
	must(t, os.Lchown(link, uid, gid))
	touch("25", link)
	other := filepath.Join(cache, "notes")
	create(other, "not a cache name")
	touch("25", other)
	tl.add("aged the cache 25 days; added a 5-day-old blob, a symlink agent-111... to %s, and notes", outside)

	g := startGomux(t, lab, gomuxOptions{Limits: "  agent_cache_days: 20\n"})
	ctx := ctxT(t, 3*time.Minute)
	if r := runCmd(g.SSH(ctx, lab.Targets[0].Addr, "echo after-cleanup"), nil); r.Code != 0 || r.Stdout != "after-cleanup\n" {
		t.Fatalf("ssh after the upgrade: %+v", r)
	}
	g.Stop()
	started := ""
	for _, e := range g.Events(upstream.EventAgentStart) {
		started = fmt.Sprint(e["agent_version"])
		if e["uploaded"] == true {
			t.Errorf("the new agent was uploaded again: the cleanup removed the agent being started")
		}
	}
	for _, e := range g.Events(upstream.EventAgentExit) {
		tl.add("agent_exit stderr: %v", e["agent_stderr"])
	}
	left := cachedAgents(t, cache)
	leftBlobs, _ := filepath.Glob(filepath.Join(cache, "blobs", "*"))
	tl.add("agent %s started with agent_cache_days 20; cache now holds agents %v and %d blobs", started, left, len(leftBlobs))
	if len(left) != 1 || !slices.Contains(agents, left[0]) {
		t.Fatalf("agents left %v; want only the new one of %v", left, agents)
	}
	if len(leftBlobs) != 1 || leftBlobs[0] != recent {
		t.Errorf("blobs left %v; want only %s", leftBlobs, recent)
	}
	for _, p := range []string{link, outside, other} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(cache, left[0])); err != nil || time.Since(fi.ModTime()) > time.Hour {
		t.Errorf("the started agent was not marked used: %v %v", fi, err)
	}
}
