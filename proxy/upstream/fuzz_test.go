package upstream

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/gomux/gomux/agent"
)

// FuzzReadLauncherStatus feeds what a target's login shell and launcher
// print before the agent speaks: whatever they print, the reader returns
// one status line it recognized or an error, within its 64 KiB bound.
func FuzzReadLauncherStatus(f *testing.F) {
	f.Add([]byte("motd\r\nGOMUX-NEED-AGENT abc x86_64\n"))
	f.Add([]byte("GOMUX-NO-AGENT no agent build for machine sparc\n"))
	f.Add([]byte(strings.Repeat("x", 70<<10)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		line, err := readLauncherStatus(bufio.NewReaderSize(bytes.NewReader(in), 64<<10))
		if err != nil {
			return
		}
		if !strings.HasPrefix(line, needAgentLine) && !strings.HasPrefix(line, noAgentLine) && !strings.HasPrefix(line, agent.Banner+" ") {
			t.Fatalf("returned a line it should not recognize: %q", line)
		}
		if len(line) > len(in) {
			t.Fatalf("line longer than the input: %d > %d", len(line), len(in))
		}
	})
}
