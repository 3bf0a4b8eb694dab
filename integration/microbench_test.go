package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/integration/harness"
)

// uploadBenchSize is the file BenchmarkUploadThroughput puts: large
// enough that the transfer, not the connection set-up, dominates.
const uploadBenchSize = 64 << 20

// uploadBenchRuns is how many uploads each path makes; the median counts.
const uploadBenchRuns = 3

// BenchmarkUploadThroughput is the real OpenSSH sftp client putting a
// 64 MiB random file on one target straight to its sshd and through gomux
// (`-J gomux`, served by the agent's file operations), uploadBenchRuns
// times each, alternating, at the lab RTT set by GOMUX_BENCH_RTT (default
// 0). Each figure is the median wall time of one `sftp -b` run, connection
// set-up included, as a user sees it; the median set-up time of an sftp
// that transfers nothing is reported beside it so the transfer alone can
// be told apart. Every upload's SHA-256 is checked on the target. Run with
// -benchtime 1x.
func BenchmarkUploadThroughput(b *testing.B) {
	rtt := time.Duration(0)
	if v := os.Getenv("GOMUX_BENCH_RTT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("GOMUX_BENCH_RTT: %v", err)
		}
		rtt = d
	}
	lab := harness.Start(b, harness.Options{Targets: 1, RTT: rtt})
	g := startGomux(b, lab, gomuxOptions{})
	target := lab.Targets[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	dir := b.TempDir()
	src := filepath.Join(dir, "upload.bin")
	want := writeUploadFile(b, src)
	emptyBatch := filepath.Join(dir, "connect-only")
	must(b, os.WriteFile(emptyBatch, []byte("pwd\n"), 0o600))

	paths := []struct {
		name string
		cmd  func(args ...string) *exec.Cmd
	}{
		{"direct", func(args ...string) *exec.Cmd {
			return lab.SFTPCommand(ctx, append(args, target.Addr)...)
		}},
		{"gomux", func(args ...string) *exec.Cmd {
			return exec.CommandContext(ctx, "sftp", append(append(g.ClientArgs(), args...), target.Addr)...)
		}},
	}
	sftp := func(cmd *exec.Cmd) time.Duration {
		start := time.Now()
		r := runCmd(cmd, nil)
		d := time.Since(start)
		if r.Code != 0 {
			b.Fatalf("%v: %+v", cmd.Args, r)
		}
		return d
	}
	// Warm both: gomux's upstream connection and agent, the target's
	// sshd and page cache; a user's second upload finds them so.
	for _, p := range paths {
		sftp(p.cmd("-b", emptyBatch))
	}

	b.ResetTimer()
	put := map[string][]time.Duration{}
	connect := map[string][]time.Duration{}
	for range b.N {
		for i := range uploadBenchRuns {
			for _, p := range paths {
				remote := fmt.Sprintf("gomux-upload-%s-%d", p.name, i)
				batch := filepath.Join(dir, "batch-"+remote)
				must(b, os.WriteFile(batch, []byte(fmt.Sprintf("put %s %s\n", src, remote)), 0o600))
				put[p.name] = append(put[p.name], sftp(p.cmd("-b", batch)))
				connect[p.name] = append(connect[p.name], sftp(p.cmd("-b", emptyBatch)))
				b.StopTimer()
				verifyUpload(ctx, b, target, filepath.Join(lab.Home, remote), want)
				b.StartTimer()
			}
		}
	}
	b.StopTimer()

	mbps := func(name string) float64 {
		return uploadBenchSize / 1e6 / uploadMedian(put[name]).Seconds()
	}
	direct, viaGomux := mbps("direct"), mbps("gomux")
	b.ReportMetric(direct, "direct-MB/s")
	b.ReportMetric(viaGomux, "gomux-MB/s")
	b.ReportMetric(viaGomux/direct, "ratio")
	b.ReportMetric(float64(uploadMedian(connect["direct"]).Microseconds())/1000, "direct-connect-ms")
	b.ReportMetric(float64(uploadMedian(connect["gomux"]).Microseconds())/1000, "gomux-connect-ms")
	fmt.Printf("sftp put 64 MiB, median of %d, RTT %v: direct %.1f MB/s, gomux %.1f MB/s (ratio %.2f); sftp set-up alone: direct %v, gomux %v\n",
		len(put["direct"]), rtt, direct, viaGomux, viaGomux/direct,
		uploadMedian(connect["direct"]).Round(time.Millisecond), uploadMedian(connect["gomux"]).Round(time.Millisecond))
}

// writeUploadFile writes uploadBenchSize pseudo-random (incompressible)
// bytes to p and returns their SHA-256 in hex.
func writeUploadFile(b *testing.B, p string) string {
	f, err := os.Create(p)
	must(b, err)
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(f, h), io.LimitReader(newPRNG(uploadBenchSize), uploadBenchSize))
	must(b, err)
	must(b, f.Close())
	return hex.EncodeToString(h.Sum(nil))
}

// verifyUpload checks, inside the target's namespace, that the uploaded
// file has the bytes that were sent, then removes it so runs do not pile
// up in the lab user's home.
func verifyUpload(ctx context.Context, b *testing.B, target *harness.Target, path, want string) {
	out, err := target.Exec(ctx, "sha256sum", path)
	if err != nil {
		b.Fatalf("sha256sum %s on target: %v %s", path, err, out)
	}
	if got, _, _ := strings.Cut(string(out), " "); got != want {
		b.Fatalf("%s on target: sha256 %s, sent %s", path, got, want)
	}
	if out, err := target.Exec(ctx, "rm", "-f", path); err != nil {
		b.Fatalf("rm %s on target: %v %s", path, err, out)
	}
}

// uploadMedian is the median of ds.
func uploadMedian(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
