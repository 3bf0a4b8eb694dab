package shim

import (
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/gomux/gomux/agent"
)

// Limits on what a Host stages in gomux's memory. Beyond them an upload
// goes to the target as it arrives.
const (
	MaxStagedFile  = 8 << 20
	MaxStagedTotal = 64 << 20
)

// DefaultTempDirIdle is how long a temp dir gomux keeps for Ansible may go
// unused before it is forgotten, with what is staged in it. A task touches
// its temp dir every few seconds; one idle this long belongs to a run that
// died, and must not hold memory for ever.
const DefaultTempDirIdle = 30 * time.Minute

// HostLimits bound what a Host holds.
type HostLimits struct {
	// Budget is shared by every Host and upload; nil means only the
	// per-Host MaxStagedTotal applies.
	Budget *Budget
	// TempDirIdle expires unused temp dirs; zero means DefaultTempDirIdle.
	TempDirIdle time.Duration
	// Sums is shared by every Host too: the module archives' sums, so an
	// archive is hashed once, not per task; nil hashes every time.
	Sums *Sums
}

// Counters say what the shim saved, for the log line at the end of a
// downstream connection and, later, metrics.
type Counters struct {
	// RoundTrips are requests that reached the target: batches and
	// passed-through commands (counted by Plan), and what the caller
	// counts with CountRoundTrip (sftp operations, batches of owed ops,
	// resends after a cache miss).
	RoundTrips int64
	// Local are steps answered without the target.
	Local int64
}

// Host is gomux's view of one (target, login user): the home directory,
// and the temp dirs Ansible believes it has made, with the uploads it put
// in them that have not reached the target yet. It is safe for concurrent
// use by every connection to that target and user.
type Host struct {
	user, home string

	mu      sync.Mutex
	dirs    map[string]*tempDir // by resolved path, no trailing slash
	pending []agent.PrepOp      // ops owed to the target, in order
	staged  int64               // bytes staged in all dirs
	count   Counters
	real    map[string]string // realpath answers for the home directory
	lim     HostLimits
	used    time.Time // last use of any kind
	// aclWorks is set once a setfacl on this target succeeded: from then
	// on setfacl is recorded and sent with the run. Until then it runs
	// as sent, so a failure reaches Ansible, which has fallbacks for it.
	aclWorks bool
	// becomeSeen are the become wrappers seen to work (observeBecome).
	becomeSeen map[string]bool
	// bases are the temp dir bases (remote_tmp, /var/tmp) in which a
	// temp dir step ran on the target and succeeded. Until one has, the
	// step runs as sent: a base the user cannot make (a remote_tmp under
	// /proc, under a file, in a root-only dir) must fail there, where
	// Ansible sees its "Failed to create temporary directory" and reports
	// the host unreachable, as without gomux.
	bases map[string]bool
}

type tempDir struct {
	base     string
	path     string
	onTarget bool
	used     time.Time              // last time a step or an sftp request named it
	files    map[string]*stagedFile // by base name
}

type stagedFile struct {
	data []byte
	mode fs.FileMode
	// release, when set, is called once when the Host lets go of data
	// (sent, replaced or dropped): the owner's own count of it.
	release func()
}

// drop lets go of the file's data: the budget and the owner's count.
func (f *stagedFile) drop(b *Budget) {
	b.Release(int64(len(f.data)))
	if f.release != nil {
		f.release()
		f.release = nil
	}
}

// NewHost starts with nothing virtual. realHome, when known, answers
// realpath of the home directory without asking the target.
func NewHost(user, home, realHome string) *Host {
	return NewHostLimits(user, home, realHome, HostLimits{})
}

// NewHostLimits is NewHost with limits other than the defaults.
func NewHostLimits(user, home, realHome string, lim HostLimits) *Host {
	if lim.TempDirIdle <= 0 {
		lim.TempDirIdle = DefaultTempDirIdle
	}
	h := &Host{user: user, home: home, dirs: map[string]*tempDir{}, lim: lim, used: time.Now()}
	if realHome != "" {
		h.real = map[string]string{home: realHome}
	}
	return h
}

// Counters returns a snapshot.
func (h *Host) Counters() Counters {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

// CountRoundTrip records a request to the target that Plan did not
// count: an sftp operation, a batch of ops the Host owed (Flush, a Plan's
// After), a batch resent after the agent's cache missed.
func (h *Host) CountRoundTrip() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.count.RoundTrips++
}

// RealPath returns a cached realpath answer for p, or calls resolve and
// caches it when p is the home directory (or "."), which every sftp
// session asks for first and which does not change.
func (h *Host) RealPath(p string, resolve func(string) (string, error)) (string, error) {
	if p == "." || p == "" {
		p = h.home
	}
	h.mu.Lock()
	r, ok := h.real[p]
	if ok {
		h.count.Local++
	} else {
		h.count.RoundTrips++
	}
	h.mu.Unlock()
	if ok {
		return r, nil
	}
	r, err := resolve(p)
	if err == nil && p == h.home {
		h.mu.Lock()
		if h.real == nil {
			h.real = map[string]string{}
		}
		h.real[p] = r
		h.mu.Unlock()
	}
	return r, err
}

// Plan is what gomux does with one exec command.
type Plan struct {
	// Step is what the command was recognized as.
	Step Step
	// Reply means answer locally with Stdout and Exit; nothing else runs.
	Reply  bool
	Stdout string
	Stderr string
	Exit   int
	// Prep runs on the target before the command, in one batch with it.
	Prep []agent.PrepOp
	// After is sent to the target once the reply is given, without
	// waiting (the removal of a temp dir that reached the target).
	After []agent.PrepOp
	// Command is what runs on the target when Reply is false: the
	// command as sent, or its warm rewrite (see Warm) when Warm is set.
	Command string
	Warm    bool
	// TerminalToRun is set when the warm run takes the session's pty as
	// its controlling terminal (WarmOptions.Terminal, no become): the
	// shell must be started on the pty without it being the shell's
	// controlling terminal.
	TerminalToRun bool
}

// planCmd decides how to serve cmd, and updates the virtual state as if it
// had run: a command that reaches the target takes every pending op with
// it, so what it can see is what it would see without gomux. A module
// run is rewritten to run warm (Warm) when warm names an agent; the zero
// WarmOptions leaves every command cold. The command is parsed once for
// both.
func (h *Host) planCmd(cmd string, warm WarmOptions) Plan {
	src := new(source)
	plan := h.plan(src.parse(cmd))
	plan.Command = cmd
	if !plan.Reply {
		plan.Command, plan.Warm = src.warm(cmd, plan.Step, warm)
		if run, ok := plan.Step.(Run); ok && plan.Warm {
			plan.TerminalToRun = run.takesTerminal(warm)
		}
	}
	return plan
}

// plan is Plan's decision for step and its update of the virtual state.
func (h *Host) plan(step Step) Plan {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.used = time.Now()
	h.expireLocked(h.used)
	switch s := step.(type) {
	case EchoHome:
		if s.User == "" || s.User == h.user {
			h.count.Local++
			return Plan{Step: step, Reply: true, Stdout: h.home + "\n"}
		}
	case MakeTemp:
		base, ok1 := s.Base.Resolve(h.user, h.home)
		dir, ok2 := s.Dir.Resolve(h.user, h.home)
		if ok1 && ok2 && h.dirs[dir] == nil && h.bases[path.Clean(base)] {
			h.dirs[dir] = &tempDir{base: base, path: dir, used: h.used, files: map[string]*stagedFile{}}
			h.count.Local++
			return Plan{Step: step, Reply: true, Stdout: s.ID + "=" + dir + "\n"}
		}
	case Chmod:
		if h.chmodLocked(s) {
			h.count.Local++
			return Plan{Step: step, Reply: true}
		}
	case Setfacl:
		if h.aclWorks && h.setfaclLocked(s) {
			h.count.Local++
			return Plan{Step: step, Reply: true}
		}
	case Remove:
		p, ok := s.Path.Resolve(h.user, h.home)
		if d := h.dirs[path.Clean(p)]; ok && d != nil {
			delete(h.dirs, d.path)
			h.dropStagedLocked(d)
			h.count.Local++
			plan := Plan{Step: step, Reply: true}
			if d.onTarget {
				plan.After = []agent.PrepOp{{Op: "remove_all", Path: d.path}}
			} else {
				h.dropPendingLocked(d.path)
			}
			return plan
		}
	case Run:
		plan := Plan{Step: step, Prep: h.flushLocked()}
		h.count.RoundTrips++
		if s.RemoveAfter != nil {
			if p, ok := s.RemoveAfter.Resolve(h.user, h.home); ok {
				delete(h.dirs, path.Clean(p))
			}
		}
		return plan
	}
	h.count.RoundTrips++
	return Plan{Step: step, Prep: h.flushLocked()}
}

// flushLocked returns every op owed to the target: temp dirs it has not
// made, staged uploads, then the recorded modes; and marks them done.
func (h *Host) flushLocked() []agent.PrepOp {
	var ops []agent.PrepOp
	bases := map[string]bool{}
	for _, d := range h.dirs {
		if d.onTarget {
			continue
		}
		if !bases[d.base] {
			bases[d.base] = true
			ops = append(ops, agent.PrepOp{Op: "mkdir", Path: d.base, Mode: 0o700, Parents: true})
		}
		ops = append(ops, agent.PrepOp{Op: "mkdir", Path: d.path, Mode: 0o700})
		d.onTarget = true
	}
	for _, d := range h.dirs {
		for name, f := range d.files {
			op := agent.PrepOp{Op: "write", Path: d.path + "/" + name, Mode: f.mode, Data: f.data}
			if strings.HasPrefix(name, "AnsiballZ_") {
				op.Parts = splitModule(f.data, h.lim.Sums)
			}
			ops = append(ops, op)
		}
		h.dropStagedLocked(d)
	}
	ops = append(ops, h.pending...)
	h.pending = nil
	return ops
}

func (h *Host) dropStagedLocked(d *tempDir) {
	for name, f := range d.files {
		h.staged -= int64(len(f.data))
		f.drop(h.lim.Budget)
		delete(d.files, name)
	}
}

func (h *Host) dropPendingLocked(dir string) {
	kept := h.pending[:0]
	for _, op := range h.pending {
		if op.Path != dir && !strings.HasPrefix(op.Path, dir+"/") {
			kept = append(kept, op)
		}
	}
	h.pending = kept
}

// expireLocked forgets temp dirs unused for TempDirIdle, with what is
// staged in them: Ansible never came back for them (an async job removes
// its own), and neither the map nor the staged bytes may grow for ever. A
// dir already on the target stays there, as it would after a killed run.
func (h *Host) expireLocked(now time.Time) {
	for p, d := range h.dirs {
		if now.Sub(d.used) > h.lim.TempDirIdle {
			h.dropStagedLocked(d)
			h.dropPendingLocked(p)
			delete(h.dirs, p)
		}
	}
}

// Expire forgets idle temp dirs now, and says how long the Host has been
// unused and whether it still holds anything: the owner drops a Host that
// is empty and idle, since a new one is made on the next use.
func (h *Host) Expire(now time.Time) (idle time.Duration, empty bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.expireLocked(now)
	return now.Sub(h.used), len(h.dirs) == 0 && len(h.pending) == 0
}

// Drop forgets everything the Host holds and gives its staged bytes back
// to the budget; for an owner that discards it.
func (h *Host) Drop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for p, d := range h.dirs {
		h.dropStagedLocked(d)
		delete(h.dirs, p)
	}
	h.pending = nil
}

// observe learns from how a command that reached the target ended.
func (h *Host) observe(step Step, exit int) {
	if exit != 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch s := step.(type) {
	case Setfacl:
		h.aclWorks = true
	case MakeTemp:
		// The base can be made: later temp dirs in it are answered
		// locally. This one exists on the target; it is tracked like
		// one gomux made, so its uploads and its removal are batched.
		base, ok1 := s.Base.Resolve(h.user, h.home)
		dir, ok2 := s.Dir.Resolve(h.user, h.home)
		if !ok1 || !ok2 {
			return
		}
		if h.bases == nil {
			h.bases = map[string]bool{}
		}
		h.bases[path.Clean(base)] = true
		if h.dirs[dir] == nil {
			h.dirs[dir] = &tempDir{base: base, path: dir, onTarget: true, used: time.Now(), files: map[string]*stagedFile{}}
		}
	}
}

// prepFailed is told that ops the Host owed failed on the target (a
// deferred temp dir mkdir refused because its base became read-only or
// was replaced by a file, say): no base is known to work any more, so
// the next temp dir step in each runs on the target again and, if the
// base is still broken, fails there as it would without gomux.
func (h *Host) prepFailed() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.bases = nil
}

// setfaclLocked records a setfacl of temp paths to run with the next batch.
func (h *Host) setfaclLocked(c Setfacl) bool {
	argv := []string{"setfacl", "-m", c.Spec}
	var dir string
	for _, pe := range c.Paths {
		p, ok := pe.Resolve(h.user, h.home)
		if !ok {
			return false
		}
		d, _ := h.dirOf(p)
		if d == nil {
			return false
		}
		if dir == "" {
			dir = d.path
		}
		argv = append(argv, p)
	}
	// Path names the temp dir, so an rm before the run drops the op.
	h.pending = append(h.pending, agent.PrepOp{Op: "run", Path: dir, Argv: argv})
	return true
}

// dirOf returns the temp dir holding p (p itself or its parent), and
// marks it used.
func (h *Host) dirOf(p string) (*tempDir, string) {
	p = path.Clean(p)
	now := time.Now()
	h.used = now
	if d := h.dirs[p]; d != nil {
		d.used = now
		return d, ""
	}
	if d := h.dirs[path.Dir(p)]; d != nil {
		d.used = now
		return d, path.Base(p)
	}
	return nil, ""
}

// chmodLocked records a chmod of temp paths whose current mode is known
// (a dir gomux made, a staged file), so it can be answered locally.
func (h *Host) chmodLocked(c Chmod) bool {
	type change struct {
		path string
		mode fs.FileMode
		f    *stagedFile
	}
	var changes []change
	for _, pe := range c.Paths {
		p, ok := pe.Resolve(h.user, h.home)
		if !ok {
			return false
		}
		d, name := h.dirOf(p)
		if d == nil {
			return false
		}
		var cur fs.FileMode
		var f *stagedFile
		switch {
		case name == "":
			cur = 0o700
		case d.files[name] != nil:
			f = d.files[name]
			cur = f.mode
		default:
			return false
		}
		m, ok := applySymbolic(cur, c.Mode)
		if !ok {
			return false
		}
		changes = append(changes, change{path.Join(d.path, name), m, f})
	}
	for _, ch := range changes {
		if ch.f != nil {
			ch.f.mode = ch.mode
		} else {
			h.pending = append(h.pending, agent.PrepOp{Op: "chmod", Path: ch.path, Mode: ch.mode})
		}
	}
	return true
}

// applySymbolic applies chmod's symbolic modes ([ugoa]*[+-=][rwx]*, comma
// separated); anything else is not understood.
func applySymbolic(cur fs.FileMode, spec string) (fs.FileMode, bool) {
	m := cur.Perm()
	for _, clause := range strings.Split(spec, ",") {
		i := 0
		var who fs.FileMode
		for i < len(clause) && strings.IndexByte("ugoa", clause[i]) >= 0 {
			switch clause[i] {
			case 'u':
				who |= 0o700
			case 'g':
				who |= 0o070
			case 'o':
				who |= 0o007
			case 'a':
				who |= 0o777
			}
			i++
		}
		if who == 0 || i >= len(clause) {
			// Without who, chmod applies the umask: not modelled.
			return 0, false
		}
		op := clause[i]
		if op != '+' && op != '-' && op != '=' {
			return 0, false
		}
		var bits fs.FileMode
		for _, c := range clause[i+1:] {
			switch c {
			case 'r':
				bits |= 0o444
			case 'w':
				bits |= 0o222
			case 'x':
				bits |= 0o111
			default:
				return 0, false
			}
		}
		bits &= who
		switch op {
		case '+':
			m |= bits
		case '-':
			m &^= bits
		case '=':
			m = m&^who | bits
		}
	}
	return m, true
}

// Presence is what gomux knows of a path in a temp dir.
type Presence int

// What Lookup can say of a path.
const (
	// Unknown: ask the target.
	Unknown Presence = iota
	// Present only in gomux (a temp dir or a staged upload).
	Present
	// Absent: in a temp dir that exists only in gomux, and not staged.
	Absent
)

// Lookup says whether p is a temp dir or a staged file that exists only in
// gomux (with what a stat on the target would show), a file that cannot
// exist yet, or something only the target knows.
func (h *Host) Lookup(p string) (size int64, mode fs.FileMode, presence Presence) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, name := h.dirOf(p)
	if d == nil {
		return 0, 0, Unknown
	}
	if name == "" {
		if d.onTarget {
			return 0, 0, Unknown
		}
		return 0, fs.ModeDir | 0o700, Present
	}
	if f := d.files[name]; f != nil {
		return int64(len(f.data)), f.mode, Present
	}
	if !d.onTarget {
		return 0, 0, Absent
	}
	return 0, 0, Unknown
}

// Virtual reports whether p exists only in gomux, with its size and mode.
func (h *Host) Virtual(p string) (size int64, mode fs.FileMode, ok bool) {
	size, mode, pr := h.Lookup(p)
	return size, mode, pr == Present
}

// InTempDir reports whether p is in a temp dir gomux tracks, whatever its
// state.
func (h *Host) InTempDir(p string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, _ := h.dirOf(p)
	return d != nil
}

// Stage keeps an upload of p in memory when p is a file directly in a
// temp dir and the limits allow; the file then reaches the target with the
// next command that does. ok is false when the caller must write it to the
// target itself (after Flush).
func (h *Host) Stage(p string, data []byte, mode fs.FileMode) bool {
	return h.StageHeld(p, data, mode, nil)
}

// StageHeld is Stage for data its owner also counts (a person's memory
// share): release is called once when the Host lets go of it, and not at
// all when ok is false.
func (h *Host) StageHeld(p string, data []byte, mode fs.FileMode, release func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, name := h.dirOf(p)
	if d == nil || name == "" || len(data) > MaxStagedFile {
		return false
	}
	prev := d.files[name]
	old := int64(0)
	if prev != nil {
		old = int64(len(prev.data))
	}
	if h.staged-old+int64(len(data)) > MaxStagedTotal || !h.lim.Budget.Reserve(int64(len(data))) {
		return false
	}
	if prev != nil {
		prev.drop(h.lim.Budget)
	}
	h.staged += int64(len(data)) - old
	d.files[name] = &stagedFile{data: data, mode: mode.Perm(), release: release}
	return true
}

// Flush returns every op owed to the target and marks them done: the
// caller sends them before doing anything on the target that could see
// the temp dirs.
func (h *Host) Flush() []agent.PrepOp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.flushLocked()
}

// String is for logs.
func (h *Host) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Sprintf("shim host %s (%d temp dirs, %d bytes staged)", h.user, len(h.dirs), h.staged)
}
