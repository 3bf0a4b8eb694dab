package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// TestDifferential is the rule "what Ansible observes is exactly what it
// would observe without gomux", checked task by task: the corpus in
// testdata/differential (commands, shell, raw, facts, copy, template,
// file, stat, lineinfile, fetch, slurp, every become path (sudo, sudo with
// a password, su with a password), async, failures, check and diff mode,
// loops, stderr, timeouts, script, copy with backup, environment, no_log,
// a remote_tmp of the task's own and remote_tmps that cannot be made,
// uploads and fetches by scp and piped dd, the terminal's modes, limits,
// signal dispositions, exit by a signal) runs directly and through gomux,
// with pipelining off and on, and every task's normalized result, every
// file it leaves on the target and every byte it fetches must be the same.
// gomux runs with warm Python on unless GOMUX_DIFF_WARM=false.
// GOMUX_DIFF_CORPUS=extra.yml (make soak) runs the second corpus:
// unarchive (from the controller, remote_src, as another user), assemble,
// replace, blockinfile, find, tempfile, get_url from file://, copy of a
// tree remote_src, with validate, of 10 MB (also as another user, by scp
// and piped), fetch without flat and with become, template validate,
// interpreter discovery and a missing interpreter, become_flags, a wrong
// su password, raw with become, async with become_user, meta:
// reset_connection, wait_for_connection, wait_for, non-UTF-8 output, a
// megabyte line, 100,000 lines, commands left waiting on stdin, background
// processes, getent, known_hosts, hard links, recursive modes, exit 255, 2
// MB of stdin, sudo -i and -E, /usr/bin/env python3, dash, full facts
// with local facts.
func TestDifferential(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1, PasswordSudoUser: true})
	// GOMUX_DIFF_WARM=false runs gomux with warm Python off, the other
	// half of the four gomux modes (warm or cold, pipelining on or off).
	var opts gomuxOptions
	switch w := os.Getenv("GOMUX_DIFF_WARM"); w {
	case "", "true":
	case "false":
		opts.Upstream = "  warm_python: false\n"
	default:
		t.Fatalf("GOMUX_DIFF_WARM=%q: want true or false", w)
	}
	// GOMUX_DIFF_CORPUS names another playbook in testdata/differential
	// (make soak runs extra.yml; a person exploring runs their own).
	corpus := os.Getenv("GOMUX_DIFF_CORPUS")
	if corpus == "" {
		corpus = "corpus.yml"
	}
	if filepath.Base(corpus) != corpus {
		t.Fatalf("GOMUX_DIFF_CORPUS=%q: want a file name in testdata/differential", corpus)
	}
	g := startGomux(t, lab, opts)
	// About 2 minutes per pair on 2 cores; generous, for a soak's many.
	ctx := ctxT(t, time.Duration(repeatRuns(1))*20*time.Minute)

	// Everything the runs write on the target lives under base, one
	// directory per run; the lab's users all reach it.
	tok := make([]byte, 4)
	rand.Read(tok)
	base := filepath.Join(os.TempDir(), "gmxdiff-"+hex.EncodeToString(tok))
	must(t, os.Mkdir(base, 0o755))
	must(t, os.Chmod(base, 0o1777))
	t.Cleanup(func() { os.RemoveAll(base) })
	// Stock Ansible leaves temp dirs in /var/tmp (an async task run as
	// another user, a killed task, ANSIBLE_KEEP_REMOTE_FILES); the lab's
	// users are deleted after the test and their uids reused, so a later
	// test would find them as its own. Remove those of this lab's users,
	// while the users still exist (cleanups run last first).
	t.Cleanup(func() { removeVarTmpOf(t, lab.User, lab.OtherUser, lab.PasswordUser) })
	ctl := t.TempDir()
	bin := writeRandomFile(t, ctl, "binary.bin", 70_000)
	// For extra.yml: a file larger than the shim stages in memory
	// (shim.MaxStagedFile), and a tar.gz made here with a
	// directory, modes, a symlink and a unicode name, for unarchive.
	big := writeRandomFile(t, ctl, "big.bin", 10<<20)
	targz := writeTarGz(t, ctl, "archive.tar.gz")

	defer func() {
		if corpus != "corpus.yml" {
			return // another corpus need not use every step
		}
		// The runs through gomux went through the shim, not around it.
		steps := map[string]int{}
		for _, e := range g.Events(proxy.EventChannel) {
			if st, ok := e["step"].(string); ok {
				steps[st]++
			}
		}
		for _, want := range []string{"Run", "MakeTemp", "Chmod", "Setfacl", "Remove", "EchoHome", "Passthrough"} {
			if steps[want] == 0 {
				t.Errorf("no %s step served through gomux (steps: %v)", want, steps)
			}
		}
		t.Logf("steps served through gomux: %v", steps)
	}()
	// runCorpus runs the corpus once, directly (via nil) or through
	// gomux; label tells repeated runs apart.
	runCorpus := func(via *Gomux, pipelining, label string) corpusRun {
		name := "direct"
		if via != nil {
			name = "gomux"
		}
		name += "-pipelining-" + strings.ToLower(pipelining)
		if label != "" {
			name += "-" + label
		}
		fetch := filepath.Join(ctl, "fetch-"+name)
		must(t, os.Mkdir(fetch, 0o755))
		results := filepath.Join(ctl, "results-"+name+".jsonl")
		tempBefore := tempEntries(lab)
		r := runPlaybook(ctx, t, lab, via, playbookPath(filepath.Join("differential", corpus)),
			"ANSIBLE_PIPELINING="+pipelining,
			"ANSIBLE_CALLBACK_PLUGINS="+playbookPath("differential/callback_plugins"),
			"ANSIBLE_CALLBACKS_ENABLED=record",
			"GOMUX_DIFF_RESULTS="+results,
			"GOMUX_DIFF_RUN="+name,
			"GOMUX_DIFF_BASE="+base,
			"GOMUX_DIFF_FETCH="+fetch,
			"GOMUX_DIFF_BIN="+bin,
			"GOMUX_DIFF_BIG="+big,
			"GOMUX_DIFF_TARGZ="+targz,
			"GOMUX_DIFF_OTHER="+lab.OtherUser,
			"GOMUX_DIFF_PWUSER="+lab.PasswordUser,
			"GOMUX_DIFF_PASSWORD="+lab.Password,
		)
		n := normalizer{
			runs: []string{filepath.Join(base, name), name},
			dirs: map[string]string{fetch: "<FETCH>", ctl: "<CONTROLLER>", bin: "<BIN>", big: "<BIG>", targz: "<TARGZ>"},
		}
		run := corpusRun{
			name:    name,
			play:    r,
			results: n.results(t, results),
			files:   n.lines(listTree(t, filepath.Join(base, name))),
			fetched: n.lines(listTree(t, fetch)),
			norm:    n,
			before:  tempBefore,
		}
		if dump := os.Getenv("GOMUX_DIFF_DUMP"); dump != "" {
			// For a person reading what the corpus observes.
			b, err := json.MarshalIndent(run.results, "", "  ")
			must(t, err)
			must(t, os.WriteFile(filepath.Join(dump, name+".json"), b, 0o644))
		}
		t.Logf("%s: %d task results in %v, recap %s; slowest: %s", name, len(run.results), r.Wall.Round(time.Millisecond),
			strings.TrimSpace(r.recapString()), slowest(run.results, 5))
		return run
	}
	// The main corpus has more than 30 tasks: fewer results means it
	// stopped early. Another corpus need only have run at all.
	minResults := 30
	if corpus != "corpus.yml" {
		minResults = 1
	}
	// compare returns every difference between a direct run and one
	// through gomux, and whether gomux's own run failed (the playbook
	// erred or a host was unreachable), which no rerun may excuse.
	compare := func(direct, via corpusRun, pipelining string) (problems []string, gomuxFailed bool) {
		if direct.play.Err != nil || len(direct.results) < minResults {
			t.Fatalf("%s: the corpus itself fails (%v, %d results):\n%s", direct.name, direct.play.Err, len(direct.results), direct.play.Output)
		}
		if via.play.Err != nil {
			gomuxFailed = true
			problems = append(problems, fmt.Sprintf("%s: %v\n%s", via.name, via.play.Err, via.play.Output))
		}
		for i, r := range via.results {
			// A task stock Ansible also found unreachable (a remote_tmp
			// that cannot be made, with ignore_unreachable) is compared
			// like any other result.
			if r.Status == "unreachable" && (i >= len(direct.results) || direct.results[i].Status != "unreachable") {
				gomuxFailed = true
				problems = append(problems, fmt.Sprintf("%s: task %q unreachable through gomux: %v", via.name, r.Task, r.Result))
			}
		}
		if d := diffResults(direct.results, via.results); d != "" {
			problems = append(problems, fmt.Sprintf("task results differ, %s (-) vs %s (+):\n%s", direct.name, via.name, d))
		}
		if d := diffLines(direct.files, via.files); d != "" {
			problems = append(problems, fmt.Sprintf("files on the target differ, %s (-) vs %s (+):\n%s", direct.name, via.name, d))
		}
		if d := diffLines(direct.fetched, via.fetched); d != "" {
			problems = append(problems, fmt.Sprintf("fetched files differ, %s (-) vs %s (+):\n%s", direct.name, via.name, d))
		}
		// Temp dirs Ansible left (a task killed by its timeout leaves its
		// own): the same ones must be left. gomux removes finished temp
		// dirs after answering, so wait for that to settle.
		var left, viaLeft []string
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			now := tempEntries(lab)
			stillThere := map[string]bool{}
			for p := range via.before {
				if now[p] {
					stillThere[p] = true
				}
			}
			left = direct.norm.newTempEntries(direct.before, stillThere)
			viaLeft = via.norm.newTempEntries(via.before, now)
			if diffLines(left, viaLeft) == "" || time.Now().After(deadline) {
				break
			}
		}
		t.Logf("pipelining=%s: temp entries left by the direct run: %v", pipelining, left)
		if d := diffLines(left, viaLeft); d != "" {
			problems = append(problems, fmt.Sprintf("temp files left on the target differ, %s (-) vs %s (+):\n%s", direct.name, via.name, d))
		}
		return problems, gomuxFailed
	}
	comparePair := func(pipelining, label string) ([]string, bool) {
		direct := runCorpus(nil, pipelining, label)
		return compare(direct, runCorpus(g, pipelining, label), pipelining)
	}
	// GOMUX_REPEAT_RUNS repeats every pair (make soak); reruns are
	// counted, so a soak shows whether any was needed.
	reps, reruns := repeatRuns(1), 0
	modes := []string{"False", "True"}
	if m := os.Getenv("GOMUX_DIFF_PIPELINING"); m != "" {
		modes = strings.Split(m, ",") // a soak of one mode
	}
	for _, pipelining := range modes {
		for rep := range reps {
			label := ""
			if reps > 1 {
				label = fmt.Sprintf("rep%d", rep+1)
			}
			// Stock Ansible itself is not deterministic everywhere (an
			// async job polled as it finishes can report empty output and
			// leave its poll's temp dir), so a pair whose results differ
			// runs once more, and only a difference that comes back fails.
			// A pair in which gomux's own run failed is never run again:
			// that is a failure.
			problems, gomuxFailed := comparePair(pipelining, label)
			if len(problems) > 0 && !gomuxFailed {
				reruns++
				t.Logf("pipelining=%s %s: the pair differed; running it again:\n%s", pipelining, label, strings.Join(problems, "\n"))
				problems, _ = comparePair(pipelining, label+"again")
			}
			for _, p := range problems {
				t.Error(p)
			}
		}
	}
	t.Logf("%d pairs per pipelining mode, %d reruns", reps, reruns)
}

// removeVarTmpOf removes Ansible's temp dirs in /var/tmp owned by users.
func removeVarTmpOf(t *testing.T, users ...string) {
	uids := map[uint32]bool{}
	for _, name := range users {
		if name == "" {
			continue
		}
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		id, err := strconv.ParseUint(u.Uid, 10, 32)
		if err == nil {
			uids[uint32(id)] = true
		}
	}
	dirs, _ := filepath.Glob("/var/tmp/ansible-tmp-*")
	for _, d := range dirs {
		fi, err := os.Lstat(d)
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && uids[st.Uid] {
			if err := os.RemoveAll(d); err != nil {
				t.Logf("remove %s: %v", d, err)
			}
		}
	}
}

// slowest names the n slowest tasks, for the log.
func slowest(rs []taskResult, n int) string {
	rs = append([]taskResult(nil), rs...)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Seconds > rs[j].Seconds })
	var out []string
	for _, r := range rs[:min(n, len(rs))] {
		out = append(out, fmt.Sprintf("%q %.1fs", r.Task, r.Seconds))
	}
	return strings.Join(out, ", ")
}

// corpusRun is one run of the corpus, normalized.
type corpusRun struct {
	name    string
	play    playbookRun
	results []taskResult
	files   []string
	fetched []string
	norm    normalizer
	// before are the temp entries on the target before the run.
	before map[string]bool
}

// tempEntries lists Ansible's temp dirs of the lab's users and what is in
// them, by full path.
func tempEntries(lab *harness.Lab) map[string]bool {
	var globs []string
	for _, u := range []string{lab.User, lab.OtherUser, lab.PasswordUser} {
		globs = append(globs, filepath.Join("/home", u, ".ansible/tmp/ansible-tmp-*"))
	}
	globs = append(globs, "/var/tmp/ansible-tmp-*")
	out := map[string]bool{}
	for _, g := range globs {
		dirs, _ := filepath.Glob(g)
		for _, d := range dirs {
			out[d] = true
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				out[filepath.Join(d, e.Name())] = true
			}
		}
	}
	return out
}

// newTempEntries are the normalized entries in after and not in before.
func (n normalizer) newTempEntries(before, after map[string]bool) []string {
	var out []string
	for p := range after {
		if !before[p] {
			out = append(out, n.str(p))
		}
	}
	sort.Strings(out)
	return out
}

// taskResult is one line of the record callback: a task's result on one
// host, as Ansible saw it.
type taskResult struct {
	Task   string         `json:"task"`
	Host   string         `json:"host"`
	Status string         `json:"status"`
	Result map[string]any `json:"result"`
	// Seconds the task took, for the log; not compared.
	Seconds float64 `json:"seconds"`
}

// normalizer removes from results what legitimately differs between any
// two runs, gomux or not: times, temp and job names, the run's own
// directories, source ports. Everything else must be equal.
type normalizer struct {
	// runs are strings naming this run (its directory, its name), longest
	// first.
	runs []string
	// dirs are controller paths of this run and what they become.
	dirs map[string]string
}

// timeKeys are result fields that are clocks or durations.
var timeKeys = map[string]bool{
	"start": true, "end": true, "delta": true,
	"mtime": true, "atime": true, "ctime": true,
	// How many async_status polls it took depends on timing.
	"attempts": true,
}

var volatile = []struct {
	re   *regexp.Regexp
	with string
}{
	// Backup files (copy, lineinfile... backup: yes): the target's pid
	// and clock.
	{regexp.MustCompile(`\.[0-9]+\.[0-9]{4}-[0-9]{2}-[0-9]{2}@[0-9]{2}:[0-9]{2}:[0-9]{2}~`), ".<PID>.<DATE>~"},
	// A module's own temp dir (get_url, pipelined).
	{regexp.MustCompile(`ansible-moduletmp-[0-9]+(\.[0-9]+)?-[a-z0-9_]+`), "ansible-moduletmp-<ID>"},
	// tempfile's names.
	{regexp.MustCompile(`ansible\.[A-Za-z0-9_]{8}`), "ansible.<RANDOM>"},
	// Ansible's temp dirs on the target and the controller, Python's
	// temp names, module payload dirs.
	{regexp.MustCompile(`ansible-tmp-[0-9]+(\.[0-9]+)?-[0-9]+-[0-9]+`), "ansible-tmp-<ID>"},
	{regexp.MustCompile(`[^\s"']*/ansible-local-[0-9]+[A-Za-z0-9_]+`), "<LOCAL_TEMP>"},
	{regexp.MustCompile(`ansible_[A-Za-z0-9_]+_payload_[A-Za-z0-9_]+`), "ansible_<MODULE>_payload_<ID>"},
	{regexp.MustCompile(`tmp[a-z0-9_]{8}`), "tmp<RANDOM>"},
	// Async job ids.
	{regexp.MustCompile(`j?[0-9]{6,}\.[0-9]+`), "<JOB>"},
	// Pseudo-terminal numbers, source ports in SSH_CLIENT/SSH_CONNECTION.
	{regexp.MustCompile(`^/dev/pts/[0-9]+$`), "/dev/pts/<N>"},
	{regexp.MustCompile(`^([0-9.]+) [0-9]+ ([0-9.]+) ([0-9]+)$`), "$1 <PORT> $2 $3"},
	{regexp.MustCompile(`^([0-9.]+) [0-9]+ ([0-9]+)$`), "$1 <PORT> $2"},
}

func (n normalizer) results(t *testing.T, file string) []taskResult {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Errorf("no results recorded: %v", err)
		return nil
	}
	defer f.Close()
	var out []taskResult
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var r taskResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		r.Host = "<HOST>"
		r.Result, _ = n.value(r.Result).(map[string]any)
		out = append(out, r)
	}
	must(t, sc.Err())
	return out
}

func (n normalizer) value(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			switch {
			case timeKeys[k]:
				out[k] = "<TIME>"
			case k == "ansible_job_id" || k == "pid" || k == "inode" || k == "child_pid" || k == "version":
				// version is a file's inode generation number (stat).
				out[k] = "<ID>"
			default:
				// Keys can be paths too (find's skipped_paths).
				out[n.str(k)] = n.value(x)
			}
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = n.value(x)
		}
		return out
	case string:
		return n.str(v)
	}
	return v
}

// lines normalizes each line of a file listing: paths name the run
// (fetch without flat puts the target's path under the host's name).
func (n normalizer) lines(ls []string) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = n.str(l)
	}
	sort.Strings(out)
	return out
}

func (n normalizer) str(s string) string {
	var dirs []string
	for d := range n.dirs {
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		s = strings.ReplaceAll(s, d, n.dirs[d])
	}
	for i, r := range n.runs {
		s = strings.ReplaceAll(s, r, fmt.Sprintf("<RUN%d>", i))
	}
	for _, v := range volatile {
		s = v.re.ReplaceAllString(s, v.with)
	}
	return s
}

// writeTarGz writes a gzipped tar for unarchive: a directory, files of
// several modes, a symlink and a unicode name, with fixed times so
// every run unpacks the same bytes.
func writeTarGz(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	must(t, err)
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	mt := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range []struct {
		name, body, link string
		mode             int64
		typ              byte
	}{
		{name: "pkg/", mode: 0o755, typ: tar.TypeDir},
		{name: "pkg/bin/", mode: 0o750, typ: tar.TypeDir},
		{name: "pkg/bin/run.sh", body: "#!/bin/sh\necho run\n", mode: 0o755, typ: tar.TypeReg},
		{name: "pkg/README", body: strings.Repeat("readme line\n", 500), mode: 0o644, typ: tar.TypeReg},
		{name: "pkg/secret", body: "s3cret\n", mode: 0o600, typ: tar.TypeReg},
		{name: "pkg/ünï cødé ✓.txt", body: "ünïcödé ✓\n", mode: 0o644, typ: tar.TypeReg},
		{name: "pkg/link", link: "README", mode: 0o777, typ: tar.TypeSymlink},
	} {
		h := &tar.Header{Name: e.name, Mode: e.mode, Typeflag: e.typ, Linkname: e.link, Size: int64(len(e.body)), ModTime: mt, Format: tar.FormatPAX}
		must(t, tw.WriteHeader(h))
		_, err := tw.Write([]byte(e.body))
		must(t, err)
	}
	must(t, tw.Close())
	must(t, zw.Close())
	must(t, f.Close())
	return p
}

// listTree describes every file under root, one line each: path, type,
// mode, owner, group, and the content's SHA-256 (or a link's target).
// Times are left out: they differ between any two runs.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %s %s:%s", rel, fi.Mode(), userName(st.Uid), groupName(st.Gid))
		if fi.Mode()&fs.ModeSymlink == 0 {
			acl := make([]byte, 1024)
			if n, err := syscall.Getxattr(p, "system.posix_acl_access", acl); err == nil {
				line += fmt.Sprintf(" acl:%x", acl[:n])
			}
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			tgt, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + tgt
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			line += fmt.Sprintf(" %d %x", len(b), sum[:8])
		}
		out = append(out, line)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Errorf("list %s: %v", root, err)
	}
	return out
}

func userName(uid uint32) string {
	if u, err := user.LookupId(strconv.Itoa(int(uid))); err == nil {
		return u.Username
	}
	return strconv.Itoa(int(uid))
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.Itoa(int(gid))); err == nil {
		return g.Name
	}
	return strconv.Itoa(int(gid))
}

// compared is what of a result must be equal.
func (r taskResult) compared() any {
	return struct {
		Task, Host, Status string
		Result             map[string]any
	}{r.Task, r.Host, r.Status, r.Result}
}

// diffResults compares task by task and shows, for each task that
// differs, the fields that do.
func diffResults(want, got []taskResult) string {
	var b strings.Builder
	for i := 0; i < max(len(want), len(got)); i++ {
		var w, g []string
		title := ""
		if i < len(want) {
			w = flatten("", want[i].compared())
			title = want[i].Task
		}
		if i < len(got) {
			g = flatten("", got[i].compared())
			if title == "" {
				title = got[i].Task
			}
		}
		if d := diffLines(w, g); d != "" {
			fmt.Fprintf(&b, "task %d %q:\n%s", i+1, title, d)
		}
	}
	return b.String()
}

// flatten turns a value into sorted "path = json" lines.
func flatten(prefix string, v any) []string {
	raw, _ := json.Marshal(v)
	var x any
	json.Unmarshal(raw, &x)
	var out []string
	var walk func(string, any)
	walk = func(p string, x any) {
		switch x := x.(type) {
		case map[string]any:
			if len(x) == 0 {
				out = append(out, p+" = {}")
			}
			for k, y := range x {
				walk(p+"."+k, y)
			}
		case []any:
			if len(x) == 0 {
				out = append(out, p+" = []")
			}
			for i, y := range x {
				walk(fmt.Sprintf("%s[%d]", p, i), y)
			}
		default:
			j, _ := json.Marshal(x)
			out = append(out, p+" = "+string(j))
		}
	}
	walk(prefix, x)
	sort.Strings(out)
	return out
}

// diffLines lists the lines only in want (-) and only in got (+),
// counting repeats.
func diffLines(want, got []string) string {
	count := map[string]int{}
	for _, l := range want {
		count[l]++
	}
	for _, l := range got {
		count[l]--
	}
	var b bytes.Buffer
	extra := map[string]int{}
	for l, n := range count {
		extra[l] = n
	}
	for _, l := range want {
		if extra[l] > 0 {
			extra[l]--
			fmt.Fprintf(&b, "  - %s\n", l)
		}
	}
	for _, l := range got {
		if extra[l] < 0 {
			extra[l]++
			fmt.Fprintf(&b, "  + %s\n", l)
		}
	}
	return b.String()
}
