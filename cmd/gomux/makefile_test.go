package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestMakefilePhonyListsTargets: the Makefile's .PHONY line names exactly
// its named targets, so `make fmt` cannot be advertised without existing
// and a new target cannot be skipped because a file of its name exists.
func TestMakefilePhonyListsTargets(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	var targets, phony []string
	rule := regexp.MustCompile(`^([a-z][a-z0-9_-]*):([^=]|$)`)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, ".PHONY:"); ok {
			phony = append(phony, strings.Fields(rest)...)
		} else if m := rule.FindStringSubmatch(line); m != nil {
			targets = append(targets, m[1])
		}
	}
	slices.Sort(targets)
	slices.Sort(phony)
	if len(targets) == 0 || !slices.Equal(targets, phony) {
		t.Errorf("Makefile targets %v, .PHONY %v: they must be the same", targets, phony)
	}
}
