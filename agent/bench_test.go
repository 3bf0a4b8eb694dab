package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// BenchmarkExecRoundTrip is one `true` through the agent: stream open,
// request, process start, exit report. The pipes are in memory, so this
// is the agent's own cost per task, without the network.
func BenchmarkExecRoundTrip(b *testing.B) {
	b.Setenv("HOME", b.TempDir())
	h := startAgent(b, "")
	for b.Loop() {
		execTrue(b, h.c)
	}
}

// BenchmarkExecRoundTripTCP is BenchmarkExecRoundTrip with the Server
// and the Client on the two ends of a real TCP connection over loopback,
// so the figure includes the kernel's socket path (syscalls, wakeups,
// Nagle off as Go sets it) that an SSH channel adds in production, but
// no SSH encryption and no network latency.
func BenchmarkExecRoundTripTCP(b *testing.B) {
	b.Setenv("HOME", b.TempDir())
	c := startAgentTCP(b)
	b.ReportAllocs()
	for b.Loop() {
		execTrue(b, c)
	}
}

// startAgentTCP serves a Server on one accepted connection of a listener
// on 127.0.0.1 and connects a Client to it. The server logs as
// startAgent's does, so the two round-trip figures differ only by the
// transport. Cleanup closes the client and waits for Serve to return.
func startAgentTCP(b *testing.B) *Client {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	srv := &Server{Version: "test", Log: slog.New(slog.NewTextHandler(testWriter{b}, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- fmt.Errorf("accept: %w", err)
			return
		}
		served <- srv.Serve(context.Background(), conn, conn)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c, err := NewClient(ctx, conn, conn)
	if err != nil {
		conn.Close()
		b.Fatalf("NewClient: %v", err)
	}
	b.Cleanup(func() {
		c.Close()
		select {
		case err := <-served:
			if err != nil {
				b.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			b.Errorf("Serve did not return after the client closed")
		}
	})
	return c
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

// execTrue is one task's worth of agent work: run /bin/true, drain its
// output, wait for its exit.
func execTrue(b *testing.B, c *Client) {
	p, err := c.Exec(b.Context(), ExecRequest{Argv: []string{"/bin/true"}})
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
