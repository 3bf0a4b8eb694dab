package agent

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkExecRoundTrip is one `true` through the agent: stream open,
// request, process start, exit report. The pipes are in memory, so this
// is the agent's own cost per task, without the network.
func BenchmarkExecRoundTrip(b *testing.B) {
	b.Setenv("HOME", b.TempDir())
	h := startAgent(b, "")
	for b.Loop() {
		p, err := h.c.Exec(b.Context(), ExecRequest{Argv: []string{"/bin/true"}})
		if err != nil {
			b.Fatal(err)
		}
		p.Stdin().Close()
		io.Copy(io.Discard, p.Stdout())
		io.Copy(io.Discard, p.Stderr())
		if _, err := p.Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBatchWrite is the throughput of uploads in a batch (4 MiB
// files, uncached content).
func BenchmarkBatchWrite(b *testing.B) {
	b.Setenv("HOME", b.TempDir())
	h := startAgent(b, "")
	dir := b.TempDir()
	data := bytes.Repeat([]byte("gomux!!!"), 512<<10)
	b.SetBytes(int64(len(data)))
	i := 0
	for b.Loop() {
		i++
		data[0] = byte(i) // new content each time: no cache hit
		data[1] = byte(i >> 8)
		if _, err := h.c.Batch(b.Context(), []PrepOp{{Op: "write", Path: dir + "/f", Data: data}}, nil); err != nil {
			b.Fatal(err)
		}
	}
}
