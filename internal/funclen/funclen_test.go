package funclen

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// checked are the trees whose functions are held to MaxLines, relative to
// this directory; their subpackages are checked too.
var checked = []string{"../../agent", "../../proxy", "../../shim"}

// sources lists the non-test Go files under the checked trees.
func sources(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, root := range checked {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || d.Name() == "dist") {
				return filepath.SkipDir
			}
			if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
				out = append(out, path)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("list %s: %v", root, err)
		}
	}
	return out
}

func TestFunctionsAreShortOrSayWhy(t *testing.T) {
	fset := token.NewFileSet()
	n := 0
	for _, path := range sources(t) {
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			t.Fatalf("parse %s: %v", path, err)
		}
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			n++
			lines := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			if lines > MaxLines && !saysWhy(fd.Doc) {
				t.Errorf("%s: %s is %d lines (limit %d): split it, or say why it stays long in a doc comment line starting with \"long:\"",
					fset.Position(fd.Pos()), fd.Name.Name, lines, MaxLines)
			}
		}
	}
	if n == 0 {
		t.Fatal("no functions found: the package paths are wrong")
	}
}

func saysWhy(doc *ast.CommentGroup) bool {
	if doc == nil {
		return false
	}
	for _, c := range doc.List {
		if strings.HasPrefix(strings.TrimSpace(strings.TrimPrefix(c.Text, "//")), "long:") {
			return true
		}
	}
	return false
}
