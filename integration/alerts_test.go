package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// tryScrape fetches /metrics, or says why not (the process may be gone).
func tryScrape(addr string) (string, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), err
}

// TestAlertInputsDuringDrain scrapes a real gomux serve the way
// Prometheus would while it drains with a busy session (a real ssh
// client running sleep on a real target through it): the series the
// GomuxDrainCutShort alert reads are there and make its expression
// true (ready 0, a connection open, the drain's deadline drain_timeout
// after SIGTERM and less than 20 s away), gomux then cuts the session
// as the alert warned, and gomux_memory_ceiling_bytes is the configured
// ceiling for GomuxMemoryNearCeiling.
func TestAlertInputsDuringDrain(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	tg := lab.Targets[0]
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	g := startGomux(t, lab, gomuxOptions{Extra: "metrics_listen: " + maddr + "\n", Limits: "  max_memory_mib: 300\n"})
	ctx := ctxT(t, 2*time.Minute)

	before := scrape(t, maddr)
	if c := metricSum(before, "gomux_memory_ceiling_bytes"); c <= 0 || c > 300<<20 {
		t.Errorf("gomux_memory_ceiling_bytes = %v, want the 300 MiB limits.max_memory_mib (or 80%% of a lower cgroup limit)", c)
	}
	if d := metricSum(before, "gomux_drain_deadline_timestamp_seconds"); d != 0 || !strings.Contains(before, "gomux_drain_deadline_timestamp_seconds 0") {
		t.Errorf("before a drain: gomux_drain_deadline_timestamp_seconds %v, want a 0 sample", d)
	}

	// A session that is busy through the whole drain.
	cmd := g.SSH(ctx, tg.Addr, "echo started; exec sleep 60")
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "started\n" {
		t.Fatalf("session: %q %v", line, err)
	}

	sigterm := time.Now()
	must(t, g.cmd.Process.Signal(syscall.SIGTERM))
	var text string
	var at time.Time
	waitFor(t, 5*time.Second, func() bool {
		at = time.Now()
		s, err := tryScrape(maddr)
		text = s
		return err == nil && strings.Contains(s, "\ngomux_ready 0\n")
	})
	deadline := metricSum(text, "gomux_drain_deadline_timestamp_seconds")
	open := metricSum(text, "gomux_connections_open")
	t.Logf("draining: gomux_ready 0, gomux_connections_open %v, gomux_drain_deadline_timestamp_seconds %v (SIGTERM at %d, drain_timeout 5s)", open, deadline, sigterm.Unix())
	// Shutdown takes its deadline (now + drain_timeout) between the
	// signal and the scrape; the gauge is in whole seconds.
	if deadline < float64(sigterm.Unix()+5-1) || deadline > float64(at.Unix()+5+1) {
		t.Errorf("drain deadline %v, want drain_timeout (5s) after SIGTERM (%d..%d)", deadline, sigterm.Unix()+5, at.Unix()+5)
	}
	// GomuxDrainCutShort's expression, evaluated at the scrape.
	if !(open > 0 && deadline > 0 && deadline-float64(at.Unix()) < 20) {
		t.Errorf("GomuxDrainCutShort's condition is false during a drain with a busy session: open %v, deadline %v", open, deadline)
	}

	// What the alert warned of happens: the drain ends at its deadline
	// with the session still running, and gomux closes it.
	select {
	case <-g.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("gomux did not exit after its drain timeout")
	}
	if !strings.Contains(g.Log(), "drain timeout, closing remaining connections") {
		t.Errorf("gomux did not log the cut drain:\n%s", g.Log())
	}
}
