package proxy

import (
	"context"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

// opsServer is a Server with a config file, as gomux serve makes it.
func opsServer(t *testing.T, body string) (*Server, string) {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("SSH_AUTH_SOCK", "")
	dir := t.TempDir()
	p := filepath.Join(dir, "gomux.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = filepath.Join(dir, "state")
	s, err := NewServer(cfg, nil, zerolog.New(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.pool.Close() })
	return s, p
}

func TestReloadSwapsPolicyAndLimitsKeepsRestartFields(t *testing.T) {
	s, p := opsServer(t, "targets:\n  - hosts: [a.example.com]\n    remote_users: [deploy]\nlimits:\n  max_channels_per_connection: 5\n")
	ctx := context.Background()
	if d := s.live().policy.Decide(ctx, "alice", "192.0.2.1", 22); d.Mode != ModeDeny {
		t.Fatalf("before: %v", d.Mode)
	}
	os.WriteFile(p, []byte("listen: 127.0.0.1:9999\nlog_level: debug\ntargets:\n  - cidrs: [192.0.2.0/24]\n    remote_users: [deploy]\nlimits:\n  max_channels_per_connection: 7\n  max_staged_mib: 1\n"), 0o600)
	keepState := func(c *Config) { c.StateDir = s.start.StateDir } // as -state does
	cfg, err := s.ReloadFile(p, nil, keepState, "test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LogLevel != "debug" {
		t.Fatalf("log level %q", cfg.LogLevel)
	}
	if d := s.live().policy.Decide(ctx, "alice", "192.0.2.1", 22); d.Mode != ModeAccelerate {
		t.Fatalf("after: %v %s", d.Mode, d.Reason)
	}
	if s.start.Listen != "127.0.0.1:2222" || s.start.Limits.MaxStagedMiB != 512 {
		t.Fatalf("restart-only fields changed by a reload: listen %s, max_staged_mib %d", s.start.Listen, s.start.Limits.MaxStagedMiB)
	}
	got := s.limits.Limits().MaxChannelsPerConnection
	if got != 7 {
		t.Fatalf("limits not reconfigured: %d", got)
	}
	file, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	keepState(file)
	if r := restartOnly(&s.start, &file.StartConfig); strings.Join(r, ",") != "listen,limits.max_staged_mib" {
		t.Fatalf("restart needed: %v", r)
	}

	// An invalid file: error, nothing changes.
	os.WriteFile(p, []byte("targets:\n  - hosts: [x]\n    mode: sideways\n"), 0o600)
	if _, err := s.ReloadFile(p, nil, nil, "test"); err == nil || !strings.Contains(err.Error(), "sideways") {
		t.Fatalf("invalid reload: %v", err)
	}
	os.WriteFile(p, []byte("auth:\n  authorized_keys: ["+p+"]\ntargets:\n  - hosts: [x]\n    remote_users: [deploy]\n"), 0o600)
	if _, err := s.ReloadFile(p, nil, nil, "test"); err == nil {
		t.Fatalf("reload with an unreadable authorized_keys accepted")
	}
	if d := s.live().policy.Decide(ctx, "alice", "192.0.2.1", 22); d.Mode != ModeAccelerate {
		t.Fatalf("a failed reload changed policy: %v", d.Mode)
	}
	m := httptest.NewRecorder()
	s.MetricsHandler().ServeHTTP(m, httptest.NewRequest("GET", "/metrics", nil))
	body := m.Body.String()
	if !strings.Contains(body, `gomux_config_reloads_total{result="ok"} 1`) || !strings.Contains(body, `gomux_config_reloads_total{result="failed"} 2`) {
		t.Fatalf("reload counters:\n%s", body)
	}
}

func TestHealthAndReady(t *testing.T) {
	s, _ := opsServer(t, "targets:\n  - hosts: ['*']\n    remote_users: ['*']\n")
	h := s.MetricsHandler()
	get := func(path string) int {
		r := httptest.NewRecorder()
		h.ServeHTTP(r, httptest.NewRequest("GET", path, nil))
		return r.Code
	}
	if get("/healthz") != 200 || get("/readyz") != 503 {
		t.Fatalf("before Serve: healthz %d readyz %d", get("/healthz"), get("/readyz"))
	}
	s.ready.Store(true)
	if get("/readyz") != 200 {
		t.Fatalf("serving: readyz %d", get("/readyz"))
	}
}

// TestNilMetrics: code without a Server (a Pool alone, gomux check)
// records nothing and does not panic.
func TestNilMetrics(t *testing.T) {
	var m *metrics
	m.frontConn("accepted")
	m.auth("publickey", true)
	m.channel("inner", "session")
	m.decision("front", Decision{})
	m.upstreamDial(nil)
	m.agentStart(nil)
	m.agentUpload(1)
	m.agentFallback()
	m.task("exec", false, 0, 0, 0)
	m.warm(true)
	m.reload(true)
	m.proxyHeader("ok")
	m.limit("login")
}

// TestKubernetesConfigMapLoads: the config in the Kubernetes manifest is
// one gomux accepts.
func TestKubernetesConfigMapLoads(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	b, err := os.ReadFile(filepath.Join("..", "deploy", "kubernetes", "gomux.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	for {
		var doc struct {
			Kind string
			Data map[string]string
		}
		if err := dec.Decode(&doc); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if doc.Kind != "ConfigMap" {
			continue
		}
		p := filepath.Join(t.TempDir(), "gomux.yaml")
		os.WriteFile(p, []byte(doc.Data["gomux.yaml"]), 0o600)
		cfg, err := LoadConfig(p)
		if err != nil {
			t.Fatalf("the ConfigMap's gomux.yaml: %v", err)
		}
		if cfg.MetricsListen == "" {
			t.Fatalf("the manifest's probes need metrics_listen")
		}
		if strings.HasPrefix(cfg.AdminSocketPath(), cfg.StateDir+"/") {
			t.Fatalf("admin socket %s in the read-only state dir", cfg.AdminSocketPath())
		}
		return
	}
	t.Fatal("no ConfigMap in the manifest")
}

// TestRestartOnlyAgentDial: upstream.agent_dial is the default the file's
// rules already took, so a reload applies it with them and does not call
// it restart-only.
func TestRestartOnlyAgentDial(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	rules := "targets: [{hosts: [a], remote_users: [deploy]}]\n"
	old, err := LoadConfig(writeConfig(t, rules))
	if err != nil {
		t.Fatal(err)
	}
	changed, err := LoadConfig(writeConfig(t, "upstream: {agent_dial: true}\n"+rules))
	if err != nil {
		t.Fatal(err)
	}
	if r := restartOnly(&old.StartConfig, &changed.StartConfig); len(r) != 0 {
		t.Errorf("agent_dial change needs a restart: %v", r)
	}
	if !changed.Targets[0].AgentDial || old.Targets[0].AgentDial {
		t.Errorf("the rules did not take upstream.agent_dial: %v %v", old.Targets[0].AgentDial, changed.Targets[0].AgentDial)
	}
	changed.Upstream.ConnectTimeout++
	if r := restartOnly(&old.StartConfig, &changed.StartConfig); strings.Join(r, ",") != "upstream" {
		t.Errorf("connect_timeout change: %v", r)
	}
}
