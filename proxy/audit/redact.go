package audit

import (
	"path"
	"regexp"
	"sort"
	"strings"

	"mvdan.cc/sh/v3/syntax"

	"github.com/gomux/gomux/shim"
	"github.com/gomux/gomux/target"
)

// redacted replaces a secret in a logged command.
const redacted = "***"

// maxRedactDepth bounds how deep nested sh -c scripts are followed.
const maxRedactDepth = 6

// RedactCommand returns cmd with the value of every NAME=value assignment
// replaced by ***, so what Ansible's environment: puts in front of a module
// run (often passwords and tokens) never reaches the log. It redacts
// prefix assignments (FOO=x cmd), declarations (export FOO=x), NAME=value
// arguments (env FOO=x, sudo FOO=x) and, recursively, the same inside any
// quoted argument that is itself a script (sh -c '...', however deeply
// quoted). A command the parser cannot read is redacted by pattern, so
// failing to parse never means logging a secret.
func RedactCommand(cmd string) string {
	return redactScript(cmd, 0)
}

// redactScript redacts one script, depth levels of sh -c deep.
func redactScript(src string, depth int) string {
	if depth > maxRedactDepth || !strings.Contains(src, "=") {
		return src
	}
	if shim.TooNested(src) {
		// Parsing it could cost gomux hundreds of MiB of stack.
		return redactByPattern(src)
	}
	f, err := syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(strings.NewReader(src), "")
	if err != nil {
		return redactByPattern(src)
	}
	r := redactions{depth: depth}
	syntax.Walk(f, func(n syntax.Node) bool {
		switch n := n.(type) {
		case *syntax.Assign:
			r.assign(n)
		case *syntax.CallExpr:
			r.call(n)
		}
		return true
	})
	return r.apply(src)
}

// redactions are the replacements redactScript makes in one script.
type redactions struct {
	depth int
	rs    []replacement
}

// replacement replaces src[start:end] with text.
type replacement struct {
	start, end uint
	text       string
}

func (r *redactions) add(n syntax.Node, text string) {
	r.rs = append(r.rs, replacement{n.Pos().Offset(), n.End().Offset(), text})
}

// assign redacts the value of NAME=value, NAME=(...) and declarations.
func (r *redactions) assign(n *syntax.Assign) {
	if n.Value != nil {
		r.add(n.Value, redacted)
	}
	if n.Array != nil {
		r.add(n.Array, "("+redacted+")")
	}
}

// call redacts a command's NAME=value arguments (env, sudo) and, inside
// an argument that is itself a script (sh -c), whatever that script holds.
func (r *redactions) call(n *syntax.CallExpr) {
	if len(n.Args) == 0 {
		return
	}
	if name, _ := wordLiteral(n.Args[0]); path.Base(name) == "dd" {
		// dd's operands are of=path and the like, not variables.
		return
	}
	prev := ""
	for _, w := range n.Args[1:] {
		v, ok := wordLiteral(w)
		script := isScriptFlag(prev)
		prev = v
		if !ok {
			continue
		}
		if !script && assignmentWord.MatchString(v) {
			r.add(w, v[:strings.IndexByte(v, '=')+1]+redacted)
			continue
		}
		if inner := redactScript(v, r.depth+1); inner != v {
			r.add(w, target.Quote(inner))
		}
	}
}

// apply returns src with the replacements made. Of overlapping ones it
// keeps the outermost: a rewritten word already covers the assignments
// inside it.
func (r *redactions) apply(src string) string {
	rs := r.rs
	if len(rs) == 0 {
		return src
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].start != rs[j].start {
			return rs[i].start < rs[j].start
		}
		return rs[i].end > rs[j].end
	})
	var b strings.Builder
	pos := uint(0)
	for _, r := range rs {
		if r.start < pos || r.end > uint(len(src)) {
			continue
		}
		b.WriteString(src[pos:r.start])
		b.WriteString(r.text)
		pos = r.end
	}
	b.WriteString(src[pos:])
	return b.String()
}

// isScriptFlag says whether an argument is sh's -c (alone or in a
// cluster such as -ec), after which comes a script rather than NAME=value.
func isScriptFlag(arg string) bool {
	return len(arg) > 1 && arg[0] == '-' && arg[1] != '-' && strings.IndexByte(arg, 'c') > 0
}

// assignmentWord is an argument of the form NAME=value.
var assignmentWord = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

// assignmentPattern finds NAME=value in text the parser could not read;
// the value runs to the next blank, quote or shell operator.
var assignmentPattern = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*=)(\([^)]*\)?|'[^']*'?|"[^"]*"?|[^\s;&|()'"]*)`)

func redactByPattern(s string) string {
	return assignmentPattern.ReplaceAllString(s, "${1}"+redacted)
}

// wordLiteral returns the value of a word made only of literal text and
// quotes, as the shell would see it; false when it expands anything.
func wordLiteral(w *syntax.Word) (string, bool) {
	var b strings.Builder
	for _, p := range w.Parts {
		switch p := p.(type) {
		case *syntax.Lit:
			b.WriteString(unescape(p.Value, func(byte) bool { return true }))
		case *syntax.SglQuoted:
			if p.Dollar {
				return "", false
			}
			b.WriteString(p.Value)
		case *syntax.DblQuoted:
			for _, q := range p.Parts {
				l, ok := q.(*syntax.Lit)
				if !ok {
					return "", false
				}
				b.WriteString(unescape(l.Value, func(c byte) bool { return strings.IndexByte("$`\"\\\n", c) >= 0 }))
			}
		default:
			return "", false
		}
	}
	return b.String(), true
}

// unescape removes the backslashes the shell removes: before any byte
// outside quotes, before $ ` " \ and newline inside double quotes.
func unescape(s string, escapable func(byte) bool) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) && escapable(s[i+1]) {
			i++
			if s[i] == '\n' {
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
