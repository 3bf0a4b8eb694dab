package upstream

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/agent/dist"
)

// TestLauncherPassesCacheDays: the launcher starts the cached agent with
// limits.agent_cache_days, which the agent's cache cleanup reads.
func TestLauncherPassesCacheDays(t *testing.T) {
	home := t.TempDir()
	data := []byte("#!/bin/sh\necho \"" + agent.Banner + " 1 $*\"\n")
	sum := sha256.Sum256(data)
	bin := dist.Binary{Arch: fakeAgent(t).Arch, SHA256: hex.EncodeToString(sum[:]), Data: data}
	if out, code := runScript(t, home, uploadScript(bin.SHA256), bin.Data); code != 0 || !strings.Contains(out, uploadedLine) {
		t.Fatalf("upload: %q %d", out, code)
	}
	out, _ := runScript(t, home, launcherScript(map[string]dist.Binary{bin.Arch: bin}, 12), nil)
	if out != agent.Banner+" 1 serve -cache-days 12\n" {
		t.Errorf("launcher said %q", out)
	}
}
