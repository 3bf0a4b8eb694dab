package audit

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFileReopens: lines go to the file open now; after logrotate moves
// it away, Open makes a new one at the path (mode 0600) and the moved
// file gets nothing more; a failed Open keeps the open file; a closed
// File takes no line, so the caller logs it instead.
func TestFileReopens(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "audit.log")
	var f File
	if f.Append([]byte("lost\n")) {
		t.Fatal("the zero File took a line")
	}
	if err := f.Open(p); err != nil {
		t.Fatal(err)
	}
	if !f.Append([]byte("one\n")) {
		t.Fatal("Append to an open file failed")
	}
	rotated := p + ".1"
	if err := os.Rename(p, rotated); err != nil {
		t.Fatal(err)
	}
	if err := f.Open(p); err != nil {
		t.Fatal(err)
	}
	f.Append([]byte("two\n"))
	if err := f.Open(filepath.Join(dir, "missing", "audit.log")); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
	f.Append([]byte("three\n"))
	f.Close()
	if f.Append([]byte("four\n")) {
		t.Error("a closed File took a line")
	}
	for path, want := range map[string]string{rotated: "one\n", p: "two\nthree\n"} {
		b, err := os.ReadFile(path)
		if err != nil || string(b) != want {
			t.Errorf("%s holds %q (%v), want %q", path, b, err, want)
		}
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("audit file mode: %v %v", fi, err)
	}
}
