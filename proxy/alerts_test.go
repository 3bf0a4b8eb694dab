package proxy

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// rulesFile and rulesTests are the alert rules deploy/ ships and their
// promtool unit tests.
const (
	rulesFile  = "../deploy/prometheus/gomux-rules.yaml"
	rulesTests = "../deploy/prometheus/gomux-rules_test.yaml"
)

// scrape returns one metric's value from s's /metrics, false when absent.
func scrape(t *testing.T, s *Server, name string) (float64, bool) {
	t.Helper()
	r := httptest.NewRecorder()
	s.MetricsHandler().ServeHTTP(r, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(r.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f, true
		}
	}
	return 0, false
}

// TestMemoryCeilingGauge: gomux_memory_ceiling_bytes is the ceiling in
// force (limits.max_memory_mib, or 80% of the cgroup's limit when lower),
// and follows a reload, so an alert can compare memory with it.
func TestMemoryCeilingGauge(t *testing.T) {
	s, p := opsServer(t, "targets:\n  - hosts: ['*']\n    remote_users: ['*']\nlimits:\n  max_memory_mib: 300\n")
	if v, ok := scrape(t, s, "gomux_memory_ceiling_bytes"); !ok || v != float64(MemoryCeiling(s.config().Limits)) || v <= 0 {
		t.Fatalf("gomux_memory_ceiling_bytes = %v (present %v), want %d", v, ok, MemoryCeiling(s.config().Limits))
	}
	os.WriteFile(p, []byte("targets:\n  - hosts: ['*']\n    remote_users: ['*']\nlimits:\n  max_memory_mib: 200\n"), 0o600)
	keepState := func(c *Config) { c.StateDir = s.start.StateDir }
	cfg, err := s.ReloadFile(p, nil, keepState, "test")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := scrape(t, s, "gomux_memory_ceiling_bytes"); v != float64(MemoryCeiling(cfg.Limits)) {
		t.Fatalf("after reload: %v, want %d", v, MemoryCeiling(cfg.Limits))
	}
}

// TestDrainDeadlineGauge: gomux_drain_deadline_timestamp_seconds is 0
// until a drain starts, then the time at which it closes what is still
// open, so Prometheus sees a drain about to be cut short while gomux can
// still be scraped (a counter of cuts would die with the process).
func TestDrainDeadlineGauge(t *testing.T) {
	s, _ := opsServer(t, "targets:\n  - hosts: ['*']\n    remote_users: ['*']\n")
	if v, ok := scrape(t, s, "gomux_drain_deadline_timestamp_seconds"); !ok || v != 0 {
		t.Fatalf("before a drain: %v (present %v), want 0", v, ok)
	}
	deadline := time.Now().Add(time.Hour)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := scrape(t, s, "gomux_drain_deadline_timestamp_seconds"); v != float64(deadline.Unix()) {
		t.Fatalf("draining: %v, want %d", v, deadline.Unix())
	}
}

// rules is the part of a Prometheus rules file the tests read.
type rules struct {
	Groups []struct {
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestRulesUseExportedMetrics: every gomux_, go_ and process_ metric the
// alert rules name is one a gomux server exports (promtool's unit tests
// feed the rules made-up series, so a misspelt name would pass them), and
// every alert says how bad it is and what to do.
func TestRulesUseExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf rules
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatal(err)
	}
	s, _ := opsServer(t, "targets:\n  - hosts: ['*']\n    remote_users: ['*']\n")
	exportEverything(s.metrics)
	r := httptest.NewRecorder()
	s.MetricsHandler().ServeHTTP(r, httptest.NewRequest("GET", "/metrics", nil))
	exported := map[string]bool{}
	for _, line := range strings.Split(r.Body.String(), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			exported[f[2]] = true
		}
	}
	name := regexp.MustCompile(`\b(?:gomux|go|process)_[a-z_]+\b`)
	var alerts []string
	for _, g := range rf.Groups {
		for _, rule := range g.Rules {
			alerts = append(alerts, rule.Alert)
			for _, n := range name.FindAllString(rule.Expr, -1) {
				if base := strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"); !exported[n] && !exported[base] {
					t.Errorf("%s: gomux exports no %s", rule.Alert, n)
				}
			}
			if rule.Labels["severity"] == "" || rule.Annotations["summary"] == "" || rule.Annotations["description"] == "" {
				t.Errorf("%s: needs a severity label and summary and description annotations", rule.Alert)
			}
		}
	}
	for _, want := range []string{"GomuxDown", "GomuxNotReady", "GomuxUpstreamDialFailures", "GomuxAgentStartFailures",
		"GomuxAuthRejectionsSpike", "GomuxMemoryNearCeiling", "GomuxDrainCutShort"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s in %s", want, rulesFile)
		}
	}
}

// exportEverything records one of each event, so every labelled series
// appears in a scrape.
func exportEverything(m *metrics) {
	m.frontConn("accepted")
	m.auth("publickey", false)
	m.channel("front", "direct-tcpip")
	m.decision("front", Decision{Mode: ModeAccelerate})
	m.limit("login")
	m.upstreamDial(nil)
	m.agentStart(nil)
	m.agentUpload(1)
	m.agentFallback()
	m.task("exec", false, time.Millisecond, 1, 1)
	m.warm(true)
	m.reload(true)
	m.proxyHeader("ok")
}

// TestPromtoolRules runs Prometheus's own checker and the rules' unit
// tests (deploy/prometheus/gomux-rules_test.yaml: each alert fires on
// the series it is for, and stays quiet on healthy ones).
func TestPromtoolRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; make deps installs it): alert rules not checked")
	}
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", rulesTests}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
}
