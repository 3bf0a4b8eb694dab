package target

import (
	_ "embed"
	"fmt"
	"strings"
)

//go:embed arches
var archesFile string

// Arch is one machine type gomux has an agent build for.
type Arch struct {
	// GOARCH is what the agent is built for and embedded under.
	GOARCH string
	// Machines are the names `uname -m` prints on such a machine, the
	// GOARCH last: the launcher picks the build by them.
	Machines []string
}

// Arches lists the machine types of the file arches, in its order. The
// Makefile builds an agent for each, agent/dist embeds them and the
// launcher maps `uname -m` to one.
func Arches() []Arch {
	arches, err := parseArches(archesFile)
	if err != nil {
		// The file is embedded: TestArches sees this first.
		panic(err)
	}
	return arches
}

// ArchOf is the GOARCH of the machine type that `uname -m` calls machine
// (the launcher reports it so), and false when there is no agent build
// for it.
func ArchOf(machine string) (string, bool) {
	for _, a := range Arches() {
		for _, m := range a.Machines {
			if m == machine {
				return a.GOARCH, true
			}
		}
	}
	return "", false
}

// parseArches reads the arches file: comments (#) and blank lines aside,
// a GOARCH then its other machine names on each line.
func parseArches(src string) ([]Arch, error) {
	var out []Arch
	seen := map[string]bool{}
	for i, line := range strings.Split(src, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		for _, n := range f {
			if Quote(n) != n || seen[n] {
				return nil, fmt.Errorf("arches line %d: %q is not a plain, unique name", i+1, n)
			}
			seen[n] = true
		}
		out = append(out, Arch{GOARCH: f[0], Machines: append(f[1:len(f):len(f)], f[0])})
	}
	return out, nil
}
