package shim

import (
	"path"
	"regexp"
	"strings"
	"time"

	"mvdan.cc/sh/v3/syntax"

	"github.com/gomux/gomux/target"
)

// WarmOptions name the agent that serves warm module runs on a target.
type WarmOptions struct {
	// Agent is the agent binary's path on the target (agent.Info.Executable).
	Agent string
	// AgentID is the agent's "PID:STARTTIME"; its fork servers exit with it.
	AgentID string
	// Idle is how long a fork server waits for a run before it exits.
	Idle time.Duration
	// Terminal says the command runs on a pty (Ansible's -tt, pipelining
	// off). Without become, the warm run then takes the pty as its
	// controlling terminal (`pyrun -ctty 0`), as the interpreter has it
	// in the shell's session without gomux; the agent must start the
	// shell without making the pty its controlling terminal
	// (Plan.TerminalToRun), since a terminal belongs to one session. A
	// forked run cannot join the shell's session. Under become the shell
	// keeps it (sudo looks at it: requiretty, its log's TTY=) and the run
	// has none.
	Terminal bool
}

// takesTerminal says whether r's warm run takes the session's pty as its
// controlling terminal (WarmOptions.Terminal): only without become.
func (r Run) takesTerminal(o WarmOptions) bool { return o.Terminal && r.Become == nil }

var (
	warmInterpRE = regexp.MustCompile(`^python3(\.[0-9]+)?$`)
	warmScriptRE = regexp.MustCompile(`^AnsiballZ_[A-Za-z0-9_.]+\.py$`)
)

// Warm rewrites the command of a recognized module run so that the
// interpreter word becomes `AGENT pyrun ... -- INTERP`, which runs the
// module in a warm fork server on the target (agent/pyrun/DESIGN.md).
// Every other byte stays as Ansible sent it: become wrappers
// still run, so sudo still authenticates and logs, and pyrun runs as the
// become user. Without become the replacement is guarded by
// `[ -x AGENT ]`: the login user runs its own agent. Under become it
// never runs the login user's file (see target.WarmRun): the become user
// runs its own verified copy, or the interpreter exactly as Ansible
// asked. ok is false, and cmd is to be run unchanged, for anything
// unusual: async_wrapper, interpreter flags or arguments, an interpreter
// that is not python3, a script that is not an AnsiballZ module, or
// quoting that would not survive the rewrite byte for byte. Host.Plan
// does the same as part of its plan (Plan.Command), on the trees it
// parsed; Warm is for a command planned elsewhere.
func Warm(cmd string, o WarmOptions) (string, bool) {
	s := new(source)
	return s.warm(cmd, s.parse(cmd), o)
}

// warm is Warm of cmd, which s recognized as step, reusing s's trees.
//
// The result is not parsed again: spliceWord replaces a word only when
// target.Quote reproduces it byte for byte and puts target.Quote of the
// new value in its place, which is always one word, so the outer layers
// parse as before; and the guarded text that replaceRun splices into the
// innermost layer is fixed shell around the words it keeps. FuzzWarm checks that
// every rewrite parses, to the innermost layer.
func (s *source) warm(cmd string, step Step, o WarmOptions) (string, bool) {
	run, ok := step.(Run)
	if !ok || o.Agent == "" || !path.IsAbs(o.Agent) || !warmInterpRE.MatchString(path.Base(run.Interpreter)) {
		return cmd, false
	}
	if len(run.Args) > 0 || (run.Script.Value != "" && !warmScriptRE.MatchString(path.Base(run.Script.Value))) {
		return cmd, false
	}
	for _, kv := range run.Env {
		if strings.HasPrefix(kv, "ANSIBLE_ASYNC_DIR=") || strings.HasPrefix(kv, "PYTHON") {
			return cmd, false
		}
	}
	o.Terminal = run.takesTerminal(o)
	out, ok := s.rewriteShellC(cmd, func(inner string) (string, bool) { return s.warmOuter(inner, o) })
	if !ok {
		return cmd, false
	}
	return out, true
}

// warmOuter rewrites the command inside Ansible's `/bin/sh -c '...'`:
// `RUN && sleep 0`, `RUN; rm ... && sleep 0`, or a become wrapper in
// RUN's place.
func (s *source) warmOuter(src string, o WarmOptions) (string, bool) {
	f, ok := s.parseFile(src)
	if !ok {
		return "", false
	}
	var st *syntax.Stmt
	switch len(f.Stmts) {
	case 1:
		st, ok = beforeSleep0(f.Stmts[0])
	case 2:
		st, ok = f.Stmts[0], true
	default:
		ok = false
	}
	if !ok || len(st.Redirs) > 0 || st.Negated || st.Background {
		return "", false
	}
	call, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || len(call.Args) == 0 {
		return "", false
	}
	if _, isRun := parseRun(call); isRun {
		return replaceRun(src, call, o, false)
	}
	if _, isBecome := s.parseBecome(call); !isBecome || len(call.Assigns) > 0 {
		return "", false
	}
	args, ok := literals(call.Args)
	if !ok {
		return "", false
	}
	last := call.Args[len(call.Args)-1]
	inner := func(v string) (string, bool) { return s.warmBecomeInner(v, o) }
	if len(args) >= 4 && isShell(args[len(args)-3]) && args[len(args)-2] == "-c" {
		// sudo ... /bin/sh -c 'echo BECOME-SUCCESS-...; RUN'
		return spliceWord(src, last, inner)
	}
	// su ... -c '/bin/sh -c '"'"'echo BECOME-SUCCESS-...; RUN'"'"''
	return spliceWord(src, last, func(v string) (string, bool) { return s.rewriteShellC(v, inner) })
}

// warmBecomeInner rewrites `echo BECOME-SUCCESS-<key> ; RUN`.
func (s *source) warmBecomeInner(src string, o WarmOptions) (string, bool) {
	f, ok := s.parseFile(src)
	if !ok || len(f.Stmts) != 2 {
		return "", false
	}
	call, ok := f.Stmts[1].Cmd.(*syntax.CallExpr)
	if !ok || len(f.Stmts[1].Redirs) > 0 {
		return "", false
	}
	if _, isRun := parseRun(call); !isRun {
		return "", false
	}
	return replaceRun(src, call, o, true)
}

// replaceRun puts the guarded pyrun (target.WarmRun) in place of the
// run's simple command.
func replaceRun(src string, call *syntax.CallExpr, o WarmOptions, become bool) (string, bool) {
	start, end := int(call.Pos().Offset()), int(call.End().Offset())
	interp := int(call.Args[0].Pos().Offset())
	if start < 0 || start > interp || interp > end || end > len(src) {
		return "", false
	}
	guarded, ok := target.WarmRun{
		Agent: o.Agent, Become: become, AgentID: o.AgentID, Idle: o.Idle, Terminal: o.Terminal,
		Env: src[start:interp], Run: src[interp:end],
	}.Program()
	if !ok {
		return "", false
	}
	return src[:start] + guarded + src[end:], true
}

// rewriteShellC applies fn to the command word of `SHELL -c WORD`.
func (s *source) rewriteShellC(src string, fn func(string) (string, bool)) (string, bool) {
	st, ok := s.singleStmt(src)
	if !ok {
		return "", false
	}
	call, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || len(call.Assigns) > 0 || len(call.Args) != 3 {
		return "", false
	}
	args, ok := literals(call.Args[:2])
	if !ok || !isShell(args[0]) || args[1] != "-c" {
		return "", false
	}
	return spliceWord(src, call.Args[2], fn)
}

// spliceWord replaces word w of src by fn of its value, quoted the way
// Ansible quotes (Python's shlex.quote). It refuses a word that this
// quoting would not reproduce byte for byte, so nothing else changes.
func spliceWord(src string, w *syntax.Word, fn func(string) (string, bool)) (string, bool) {
	v, tilde, ok := literal(w)
	if !ok || tilde {
		return "", false
	}
	start, end := int(w.Pos().Offset()), int(w.End().Offset())
	if start < 0 || end > len(src) || start > end || target.Quote(v) != src[start:end] {
		return "", false
	}
	nv, ok := fn(v)
	if !ok {
		return "", false
	}
	return src[:start] + target.Quote(nv) + src[end:], true
}
