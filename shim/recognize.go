// Package shim knows the shell commands Ansible sends over SSH and turns
// the ones it fully understands into steps gomux can answer or batch. It
// opens no sockets: it parses and plans, so it is tested without a network.
// Anything it does not fully understand is Passthrough, which gomux runs
// unchanged.
package shim

import (
	"path"
	"regexp"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// Step is what one exec command means to Ansible.
type Step interface{ isStep() }

// PathExpr is a path as the command wrote it: Tilde means it began with an
// unquoted ~ (or ~user), which the target's shell would expand.
type PathExpr struct {
	Value string
	Tilde bool
}

// Resolve expands a leading ~ or ~user with home, the login user's home
// directory, the way the target's shell would for the login user.
func (p PathExpr) Resolve(loginUser, home string) (string, bool) {
	if !p.Tilde {
		return p.Value, true
	}
	rest := p.Value[1:]
	user, tail, _ := strings.Cut(rest, "/")
	if user != "" && user != loginUser {
		return "", false
	}
	if tail == "" && !strings.Contains(rest, "/") {
		return home, true
	}
	return path.Join(home, tail), true
}

// EchoHome is `echo ~` or `echo ~user`: Ansible asking for a home directory.
type EchoHome struct {
	// User is empty for the login user.
	User string
}

// MakeTemp is Ansible's temp-dir step: under umask 77, mkdir -p Base, then
// mkdir Dir, then print "ID=Dir".
type MakeTemp struct {
	Base, Dir PathExpr
	ID        string
}

// Chmod is `chmod MODE PATHS...` (Ansible's `chmod u+x <T>/ <T>/file`).
type Chmod struct {
	Mode  string
	Paths []PathExpr
}

// Setfacl is `setfacl -m SPEC PATHS...`, used when becoming an
// unprivileged user.
type Setfacl struct {
	Spec  string
	Paths []PathExpr
}

// Remove is `rm -f -r PATH > /dev/null 2>&1`, the end of a task.
type Remove struct {
	Path PathExpr
}

// Become is the wrapper that runs the inner command as another user; the
// command stays exactly as sent, so sudo still authenticates and logs.
type Become struct {
	// Method is the wrapper's program name (sudo, su, ...).
	Method string
	// Key is the BECOME-SUCCESS key echoed first.
	Key string
	// Prompt is true when the wrapper reads a password from stdin first.
	Prompt bool
	// Wrapper is the wrapper's argv before the shell (`sudo -H -S -n
	// -u root`): with the method's flags and the become user, and without
	// the random key, it is what one become's success says about the next.
	Wrapper []string
	// NonInteractive is set when the wrapper carries sudo's -n: it fails
	// rather than prompt, so it never reads stdin.
	NonInteractive bool
}

// Marker is the line the wrapper's shell echoes first once become worked.
func (b *Become) Marker() string { return "BECOME-SUCCESS-" + b.Key + "\n" }

// Run is an interpreter run: a module file, or a pipelined script on stdin.
type Run struct {
	Become *Become
	// Env are the literal NAME=value prefixes, in order.
	Env []string
	// Interpreter is the absolute interpreter path.
	Interpreter string
	// Script is the file run, empty when pipelined.
	Script PathExpr
	// Args follow the script (async_wrapper's job id, timeout, module...).
	Args []string
	// RemoveAfter is set when the command also removes the temp dir
	// (`...; rm -f -r <T>/ > /dev/null 2>&1`).
	RemoveAfter *PathExpr
}

// Passthrough is anything else: gomux runs it unchanged.
type Passthrough struct {
	Reason string
}

func (EchoHome) isStep()    {}
func (MakeTemp) isStep()    {}
func (Chmod) isStep()       {}
func (Setfacl) isStep()     {}
func (Remove) isStep()      {}
func (Run) isStep()         {}
func (Passthrough) isStep() {}

var (
	tmpIDRE     = regexp.MustCompile(`^ansible-tmp-[0-9]+(\.[0-9]+)?-[0-9]+-[0-9]+$`)
	becomeKeyRE = regexp.MustCompile(`^BECOME-SUCCESS-[a-z]{32}$`)
	envNameRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// maxCommand bounds what the recognizer parses; Ansible's steps are short
// and anything longer is passed through.
const maxCommand = 64 << 10

// Parse classifies one exec command. It never fails: what it cannot fully
// parse is Passthrough.
func Parse(cmd string) Step {
	return new(source).parse(cmd)
}

// source is one command as the recognizer and the warm rewrite read it.
// The command has layers of shell text (the command itself, the script
// of its `sh -c`, a become wrapper's own script, su's `-c` text): each
// text is parsed once, and Parse and Warm share the trees, so Host.Plan
// applies the shell grammar once per layer.
type source struct {
	trees []parsedText
	// parses counts how often the grammar was applied (tests measure it).
	parses int
}

// parsedText is one layer's text and its tree (nil when it does not parse).
type parsedText struct {
	src string
	f   *syntax.File
}

// parseFile is parseFile for a text of this command: parsed on first use.
func (s *source) parseFile(src string) (*syntax.File, bool) {
	for _, t := range s.trees {
		if t.src == src {
			return t.f, t.f != nil
		}
	}
	s.parses++
	f, ok := parseFile(src)
	s.trees = append(s.trees, parsedText{src: src, f: f})
	return f, ok
}

// parse classifies cmd, as Parse.
func (s *source) parse(cmd string) Step {
	if len(cmd) > maxCommand {
		return Passthrough{"command too long"}
	}
	inner, ok := s.unwrapShell(cmd)
	if !ok {
		return Passthrough{"not a /bin/sh -c wrapper"}
	}
	f, ok := s.parseFile(inner)
	if !ok {
		return Passthrough{"inner command does not parse"}
	}
	switch len(f.Stmts) {
	case 1:
		x, ok := beforeSleep0(f.Stmts[0])
		if !ok {
			return Passthrough{"no trailing && sleep 0"}
		}
		return s.classify(x)
	case 2:
		// `<run>; rm -f -r <T>/ > /dev/null 2>&1 && sleep 0`: the rm
		// folded into the exec, as some ansible-core versions send it.
		x, ok := beforeSleep0(f.Stmts[1])
		if !ok || f.Stmts[0].Background || f.Stmts[0].Negated {
			return Passthrough{"no trailing && sleep 0"}
		}
		rm, ok := s.classify(x).(Remove)
		if !ok {
			return Passthrough{"two commands, the second not the temp dir's rm"}
		}
		run, ok := s.classify(f.Stmts[0]).(Run)
		if !ok {
			return Passthrough{"two commands, the first not a module run"}
		}
		run.RemoveAfter = &rm.Path
		return run
	}
	return Passthrough{"several commands"}
}

// beforeSleep0 returns X of `X && sleep 0`.
func beforeSleep0(st *syntax.Stmt) (*syntax.Stmt, bool) {
	b, ok := st.Cmd.(*syntax.BinaryCmd)
	if !ok || b.Op != syntax.AndStmt || !isSleep0(b.Y) || len(st.Redirs) > 0 || st.Negated || st.Background {
		return nil, false
	}
	return b.X, true
}

// maxNesting bounds the brackets a text may open before the shell grammar
// is applied to it. The parser recurses once per nesting level, at a few
// KiB of stack each, so a command of nothing but "$(" (1 MB of them in
// five execs cost gomux 1.2 GiB) could get gomux OOM-killed with every
// person's sessions. No Ansible step comes near the bound.
const maxNesting = 512

// TooNested reports a text with more than maxNesting of ( { [ and `: it
// could nest that deep, so it is not parsed (the recognizer passes it
// through, the log redacts it by pattern). Counting is linear and needs no
// parse; a long flat script with many brackets is merely not parsed.
func TooNested(src string) bool {
	n := 0
	for i := 0; i < len(src); i++ {
		switch src[i] {
		case '(', '{', '[', '`':
			if n++; n > maxNesting {
				return true
			}
		}
	}
	return false
}

func parseFile(src string) (*syntax.File, bool) {
	if TooNested(src) {
		return nil, false
	}
	f, err := syntax.NewParser(syntax.Variant(syntax.LangPOSIX)).Parse(strings.NewReader(src), "")
	if err != nil {
		return nil, false
	}
	return f, true
}

func (s *source) singleStmt(src string) (*syntax.Stmt, bool) {
	f, ok := s.parseFile(src)
	if !ok || len(f.Stmts) != 1 {
		return nil, false
	}
	st := f.Stmts[0]
	if st.Negated || st.Background || st.Coprocess || st.Disown || len(st.Redirs) > 0 {
		return nil, false
	}
	return st, true
}

// unwrapShell takes `/bin/sh -c WORD` (or another absolute sh-like shell)
// and returns WORD's literal value.
func (s *source) unwrapShell(src string) (string, bool) {
	st, ok := s.singleStmt(src)
	if !ok {
		return "", false
	}
	call, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || len(call.Assigns) > 0 || len(call.Args) != 3 {
		return "", false
	}
	args, ok := literals(call.Args)
	if !ok || !isShell(args[0]) || args[1] != "-c" {
		return "", false
	}
	return args[2], true
}

func isShell(p string) bool {
	switch p {
	case "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "/bin/dash":
		return true
	}
	return false
}

func isSleep0(st *syntax.Stmt) bool {
	call, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || len(st.Redirs) > 0 || len(call.Assigns) > 0 {
		return false
	}
	args, ok := literals(call.Args)
	return ok && len(args) == 2 && args[0] == "sleep" && args[1] == "0"
}

func (s *source) classify(st *syntax.Stmt) Step {
	if st.Negated || st.Background {
		return Passthrough{"negated or background"}
	}
	switch c := st.Cmd.(type) {
	case *syntax.Subshell:
		if len(st.Redirs) > 0 {
			return Passthrough{"redirected subshell"}
		}
		return parseMakeTemp(c)
	case *syntax.BinaryCmd:
		return Passthrough{"compound command"}
	case *syntax.CallExpr:
		return s.classifyCall(st, c)
	}
	return Passthrough{"unrecognized command form"}
}

func (s *source) classifyCall(st *syntax.Stmt, call *syntax.CallExpr) Step {
	if len(call.Args) == 0 {
		return Passthrough{"assignment only"}
	}
	name, _, ok := literal(call.Args[0])
	if !ok {
		return Passthrough{"command name is not literal"}
	}
	if name == "rm" {
		return parseRemove(st, call)
	}
	if len(st.Redirs) > 0 {
		return Passthrough{"redirections"}
	}
	switch name {
	case "echo":
		return parseEchoHome(call)
	case "chmod":
		if len(call.Assigns) > 0 || len(call.Args) < 3 {
			return Passthrough{"chmod form"}
		}
		mode, _, ok := literal(call.Args[1])
		paths, pok := pathExprs(call.Args[2:])
		if !ok || !pok || strings.HasPrefix(mode, "-") {
			return Passthrough{"chmod arguments"}
		}
		return Chmod{Mode: mode, Paths: paths}
	case "setfacl":
		if len(call.Assigns) > 0 || len(call.Args) < 4 {
			return Passthrough{"setfacl form"}
		}
		flag, _, ok1 := literal(call.Args[1])
		spec, _, ok2 := literal(call.Args[2])
		paths, ok3 := pathExprs(call.Args[3:])
		if !ok1 || !ok2 || !ok3 || flag != "-m" {
			return Passthrough{"setfacl arguments"}
		}
		return Setfacl{Spec: spec, Paths: paths}
	}
	if r, ok := s.parseBecome(call); ok {
		return r
	}
	if r, ok := parseRun(call); ok {
		return r
	}
	return Passthrough{"unknown command " + name}
}

func parseEchoHome(call *syntax.CallExpr) Step {
	if len(call.Assigns) > 0 || len(call.Args) != 2 {
		return Passthrough{"echo form"}
	}
	v, tilde, ok := literal(call.Args[1])
	if !ok || !tilde || strings.Contains(v, "/") {
		return Passthrough{"echo of something other than ~user"}
	}
	return EchoHome{User: v[1:]}
}

func parseRemove(st *syntax.Stmt, call *syntax.CallExpr) Step {
	args, ok := pathExprs(call.Args)
	if !ok || len(call.Assigns) > 0 || !devNullRedirs(st.Redirs) {
		return Passthrough{"rm form"}
	}
	var flags, paths []*syntax.Word
	for i, a := range args[1:] {
		if strings.HasPrefix(a.Value, "-") && !a.Tilde {
			flags = append(flags, call.Args[i+1])
		} else {
			paths = append(paths, call.Args[i+1])
		}
	}
	fl, _ := literals(flags)
	if !isRecursiveForce(fl) || len(paths) != 1 {
		return Passthrough{"rm flags"}
	}
	p, ok := pathExprs(paths)
	if !ok || !isTempPath(p[0].Value) {
		return Passthrough{"rm of something other than a temp dir"}
	}
	return Remove{Path: p[0]}
}

func isRecursiveForce(flags []string) bool {
	var r, f bool
	for _, fl := range flags {
		switch fl {
		case "-f":
			f = true
		case "-r", "-R":
			r = true
		case "-rf", "-fr", "-Rf", "-fR":
			r, f = true, true
		default:
			return false
		}
	}
	return r && f
}

// devNullRedirs is exactly `> /dev/null 2>&1`.
func devNullRedirs(rs []*syntax.Redirect) bool {
	if len(rs) != 2 {
		return false
	}
	a, b := rs[0], rs[1]
	aw, _, ok1 := literal(a.Word)
	bw, _, ok2 := literal(b.Word)
	return ok1 && ok2 && a.Op == syntax.RdrOut && a.N == nil && aw == "/dev/null" &&
		b.Op == syntax.DplOut && b.N != nil && b.N.Value == "2" && bw == "1"
}

// isTempPath says whether p names an Ansible temp dir (or a file in one).
func isTempPath(p string) bool {
	for _, el := range strings.Split(p, "/") {
		if tmpIDRE.MatchString(el) {
			return true
		}
	}
	return false
}

// parseMakeTemp recognizes
// ( umask 77 && mkdir -p "`echo B`" && mkdir "`echo T`" && echo ID="`echo T`" )
func parseMakeTemp(sub *syntax.Subshell) Step {
	if len(sub.Stmts) != 1 {
		return Passthrough{"subshell with several statements"}
	}
	chain := flattenAnd(sub.Stmts[0])
	if len(chain) != 4 {
		return Passthrough{"not the temp dir step"}
	}
	calls := make([]*syntax.CallExpr, 4)
	for i, st := range chain {
		c, ok := st.Cmd.(*syntax.CallExpr)
		if !ok || len(st.Redirs) > 0 || len(c.Assigns) > 0 || st.Negated || st.Background {
			return Passthrough{"not the temp dir step"}
		}
		calls[i] = c
	}
	if a, ok := literals(calls[0].Args); !ok || len(a) != 2 || a[0] != "umask" || a[1] != "77" {
		return Passthrough{"no umask 77"}
	}
	a1, ok := literals(calls[1].Args[:min(2, len(calls[1].Args))])
	if !ok || len(calls[1].Args) != 3 || a1[0] != "mkdir" || a1[1] != "-p" {
		return Passthrough{"no mkdir -p"}
	}
	base, ok := echoSubst(calls[1].Args[2])
	if !ok {
		return Passthrough{"mkdir -p argument"}
	}
	a2, ok := literals(calls[2].Args[:1])
	if !ok || len(calls[2].Args) != 2 || a2[0] != "mkdir" {
		return Passthrough{"no mkdir"}
	}
	dir, ok := echoSubst(calls[2].Args[1])
	if !ok {
		return Passthrough{"mkdir argument"}
	}
	a3, ok := literals(calls[3].Args[:1])
	if !ok || len(calls[3].Args) != 2 || a3[0] != "echo" {
		return Passthrough{"no echo of the temp dir"}
	}
	w := calls[3].Args[1]
	if len(w.Parts) != 2 {
		return Passthrough{"echo form"}
	}
	lit, ok := w.Parts[0].(*syntax.Lit)
	if !ok || !strings.HasSuffix(lit.Value, "=") {
		return Passthrough{"echo form"}
	}
	id := strings.TrimSuffix(lit.Value, "=")
	echoed, ok := echoSubst(&syntax.Word{Parts: w.Parts[1:]})
	if !ok || echoed != dir || !tmpIDRE.MatchString(id) || path.Base(dir.Value) != id ||
		path.Clean(path.Dir(dir.Value)) != path.Clean(base.Value) || dir.Tilde != base.Tilde {
		return Passthrough{"temp dir names disagree"}
	}
	return MakeTemp{Base: base, Dir: dir, ID: id}
}

func flattenAnd(st *syntax.Stmt) []*syntax.Stmt {
	if b, ok := st.Cmd.(*syntax.BinaryCmd); ok && b.Op == syntax.AndStmt && len(st.Redirs) == 0 && !st.Negated {
		return append(flattenAnd(b.X), flattenAnd(b.Y)...)
	}
	return []*syntax.Stmt{st}
}

// echoSubst reads "`echo WORD`" (double-quoted command substitution of a
// single echo of a literal word) and returns WORD.
func echoSubst(w *syntax.Word) (PathExpr, bool) {
	if len(w.Parts) != 1 {
		return PathExpr{}, false
	}
	dq, ok := w.Parts[0].(*syntax.DblQuoted)
	if !ok || dq.Dollar || len(dq.Parts) != 1 {
		return PathExpr{}, false
	}
	cs, ok := dq.Parts[0].(*syntax.CmdSubst)
	if !ok || len(cs.Stmts) != 1 {
		return PathExpr{}, false
	}
	st := cs.Stmts[0]
	call, ok := st.Cmd.(*syntax.CallExpr)
	if !ok || len(st.Redirs) > 0 || len(call.Assigns) > 0 || len(call.Args) != 2 {
		return PathExpr{}, false
	}
	if n, _, ok := literal(call.Args[0]); !ok || n != "echo" {
		return PathExpr{}, false
	}
	v, tilde, ok := literal(call.Args[1])
	if !ok || v == "" || strings.ContainsAny(v, "*?[") {
		return PathExpr{}, false
	}
	return PathExpr{Value: v, Tilde: tilde}, true
}

// parseBecome recognizes a wrapper whose command ends in
// `/bin/sh -c 'echo BECOME-SUCCESS-<key> ; <run>'`, directly (sudo and
// most methods) or as the last argument's own text (su -c '...').
func (s *source) parseBecome(call *syntax.CallExpr) (Step, bool) {
	args, ok := literals(call.Args)
	if !ok || len(call.Assigns) > 0 || len(args) < 2 {
		return nil, false
	}
	var innerSrc string
	var wrapper []string
	switch {
	case len(args) >= 4 && isShell(args[len(args)-3]) && args[len(args)-2] == "-c":
		innerSrc, wrapper = args[len(args)-1], args[:len(args)-3]
	default:
		inner, ok := s.unwrapShell(args[len(args)-1])
		if !ok {
			return nil, false
		}
		innerSrc, wrapper = inner, args[:len(args)-1]
	}
	f, ok := s.parseFile(innerSrc)
	if !ok || len(f.Stmts) != 2 {
		return nil, false
	}
	echo, ok := f.Stmts[0].Cmd.(*syntax.CallExpr)
	if !ok || len(f.Stmts[0].Redirs) > 0 || len(echo.Assigns) > 0 {
		return nil, false
	}
	ea, ok := literals(echo.Args)
	if !ok || len(ea) != 2 || ea[0] != "echo" || !becomeKeyRE.MatchString(ea[1]) {
		return nil, false
	}
	runCall, ok := f.Stmts[1].Cmd.(*syntax.CallExpr)
	if !ok || len(f.Stmts[1].Redirs) > 0 {
		return nil, false
	}
	r, ok := parseRun(runCall)
	if !ok {
		return nil, false
	}
	b := &Become{Method: path.Base(wrapper[0]), Key: strings.TrimPrefix(ea[1], "BECOME-SUCCESS-"),
		Wrapper: append([]string(nil), wrapper...)}
	for i, a := range wrapper {
		if a == "-p" || (strings.HasPrefix(a, "-p") && i > 0 && b.Method == "sudo") {
			b.Prompt = true
		}
	}
	b.NonInteractive = b.Method == "sudo" && sudoNonInteractive(wrapper[1:])
	if b.Method != "sudo" {
		// Other methods (su, doas, ...) may prompt without saying so in
		// their arguments; treat stdin as carrying a password.
		b.Prompt = true
	}
	run := r.(Run)
	run.Become = b
	return run, true
}

// sudoNonInteractive reports whether sudo's options carry -n (alone or
// in a group such as -Sn), reading them as sudo does: an option that takes
// a value takes the next word (or the rest of its group), and the first
// word that is not an option ends them.
func sudoNonInteractive(args []string) bool {
	const withValue = "CDghpRrTtUuc"
	n := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return n
		case a == "--non-interactive":
			n = true
		case strings.HasPrefix(a, "--"):
			if !strings.Contains(a, "=") && longWithValue[a] {
				i++
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			for j := 1; j < len(a); j++ {
				if a[j] == 'n' {
					n = true
				}
				if strings.IndexByte(withValue, a[j]) >= 0 {
					if j == len(a)-1 {
						i++
					}
					break
				}
			}
		default:
			return n
		}
	}
	return n
}

// longWithValue are sudo's long options that take the next word.
var longWithValue = map[string]bool{
	"--close-from": true, "--chdir": true, "--group": true, "--host": true, "--prompt": true,
	"--chroot": true, "--role": true, "--command-timeout": true, "--type": true, "--other-user": true,
	"--user": true, "--login-class": true,
}

// parseRun recognizes `[NAME=value...] /abs/interpreter [script [args...]]`.
func parseRun(call *syntax.CallExpr) (Step, bool) {
	var env []string
	for _, a := range call.Assigns {
		if a.Append || a.Naked || a.Index != nil || a.Array != nil || a.Name == nil || !envNameRE.MatchString(a.Name.Value) {
			return nil, false
		}
		v := ""
		if a.Value != nil {
			var ok bool
			v, _, ok = literalQuotedOnly(a.Value)
			if !ok {
				return nil, false
			}
		}
		env = append(env, a.Name.Value+"="+v)
	}
	if len(call.Args) == 0 {
		return nil, false
	}
	first, ok := literals(call.Args[:1])
	if !ok {
		return nil, false
	}
	interp := first[0]
	if !path.IsAbs(interp) || !strings.HasPrefix(path.Base(interp), "python") {
		return nil, false
	}
	r := Run{Env: env, Interpreter: interp}
	if len(call.Args) > 1 {
		rest, ok := pathExprs(call.Args[1:])
		if !ok || rest[0].Value == "" || !strings.HasSuffix(rest[0].Value, ".py") || !isTempPath(rest[0].Value) {
			return nil, false
		}
		r.Script = rest[0]
		r.Args = []string{}
		for _, a := range rest[1:] {
			r.Args = append(r.Args, a.Value)
		}
	}
	return r, true
}

// literals evaluates words that contain no expansions.
func literals(ws []*syntax.Word) ([]string, bool) {
	out := make([]string, len(ws))
	for i, w := range ws {
		v, tilde, ok := literal(w)
		if !ok || tilde {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

func pathExprs(ws []*syntax.Word) ([]PathExpr, bool) {
	out := make([]PathExpr, len(ws))
	for i, w := range ws {
		v, tilde, ok := literal(w)
		if !ok || v == "" || strings.ContainsAny(v, "*?[") {
			return nil, false
		}
		out[i] = PathExpr{Value: v, Tilde: tilde}
	}
	return out, true
}

// literalQuotedOnly is literal for assignment values, where a leading ~ is
// not expanded by every shell the same way: only quoted or plain text.
func literalQuotedOnly(w *syntax.Word) (string, bool, bool) {
	v, tilde, ok := literal(w)
	return v, tilde, ok && !tilde
}

// literal returns a word's value when it has no expansions: plain text,
// single quotes, and double quotes holding only text. tilde reports an
// unquoted leading ~, which the shell would expand.
func literal(w *syntax.Word) (string, bool, bool) {
	if w == nil || len(w.Parts) == 0 {
		return "", false, false
	}
	var b strings.Builder
	tilde := false
	for i, p := range w.Parts {
		switch p := p.(type) {
		case *syntax.Lit:
			v, ok := unescapeLit(p.Value)
			if !ok {
				return "", false, false
			}
			if i == 0 && strings.HasPrefix(v, "~") {
				tilde = true
			}
			b.WriteString(v)
		case *syntax.SglQuoted:
			if p.Dollar {
				return "", false, false
			}
			b.WriteString(p.Value)
		case *syntax.DblQuoted:
			if p.Dollar {
				return "", false, false
			}
			for _, q := range p.Parts {
				l, ok := q.(*syntax.Lit)
				if !ok {
					return "", false, false
				}
				b.WriteString(unescapeDbl(l.Value))
			}
		default:
			return "", false, false
		}
	}
	return b.String(), tilde, true
}

// unescapeLit removes the backslashes of unquoted text. Characters the
// shell would treat specially never reach here as Lit.
func unescapeLit(s string) (string, bool) {
	if !strings.Contains(s, `\`) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				return "", false
			}
			if s[i] == '\n' {
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String(), true
}

func unescapeDbl(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0 {
			i++
			if s[i] == '\n' {
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
