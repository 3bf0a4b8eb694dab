// Package dist carries the gomux-agent binaries inside gomux, so one gomux
// binary can start its agent on any supported target without a package
// repository or a second download.
package dist

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"

	"github.com/gomux/gomux/target"
)

//go:embed all:bin
var files embed.FS

// Binary is one embedded agent build.
type Binary struct {
	// Arch is the GOARCH it was built for.
	Arch string
	// SHA256 is the hex digest the target-side launcher verifies before it
	// runs the cached file; it also names that file.
	SHA256 string
	// Data is the executable.
	Data []byte
}

// Load returns the embedded binaries that are present. Missing ones are not
// an error here: a gomux built without `make` still serves targets in
// fallback mode, and says why in its logs.
func Load() (map[string]Binary, error) {
	out := map[string]Binary{}
	for _, arch := range target.Arches() {
		a := arch.GOARCH
		b, err := fs.ReadFile(files, "bin/gomux-agent-linux-"+a)
		if err != nil {
			continue
		}
		if len(b) == 0 {
			return nil, fmt.Errorf("embedded agent for %s is empty", a)
		}
		sum := sha256.Sum256(b)
		out[a] = Binary{Arch: a, SHA256: hex.EncodeToString(sum[:]), Data: b}
	}
	return out, nil
}
