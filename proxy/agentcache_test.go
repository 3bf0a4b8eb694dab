package proxy

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

// TestAgentCacheDaysConfig: 30 days by default, a negative value refused,
// and a reload names a change as waiting for a restart (the pool holds
// the value).
func TestAgentCacheDaysConfig(t *testing.T) {
	var l LimitsConfig
	l.applyDefaults()
	if l.AgentCacheDays != 30 {
		t.Errorf("default agent_cache_days %d, want 30", l.AgentCacheDays)
	}
	l.AgentCacheDays = -1
	if err := l.validate(); err == nil || !strings.Contains(err.Error(), "agent_cache_days") {
		t.Errorf("negative agent_cache_days: %v", err)
	}
	old := &StartConfig{Limits: LimitsConfig{AgentCacheDays: 30}}
	cfg := *old
	cfg.Limits.AgentCacheDays = 7
	if got := strings.Join(restartOnly(old, &cfg), ","); got != "limits.agent_cache_days" {
		t.Errorf("restart needed for %q", got)
	}
}
