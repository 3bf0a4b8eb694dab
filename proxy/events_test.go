package proxy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// eventFiles declare every event gomux logs: proxy's own, and the
// upstream pool's (which cannot import proxy).
var eventFiles = []string{"events.go", "upstream/events.go"}

// declaredEvents reads the Event constants from eventFiles: name by value.
func declaredEvents(t *testing.T) map[string]string {
	t.Helper()
	byValue := map[string]string{}
	for _, name := range eventFiles {
		declaredIn(t, name, byValue)
	}
	return byValue
}

// declaredIn adds the Event constants of one file to byValue.
func declaredIn(t *testing.T, name string, byValue map[string]string) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, sp := range gd.Specs {
			vs := sp.(*ast.ValueSpec)
			for i, n := range vs.Names {
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("%s is not a string literal", n.Name)
				}
				v, _ := strconv.Unquote(lit.Value)
				if prev, dup := byValue[v]; dup {
					t.Errorf("event %q declared twice: %s and %s", v, prev, n.Name)
				}
				byValue[v] = n.Name
				if !strings.HasPrefix(n.Name, "Event") {
					t.Errorf("%s: event constants are named Event...", n.Name)
				}
				if vs.Doc == nil || !strings.HasPrefix(vs.Doc.Text(), n.Name+" ") {
					t.Errorf("%s has no doc comment starting with its name", n.Name)
				}
			}
		}
	}
}

// TestEventsDeclared fails when a log line in proxy/ or cmd/gomux uses an
// event name that events.go does not declare, so the list operators and
// tests rely on stays complete.
func TestEventsDeclared(t *testing.T) {
	declared := declaredEvents(t)
	if len(declared) == 0 {
		t.Fatal("no events declared")
	}
	lit := regexp.MustCompile(`"event",\s*"([^"]*)"|"event":"([a-z_0-9]+)"`)
	files, _ := filepath.Glob("*.go")
	more, _ := filepath.Glob("../cmd/gomux/*.go")
	up, _ := filepath.Glob("upstream/*.go")
	adm, _ := filepath.Glob("admission/*.go") // takes its event names from events.go
	for _, f := range append(append(append(files, more...), up...), adm...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range lit.FindAllStringSubmatch(string(b), -1) {
			name := m[1] + m[2]
			if _, ok := declared[name]; !ok {
				t.Errorf("%s logs event %q, which no event file declares", f, name)
			}
		}
	}
}

// TestREADMEEventsDeclared: every event the README names is one gomux
// logs, so a renamed event cannot leave the README pointing at nothing.
func TestREADMEEventsDeclared(t *testing.T) {
	declared := declaredEvents(t)
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	named := regexp.MustCompile("\"event\":\"([a-z_]+)\"|`([a-z_]+)` events?\\b|\\bevents? `([a-z_]+)`")
	found := 0
	for _, m := range named.FindAllStringSubmatch(string(b), -1) {
		name := m[1] + m[2] + m[3]
		found++
		if _, ok := declared[name]; !ok {
			t.Errorf("README names event %q, which events.go does not declare", name)
		}
	}
	if found == 0 {
		t.Fatal("README names no event: the pattern above no longer matches how it writes them")
	}
}

// TestAuditSchemaDocumented: docs/AUDIT.md's table and AuditFields name
// the same events with the same fields.
func TestAuditSchemaDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "AUDIT.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| ([a-z_, ]+) \\|")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		documented[m[1]] = true
		want, ok := AuditFields(m[1])
		if !ok {
			t.Errorf("docs/AUDIT.md lists %s, which is not an audit event", m[1])
			continue
		}
		if got := strings.Split(m[2], ", "); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: documented fields %v, AuditFields %v", m[1], got, want)
		}
	}
	for value := range declaredEvents(t) {
		if _, ok := AuditFields(value); ok && !documented[value] {
			t.Errorf("audit event %s is not in docs/AUDIT.md", value)
		}
	}
	if len(documented) == 0 {
		t.Fatal("no table rows found in docs/AUDIT.md")
	}
}
