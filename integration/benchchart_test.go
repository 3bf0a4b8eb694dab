package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/internal/benchchart"
)

// benchChartSVG draws a workload's wall time per mode as its table has
// them (medians; a mode without one marked failed), for
// bench-results/<workload>.svg.
func benchChartSVG(w benchWorkload, reps int, modes []benchMode, samples map[string][]benchSample) ([]byte, error) {
	sub := fmt.Sprintf("%s, %d targets, RTT %v, median of %d", w.playbook, w.targets, w.rtt, reps)
	if w.bastion {
		sub += ", gomux as a bastion next to the targets"
	}
	c := benchchart.Chart{Title: w.name, Subtitle: sub}
	for _, m := range modes {
		s, ok := medianSample(samples[m.name])
		c.Bars = append(c.Bars, benchchart.Bar{Mode: m.name, Seconds: s.wall.Seconds(), Failed: !ok})
	}
	return benchchart.SVG(c)
}

// TestBenchChart: a workload's chart has one bar per mode with a median,
// in the table's order, and marks a mode without one as failed.
func TestBenchChart(t *testing.T) {
	w := benchWorkload{name: "seed-2h-50ms", playbook: "seed.yml", targets: 2, rtt: 50 * time.Millisecond}
	modes := []benchMode{{name: "stock"}, {name: "mitogen_linear"}, {name: "gomux", via: "gomux"}, {name: "gomux_pipe", via: "gomux"}}
	samples := map[string][]benchSample{
		"stock":          {{wall: 3 * time.Second}, {wall: 2 * time.Second}, {wall: 4 * time.Second}},
		"mitogen_linear": {{wall: 1500 * time.Millisecond}},
		"gomux":          {{wall: 1200 * time.Millisecond}},
	}
	b, err := benchChartSVG(w, 3, modes, samples)
	if err != nil {
		t.Fatal(err)
	}
	svg := string(b)
	for _, want := range []string{
		`data-mode="stock"`, `data-mode="mitogen_linear"`, `data-mode="gomux"`, `>3.00 s</text>`,
		`seed-2h-50ms`, `seed.yml, 2 targets, RTT 50ms, median of 3`, `>gomux_pipe</text>`, `class="failed">failed</text>`,
	} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %s", want)
		}
	}
	if n := strings.Count(svg, `class="bar"`); n != 3 {
		t.Errorf("%d bars, want 3", n)
	}
}
