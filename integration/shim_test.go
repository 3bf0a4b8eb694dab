package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// TestShimSeedRoundTrips runs the seed playbook through gomux with
// pipelining off (the zero-change case) and reads gomux's counters: one
// round trip to the target per task, the rest answered in gomux, module
// archives sent once, and no temp dir left behind.
func TestShimSeedRoundTrips(t *testing.T) {
	lab := harness.Start(t, harness.Options{Targets: 1})
	g := startGomux(t, lab, gomuxOptions{})
	ctx := ctxT(t, 5*time.Minute)
	r := runPlaybook(ctx, t, lab, g, playbookPath("seed.yml"), "ANSIBLE_PIPELINING=False")
	if r.Err != nil {
		t.Fatalf("seed playbook: %v\n%s", r.Err, r.Output)
	}
	const tasks = 11 // gather facts and ten commands
	var runs []map[string]any
	var last map[string]any
	for _, e := range g.Events("channel") {
		if _, ok := e["round_trips"]; !ok {
			continue
		}
		last = e
		if e["step"] == "Run" {
			runs = append(runs, e)
		}
	}
	if last == nil {
		t.Fatalf("no counters logged:\n%s", g.Log())
	}
	if rt := last["round_trips"].(float64); rt != tasks {
		t.Errorf("round trips to the target: %v for %d tasks, want one per task", rt, tasks)
	}
	t.Logf("counters after the run: round_trips=%v local_steps=%v blob_bytes_sent=%v blob_bytes_saved=%v",
		last["round_trips"], last["local_steps"], last["blob_bytes_sent"], last["blob_bytes_saved"])
	if len(runs) != tasks {
		t.Fatalf("%d module runs logged, want %d", len(runs), tasks)
	}
	// Runs 2.. are facts then commands: from the second command on, the
	// command module's archive is cached on the target.
	for i := 3; i < len(runs); i++ {
		sent := runs[i]["blob_bytes_sent"].(float64) - runs[i-1]["blob_bytes_sent"].(float64)
		if sent >= 5<<10 {
			t.Errorf("task %d sent %v bytes of files upstream, want under 5 KB", i+1, sent)
		}
	}
	// The temp dirs are gone (their removal is sent without waiting).
	tmp := filepath.Join(lab.Home, ".ansible", "tmp")
	waitFor(t, 10*time.Second, func() bool {
		ents, _ := os.ReadDir(tmp)
		return len(ents) == 0
	})
}
