package target

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"time"
)

// The launcher's status lines. The launcher prints one of these, or
// execs the agent, whose first line is the agent's banner; the upload
// prints Uploaded when the agent is in place.
const (
	// NeedAgent starts "GOMUX-NEED-AGENT SHA MACHINE [why]": there is no
	// verified agent in the cache; upload it and launch again.
	NeedAgent = "GOMUX-NEED-AGENT"
	// NoAgent starts "GOMUX-NO-AGENT why": the agent cannot run here
	// (no build for the machine, a cache gomux cannot make safe).
	NoAgent = "GOMUX-NO-AGENT"
	// Uploaded says the upload verified the agent and put it in place.
	Uploaded = "GOMUX-UPLOADED"
)

//go:embed *.sh
var programFiles embed.FS

// programs holds the *.sh programs parsed as templates: each file is one
// template of its name, and its {{define}}s are shared by all. Values go
// in through q (Quote) only; code (Ansible's own command text, which
// WarmRun keeps byte for byte) through code.
type programs struct{ t *template.Template }

// loadPrograms parses the embedded programs, as sent (compact: one line
// each) or as written (comments and lines kept, for linting).
func loadPrograms(compact bool) (programs, error) {
	t := template.New("").Option("missingkey=error").Funcs(template.FuncMap{
		"q":    Quote,
		"code": func(s string) string { return s },
	})
	names, err := fs.Glob(programFiles, "*.sh")
	if err != nil {
		return programs{}, err
	}
	for _, n := range names {
		b, err := programFiles.ReadFile(n)
		if err != nil {
			return programs{}, err
		}
		src := string(b)
		if compact {
			src = compactSource(src)
		}
		if _, err := t.New(n).Parse(src); err != nil {
			return programs{}, fmt.Errorf("program %s: %w", n, err)
		}
	}
	return programs{t}, nil
}

// sent returns the programs as gomux sends them, parsed once, on first
// use (the parse costs about half a millisecond). The agent imports this
// package for its layout and starts once per warm task (pyrun), so it
// must not pay for the parse at each start; and variables with no
// initializer, set only here, let the linker leave the parse and the
// programs out of the agent (a quarter of a megabyte to upload to every
// target), which an initialized package variable would keep.
func sent() programs {
	sentOnce.Do(func() { sentPrograms = mustLoad(true) })
	return sentPrograms
}

var (
	sentOnce     sync.Once
	sentPrograms programs
)

func mustLoad(compact bool) programs {
	p, err := loadPrograms(compact)
	if err != nil {
		// They are embedded: every test of this package sees it first.
		panic(err)
	}
	return p
}

// compactSource turns a program as written into the one line gomux
// sends, which any login shell passes on intact to /bin/sh (csh would
// not take a newline inside quotes): comment lines go, and the other
// lines are trimmed and joined by one space. So a program is written one
// statement or clause a line, each ended by `;` where a newline would end
// it, and comments on lines of their own; TestProgramsCompactSame checks
// that both forms are the same program.
func compactSource(src string) string {
	var out []string
	for _, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return strings.Join(out, " ")
}

// render runs the program name on data.
func (p programs) render(name string, data any) string {
	var b strings.Builder
	if err := p.t.ExecuteTemplate(&b, name, data); err != nil {
		// Data is built here, of the right shape: only a broken
		// program fails, and its test first.
		panic(fmt.Sprintf("program %s: %v", name, err))
	}
	return b.String()
}

// launcherArch is one case of the launcher: the machine names and the
// SHA-256 of the agent build for them.
type launcherArch struct {
	Machines []string
	SHA      string
}

// Launcher is the command that starts the cached agent on a target if its
// hash verifies, or prints NeedAgent or NoAgent. sums are the SHA-256 of
// the agent builds by GOARCH; cacheDays is passed to the agent, which
// removes what no start has used for that long (agent.CleanCache).
//
// It runs under /bin/sh whatever the login shell is, and costs one round
// trip on a warm target. It opens the agent once, hashes that open file,
// checks that the path still names that very file (test -ef) and executes
// it by its path, so ps and the agent's own executable path show the real
// name, not /proc/self/fd/3. Only the login user could swap the file in
// between: the launcher runs only from a cache directory no one else can
// write (cachecheck.sh), and this is the login user running its own file.
// The become side never runs it (WarmRun). Where the file was replaced
// between the hash and the check (a concurrent upload from another
// connection to the same home, as on a shared NFS home), it looks again,
// up to three times. Its tools run with a fixed PATH (internal/fixedpath);
// the agent gets back the PATH the launcher was given, and passes it on
// to the commands it runs, as sshd would. No umask here: the agent and
// every command it runs inherit this shell's, which must stay the one
// sshd gave the login.
func Launcher(sums map[string]string, cacheDays int) string {
	return "exec /bin/sh -c " + Quote(sent().render("launcher.sh", launcherData(sums, cacheDays)))
}

func launcherData(sums map[string]string, cacheDays int) any {
	var arches []launcherArch
	for _, a := range Arches() {
		if sha, ok := sums[a.GOARCH]; ok {
			arches = append(arches, launcherArch{Machines: a.Machines, SHA: sha})
		}
	}
	return struct {
		Arches    []launcherArch
		CacheDays string
	}{arches, strconv.Itoa(cacheDays)}
}

// Upload is the command that writes the agent of SHA-256 sha from its
// stdin into the cache under a temporary name, verifies it, and renames it
// into place, so a broken transfer never leaves a file the launcher would
// run; it prints Uploaded when the agent is in place. A cache directory
// that others could write (cachecheck.sh) is removed first and made again,
// 0700: whatever is in it is not the user's. Its tools run with a fixed
// PATH.
func Upload(sha string) string {
	return "exec /bin/sh -c " + Quote(sent().render("upload.sh", uploadData{sha}))
}

// CacheMountOptions is the command that prints the mount options of the
// file system the agent cache is, or would be, on, with a fixed PATH: an
// agent that did not start may be on a noexec mount (gomux check says
// so).
func CacheMountOptions() string { return sent().render("cachemount.sh", nil) }

// WarmRun is one Ansible module run that gomux hands to a warm Python
// fork server on the target (`gomux-agent pyrun`, agent/PROTOCOL.md),
// written as shell that runs the interpreter exactly as Ansible asked
// whenever the warm run cannot be trusted.
type WarmRun struct {
	// Agent is the login user's agent on the target (its absolute path,
	// named AgentName of its hash).
	Agent string
	// Become says the run is inside a become wrapper and runs as another
	// user.
	Become bool
	// AgentID, Idle and Terminal are pyrun's -agent, -idle and -ctty 0
	// (shim.WarmOptions), each left out when zero.
	AgentID  string
	Idle     time.Duration
	Terminal bool
	// Env is Ansible's text before the interpreter word (its NAME=value
	// assignments, if any), and Run the interpreter word to the end of
	// its command: both are shell already, kept byte for byte.
	Env, Run string
}

// Program is the shell that replaces Ansible's `ENV RUN`. Without become
// it is guarded by `[ -x AGENT ]`: the login user runs its own agent.
// Under become it never runs the login user's file: that user can write
// it, so running it as the become user would hand the login user the
// become user's rights at the next become task. Instead the become user's
// shell runs $HOME/.cache/gomux/agent-SHA of its own HOME (sudo -H, su
// and doas set it), taken only when the file and its directory are owned
// by itself (test -O, the effective uid) and neither is a symlink, which
// costs no process. Otherwise it installs it: in a subshell, with umask
// 077 and a fixed PATH (the become method may have kept the login user's:
// su, sudo without secure_path), it creates the directory, checks owner
// and no symlink again, chmods it 0700 (so no one else can add, rename or
// replace entries in it from then on), copies the login user's agent into
// a temporary file there (a regular file, at most 64 MiB, so a login
// user's symlink to /dev/zero cannot fill the disk), hashes THAT copy, and
// renames it into place only if the hash is the one in the agent's name.
// The copy cannot change after it was hashed: only the become user (or
// root) can write that directory and file, so there is no window between
// the check and the exec; HOME and HOME/.cache must be the become user's
// own as well (were either the login user's, as with sudo without -H,
// the login user could rename a directory on the path in between). Any
// failure runs the interpreter exactly as Ansible asked; the install's
// output goes to /dev/null, so the task's output is stock; a copy on a
// noexec mount is not installed again (test -x last). The agent's path
// is held in the shell variable _gomux_agent, never exported. ok is false
// under become when Agent is not named by its hash.
func (w WarmRun) Program() (prog string, ok bool) {
	name, data, ok := w.program()
	if !ok {
		return "", false
	}
	return sent().render(name, data), true
}

// program is the program that Program renders, and its data.
func (w WarmRun) program() (name string, data any, ok bool) {
	var flags []string
	if w.AgentID != "" {
		flags = append(flags, "-agent", w.AgentID)
	}
	if w.Idle > 0 {
		flags = append(flags, "-idle", w.Idle.String())
	}
	if w.Terminal {
		flags = append(flags, "-ctty", "0")
	}
	d := warmData{Agent: w.Agent, Env: w.Env, Run: w.Run, Flags: flags}
	if !w.Become {
		return "warm.sh", d, true
	}
	d.SHA, ok = AgentSHA(path.Base(w.Agent))
	return "warm-become.sh", d, ok
}

// warmData is what warm.sh and warm-become.sh are filled with.
type warmData struct {
	Agent, SHA, Env, Run string
	Flags                []string
}

// uploadData is what upload.sh is filled with.
type uploadData struct{ SHA string }

// programNames lists the programs (the *.sh files that are not only
// definitions), for the tests and the lint.
func programNames() []string {
	names := []string{}
	for _, t := range sent().t.Templates() {
		if strings.HasSuffix(t.Name(), ".sh") && t.Name() != "cachecheck.sh" {
			names = append(names, t.Name())
		}
	}
	sort.Strings(names)
	return names
}
