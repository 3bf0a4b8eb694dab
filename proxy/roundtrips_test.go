package proxy

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/shim"
)

// realAgent serves the real agent in this process, with HOME at home, and
// returns a client to it.
func realAgent(t *testing.T, home string) *agent.Client {
	t.Helper()
	t.Setenv("HOME", home)
	c2sR, c2sW := io.Pipe()
	s2cR, s2cW := io.Pipe()
	served := make(chan error, 1)
	go func() {
		srv := &agent.Server{Version: "test"}
		served <- srv.Serve(context.Background(), c2sR, s2cW)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.NewClient(ctx, s2cR, c2sW)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Errorf("agent did not stop after its client closed")
		}
	})
	return c
}

// TestShimCountsEveryRequest: the shim's round trips count every request
// that reaches the target on its behalf: a deferred temp dir removal, and
// a batch sent again, by Batch or by Start, after the agent's blob cache
// missed.
func TestShimCountsEveryRequest(t *testing.T) {
	home := t.TempDir()
	a := realAgent(t, home)
	host := shim.NewHost("u", home, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt := func() int64 { return host.Counters().RoundTrips }
	dropCache := func() {
		if err := os.RemoveAll(filepath.Join(home, ".cache", "gomux", "blobs")); err != nil {
			t.Fatal(err)
		}
	}
	module := []byte("print('module')\n" + strings.Repeat("#", 64<<10))
	write := func(name string) []agent.PrepOp {
		return []agent.PrepOp{{Op: "write", Path: filepath.Join(home, name), Mode: 0o600, Data: module}}
	}

	// A batch of owed ops counts once; resent after a cache miss, twice.
	if err := sendOps(ctx, a, host, write("first.py")); err != nil || rt() != 1 {
		t.Fatalf("first batch: %v, round trips %d, want 1", err, rt())
	}
	dropCache()
	if err := sendOps(ctx, a, host, write("second.py")); err != nil || rt() != 3 {
		t.Fatalf("batch after a cache miss: %v, round trips %d, want 3 (1 + sent and resent)", err, rt())
	}
	if b, _ := os.ReadFile(filepath.Join(home, "second.py")); string(b) != string(module) {
		t.Fatalf("resent batch wrote %d bytes", len(b))
	}

	// A pipelined run's whole stdin by reference, missed: Start resends it
	// after it returned, and the resend counts.
	parts := []agent.PrepPart{{Data: module}}
	run := func() {
		t.Helper()
		p, err := a.Start(agent.WithResent(ctx, host.CountRoundTrip), nil, &agent.ExecRequest{Command: "wc -c", Stdin: parts})
		if err != nil {
			t.Fatal(err)
		}
		go io.Copy(io.Discard, p.Stderr())
		out, _ := io.ReadAll(p.Stdout())
		if st, err := p.Wait(); err != nil || st.Code != 0 || strings.TrimSpace(string(out)) != "65552" {
			t.Fatalf("run: %q %+v %v", out, st, err)
		}
	}
	run() // caches the stdin's content
	before := rt()
	dropCache()
	run()
	if got := rt() - before; got != 1 {
		t.Fatalf("Start after a cache miss added %d round trips, want 1 (the resend)", got)
	}

	// A temp dir that reached the target is removed after the reply,
	// without waiting: that batch counts too.
	tmp := filepath.Join(home, ".ansible", "tmp")
	dir := filepath.Join(tmp, "ansible-tmp-1700000000.1-42-1234")
	mkdir := func(id string) string {
		d := filepath.Join(tmp, id)
		return "/bin/sh -c '( umask 77 && mkdir -p \"` echo " + tmp + " `\" && mkdir \"` echo " + d + " `\" && echo " + id + "=\"` echo " + d + " `\" ) && sleep 0'"
	}
	// The first temp dir step in the base runs on the target (here: by
	// hand), the next are answered locally.
	first := host.Exec(mkdir("ansible-tmp-1700000000.1-42-1000"), shim.ExecOptions{})
	if first.Reply {
		t.Fatalf("first temp dir step answered locally: %+v", first)
	}
	if err := os.MkdirAll(filepath.Join(tmp, "ansible-tmp-1700000000.1-42-1000"), 0o700); err != nil {
		t.Fatal(err)
	}
	first.Done(0)
	if p := host.Exec(mkdir("ansible-tmp-1700000000.1-42-1234"), shim.ExecOptions{}); !p.Reply {
		t.Fatalf("temp dir step not answered locally: %+v", p)
	}
	before = rt()
	p := host.Exec("/bin/sh -c '/usr/bin/python3 "+dir+"/AnsiballZ_ping.py && sleep 0'", shim.ExecOptions{})
	if _, err := a.Batch(ctx, p.Prep, nil); err != nil {
		t.Fatal(err)
	}
	p = host.Exec("/bin/sh -c 'rm -f -r "+dir+"/ > /dev/null 2>&1 && sleep 0'", shim.ExecOptions{})
	if !p.Reply || len(p.After) != 1 || p.After[0].Op != "remove_all" {
		t.Fatalf("rm: %+v, want a local reply and a deferred remove_all", p)
	}
	if err := sendOps(ctx, a, host, p.After); err != nil {
		t.Fatal(err)
	}
	if got := rt() - before; got != 2 {
		t.Fatalf("run and deferred removal: %d round trips, want 2", got)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir not removed: %v", err)
	}
}

// TestChannelConnDeadlines: deadlines on an inner connection's channel
// are refused, not silently ignored.
func TestChannelConnDeadlines(t *testing.T) {
	var c channelConn
	for name, set := range map[string]func(time.Time) error{
		"SetDeadline": c.SetDeadline, "SetReadDeadline": c.SetReadDeadline, "SetWriteDeadline": c.SetWriteDeadline,
	} {
		if err := set(time.Now()); !errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("%s: %v, want errors.ErrUnsupported", name, err)
		}
	}
}
