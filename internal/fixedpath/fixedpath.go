// Package fixedpath holds the PATH that the shell programs gomux sends to
// targets set before they run a tool, and the check, for their tests,
// that no tool runs by a bare name before it is set.
//
// Such a program starts with whatever PATH the login user's shell gave
// it, or, in the become install step, whatever PATH the become method
// kept (su without -l keeps the caller's; so does sudo whose sudoers has
// no secure_path, since PATH is on its default env_keep list). A
// directory early in that PATH that someone else can write (the login
// user, for a program run as the become user) would have its fakes of
// mkdir or sha256sum run in the program's place.
package fixedpath

import (
	"fmt"
	"strings"

	"mvdan.cc/sh/v3/syntax"
)

// Path is the fixed PATH: system directories only, /usr first, so the
// tools are found on a merged /usr (where /bin is /usr/bin) and on a
// split one (mkdir in /bin, sha256sum in /usr/bin) alike.
const Path = "/usr/sbin:/usr/bin:/sbin:/bin"

// Set is the statement that fixes PATH, for the start of a program.
const Set = "PATH=" + Path + "; "

// builtins are the commands a program may run before PATH is fixed:
// POSIX shells (dash, bash, busybox ash) have them built in, so no PATH
// lookup happens.
var builtins = map[string]bool{
	"[": true, "test": true, "echo": true, "printf": true, "exec": true, "exit": true,
	"umask": true, "cd": true, "true": true, "false": true, ":": true, "set": true,
	"unset": true, "export": true, "shift": true, "return": true, "break": true, "continue": true,
}

// Unfixed parses the shell program src and returns the tools it runs by
// a bare name (no slash, not a builtin) where PATH is not known to be
// Path: before an unconditional `PATH=Path` in the same shell, after a
// PATH assignment of anything else, or in a subshell that did not
// inherit it. A `SHELL -c 'PROGRAM'` is checked as a program of its own
// that inherits the state. A command word that is not a literal (a
// variable holding a path the program built) is not counted. It fails
// when src does not parse, as `sh -n` would.
func Unfixed(src string) ([]string, error) {
	f, err := syntax.NewParser(syntax.Variant(syntax.LangPOSIX)).Parse(strings.NewReader(src), "")
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	c := &checker{}
	c.stmts(f.Stmts, false)
	return c.bare, c.err
}

type checker struct {
	bare []string
	err  error
}

// stmts walks a list of statements run in order in one shell, starting
// with PATH fixed or not, and says whether it is fixed at the end.
func (c *checker) stmts(list []*syntax.Stmt, fixed bool) bool {
	for _, st := range list {
		fixed = c.stmt(st, fixed)
	}
	return fixed
}

func (c *checker) stmt(st *syntax.Stmt, fixed bool) bool {
	if st.Background {
		c.cmd(st.Cmd, fixed)
		return fixed
	}
	return c.cmd(st.Cmd, fixed)
}

// cmd walks one command. Only a plain assignment statement changes the
// state for what follows; anything run conditionally or in a subshell
// leaves it as it was.
func (c *checker) cmd(n syntax.Command, fixed bool) bool {
	switch x := n.(type) {
	case *syntax.CallExpr:
		return c.call(x, fixed)
	case *syntax.BinaryCmd:
		// The right side of && and || runs after the left in the same
		// shell; a pipeline's sides run in subshells.
		after := c.stmt(x.X, fixed)
		if x.Op == syntax.AndStmt || x.Op == syntax.OrStmt {
			c.stmt(x.Y, after)
		} else {
			c.stmt(x.Y, fixed)
		}
	case *syntax.Subshell:
		c.stmts(x.Stmts, fixed)
	case *syntax.Block:
		c.stmts(x.Stmts, fixed)
	case *syntax.IfClause:
		for cl := x; cl != nil; cl = cl.Else {
			c.stmts(cl.Then, c.stmts(cl.Cond, fixed))
		}
	case *syntax.WhileClause:
		c.stmts(x.Do, c.stmts(x.Cond, fixed))
	case *syntax.ForClause:
		c.stmts(x.Do, fixed)
	case *syntax.CaseClause:
		c.words([]*syntax.Word{x.Word}, fixed)
		for _, it := range x.Items {
			c.stmts(it.Stmts, fixed)
		}
	default:
		c.err = fmt.Errorf("unexpected command %T", n)
	}
	return fixed
}

// call checks one simple command and returns the state after it.
func (c *checker) call(x *syntax.CallExpr, fixed bool) bool {
	for _, a := range x.Assigns {
		if a.Value != nil {
			c.words([]*syntax.Word{a.Value}, fixed)
		}
	}
	if len(x.Args) == 0 {
		for _, a := range x.Assigns {
			if a.Name.Value == "PATH" {
				fixed = a.Value != nil && a.Value.Lit() == Path
			}
		}
		return fixed
	}
	c.words(x.Args, fixed)
	args := x.Args
	if lit := args[0].Lit(); lit == "exec" && len(args) > 1 {
		args = args[1:]
	}
	name, ok := literal(args[0])
	switch {
	case !ok, strings.Contains(name, "/") && !isShell(name, args), builtins[name]:
	case isShell(name, args):
		if len(args) >= 3 {
			if prog, ok := literal(args[2]); ok {
				sub, err := Unfixed(prog)
				if err != nil {
					c.err = err
				}
				if !fixed {
					c.bare = append(c.bare, sub...)
				}
			}
		}
	case !fixed:
		c.bare = append(c.bare, name)
	}
	if name == "unset" {
		for _, a := range args[1:] {
			if a.Lit() == "PATH" {
				fixed = false
			}
		}
	}
	return fixed
}

// isShell says whether a command is `/bin/sh -c PROGRAM`.
func isShell(name string, args []*syntax.Word) bool {
	return name == "/bin/sh" && len(args) >= 3 && args[1].Lit() == "-c"
}

// words checks the command substitutions in ws: each runs in a subshell
// that inherits the state.
func (c *checker) words(ws []*syntax.Word, fixed bool) {
	for _, w := range ws {
		syntax.Walk(w, func(n syntax.Node) bool {
			if cs, ok := n.(*syntax.CmdSubst); ok {
				c.stmts(cs.Stmts, fixed)
				return false
			}
			return true
		})
	}
}

// literal is the value of a word with no expansions: plain, single- or
// double-quoted text.
func literal(w *syntax.Word) (string, bool) {
	var b strings.Builder
	for _, p := range w.Parts {
		switch x := p.(type) {
		case *syntax.Lit:
			b.WriteString(x.Value)
		case *syntax.SglQuoted:
			b.WriteString(x.Value)
		case *syntax.DblQuoted:
			for _, q := range x.Parts {
				l, ok := q.(*syntax.Lit)
				if !ok {
					return "", false
				}
				b.WriteString(l.Value)
			}
		default:
			return "", false
		}
	}
	return b.String(), true
}
