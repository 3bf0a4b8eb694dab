package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
	"github.com/gomux/gomux/proxy"
)

// auditLines reads an audit file's JSON lines by event.
func auditLines(t *testing.T, path string) map[string][]map[string]any {
	t.Helper()
	out := map[string][]map[string]any{}
	for _, line := range strings.Split(readFile(t, path), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("audit line is not JSON: %q", line)
		}
		ev, _ := m["event"].(string)
		out[ev] = append(out[ev], m)
	}
	return out
}

// checkAuditSchema fails the test for an audit line that lacks a field
// its event always carries (proxy.AuditFields, docs/AUDIT.md), or whose
// event is not an audit event.
func checkAuditSchema(t *testing.T, lines map[string][]map[string]any) {
	t.Helper()
	for ev, es := range lines {
		fields, ok := proxy.AuditFields(ev)
		if !ok {
			t.Errorf("audit file holds a %q event, which is not in the audit schema", ev)
			continue
		}
		for _, e := range es {
			for _, f := range append(fields, "level", "time", "message") {
				if _, ok := e[f]; !ok {
					t.Errorf("%s line without %s: %v", ev, f, e)
				}
			}
		}
	}
}

// TestAuditFlood: a pre-auth flood from a few addresses, with real
// logins among it, at log_level warn. Before, each unauthenticated
// connection was a log line (a journald rate limit then dropped real
// logins' events with them), and a warn level silenced the audit events.
// Now every real login's event is in audit.log_file, and the flood is one
// line per source address per interval with its count.
// GOMUX_FLOOD sets the number of connections (make soak: 10,000).
func TestAuditFlood(t *testing.T) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("GOMUX_FLOOD")); err == nil && v > 0 {
		n = v
	}
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	g := startGomux(t, lab, gomuxOptions{LogLevel: "warn", Extra: "audit:\n  log_file: " + auditPath + "\n"})
	ctx := ctxT(t, 5*time.Minute)
	sources := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	var flood sync.WaitGroup
	start := time.Now()
	for i := range sources {
		flood.Add(1)
		go func(src string, count int) {
			defer flood.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
			for range count {
				c, err := d.Dial("tcp", g.Addr)
				if err != nil {
					continue
				}
				c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
				c.Close()
			}
		}(sources[i], n/len(sources))
	}
	const logins = 5
	for i := range logins {
		if r := runCmd(g.SSH(ctx, tg.Addr, fmt.Sprintf("echo login-%d", i)), nil); r.Code != 0 {
			t.Errorf("real login %d during the flood: %+v", i, r)
		}
	}
	flood.Wait()
	t.Logf("%d flood connections and %d logins in %v", n/len(sources)*len(sources), logins, time.Since(start))
	g.Stop() // the last counts are written at shutdown
	lines := auditLines(t, auditPath)
	checkAuditSchema(t, lines)
	accepted := 0
	for _, e := range lines[proxy.EventFrontAuth] {
		if e["result"] == "accepted" {
			accepted++
		}
	}
	if accepted != logins {
		t.Errorf("audit file has %d accepted front logins, want %d", accepted, logins)
	}
	if len(lines[proxy.EventChannel]) < logins || len(lines[proxy.EventPolicyDecision]) < logins {
		t.Errorf("audit file lacks the logins' decisions or commands: %d channel, %d policy_decision",
			len(lines[proxy.EventChannel]), len(lines[proxy.EventPolicyDecision]))
	}
	total := 0
	for _, e := range lines[proxy.EventFrontNoise] {
		if !strings.HasPrefix(e["source"].(string), "127.0.0.") {
			t.Errorf("noise line for an unexpected source: %v", e)
		}
		total += int(e["count"].(float64))
	}
	if nl := len(lines[proxy.EventFrontNoise]); nl == 0 || nl > 2*len(sources) {
		t.Errorf("%d front_noise lines for %d sources in one interval", nl, len(sources))
	}
	if total < n/len(sources)*len(sources)*9/10 {
		t.Errorf("the noise lines count %d connections of %d", total, n)
	}
	var all int
	for _, es := range lines {
		all += len(es)
	}
	t.Logf("audit file: %d lines, %d of them front_noise counting %d connections", all, len(lines[proxy.EventFrontNoise]), total)
	// At warn, the log itself holds no per-connection lines.
	if c := strings.Count(g.Log(), eventTag(proxy.EventConnection)); c > 0 {
		t.Errorf("%d per-connection lines in the log at warn", c)
	}
}
