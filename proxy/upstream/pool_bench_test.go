package upstream

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/agent/dist"
)

// upstreamHelperEnv makes the test binary, re-executed, act as the
// upstream side of BenchmarkPoolIdleMemory (see runUpstreamHelper), so the
// benchmark's own process holds nothing but the proxy side.
const upstreamHelperEnv = "GOMUX_POOL_BENCH_UPSTREAM"

// TestMain only diverts to the upstream helper when the benchmark asked
// for it; a normal `go test` goes straight to m.Run.
func TestMain(m *testing.M) {
	if os.Getenv(upstreamHelperEnv) == "1" {
		os.Exit(runUpstreamHelper())
	}
	os.Exit(m.Run())
}

// BenchmarkPoolIdleMemory is what idle pooled upstream sessions cost the
// proxy: an SSH client connection with its keepalive, the agent's exec
// channel and the yamux session over it, as the pool holds them between
// tasks. It opens 100 and then 1,000 of them (distinct remote users, so
// distinct pool keys) against an SSH server in a helper process, which
// serves the real agent protocol (an agent.Server on the exec channel).
// The "used" runs first move 256 KiB each way through every session (as a
// module upload and a fetch would) before it goes idle, so buffers that
// grow with traffic are counted too.
//
// It reports, after GC and against a baseline taken just before the
// sessions were opened: the process's RSS in total (rss-MiB, from VmRSS)
// and per session, heap and stack per session (HeapInuse and
// StackInuse), Sys per session and goroutines per session. ns/op is the
// time to open all of them. Run with -benchtime 1x.
func BenchmarkPoolIdleMemory(b *testing.B) {
	var lines []string
	for _, used := range []bool{false, true} {
		for _, n := range []int{100, 1000} {
			name := "sessions=" + strconv.Itoa(n)
			if used {
				name += "/used"
			}
			b.Run(name, func(b *testing.B) {
				// Sockets, the known_hosts read per dial, a few spare.
				if err := raiseNOFILE(uint64(n) + 256); err != nil {
					b.Skipf("cannot open %d connections: %v", n, err)
				}
				addr, hostKey := startUpstreamHelper(b)
				dir := b.TempDir()
				cfg := benchPoolConfig(b, dir, addr, hostKey)
				var m idleMeasure
				for range b.N {
					m = measureIdleSessions(b, cfg, addr, n, used)
				}
				per := func(v float64) float64 { return v / float64(n) }
				b.ReportMetric(m.rss/(1<<20), "rss-MiB")
				b.ReportMetric(per(m.rss), "rss-B/session")
				b.ReportMetric(per(m.heap+m.stack), "B/session")
				b.ReportMetric(per(m.heap), "heap-B/session")
				b.ReportMetric(per(m.stack), "stack-B/session")
				b.ReportMetric(per(m.sys), "sys-B/session")
				b.ReportMetric(per(float64(m.goroutines)), "goroutines/session")
				lines = append(lines, fmt.Sprintf("%-5d %-5v %8.1f MiB RSS  %6.1f KiB RSS/session  %6.1f KiB heap+stack/session (%.1f heap, %.1f stack)  %4.1f goroutines/session",
					n, used, m.rss/(1<<20), per(m.rss)/1024, per(m.heap+m.stack)/1024, per(m.heap)/1024, per(m.stack)/1024, per(float64(m.goroutines))))
			})
		}
	}
	if len(lines) > 0 {
		fmt.Printf("proxy memory for idle upstream sessions (agent over yamux), growth after GC:\nsessions used\n%s\n", strings.Join(lines, "\n"))
	}
}

// idleMeasure is the growth of the proxy process across opening the
// sessions, in bytes (goroutines in number).
type idleMeasure struct {
	heap, stack, sys, rss float64
	goroutines            int
}

// benchPoolConfig is a pool that logs in with a fresh key, verifies the
// helper's host key from known_hosts, and believes every target has the
// agent cached (the helper answers the launcher with a running agent).
func benchPoolConfig(b testing.TB, dir, addr string, hostKey gossh.PublicKey) PoolConfig {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	blk, err := gossh.MarshalPrivateKey(priv, "gomux-bench")
	if err != nil {
		b.Fatal(err)
	}
	id := filepath.Join(dir, "id_ed25519")
	kh := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(id, pem.EncodeToMemory(blk), 0o600); err != nil {
		b.Fatal(err)
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostKey) + "\n"
	if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
		b.Fatal(err)
	}
	return PoolConfig{
		Upstream: Config{
			IdentityFiles:     []string{id},
			UseSSHAgent:       false,
			KnownHosts:        []string{kh},
			ConnectTimeout:    30 * time.Second,
			KeepaliveInterval: 15 * time.Second,
			KeepaliveCountMax: 3,
			IdleTimeout:       time.Hour,
			Agent:             true,
		},
		StateDir: filepath.Join(dir, "state"),
		// Only the launcher's hash check reads this; the helper never
		// asks for an upload.
		Agents: map[string]dist.Binary{runtime.GOARCH: {Arch: runtime.GOARCH, SHA256: strings.Repeat("0", 64)}},
	}
}

// measureIdleSessions opens n pooled sessions with their agents on a fresh
// pool, releases every lease (the sessions stay, idle), and returns how
// much the process grew. The pool is closed before it returns.
func measureIdleSessions(b *testing.B, cfg PoolConfig, addr string, n int, used bool) idleMeasure {
	b.StopTimer()
	pool, err := NewPool(cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	before, gBefore := settledMemory(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	b.StartTimer()
	users := make(chan string)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for u := range users {
				errs <- openIdle(ctx, pool, addr, u, used)
			}
		})
	}
	for i := range n {
		users <- fmt.Sprintf("bench%04d", i)
	}
	close(users)
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	if got := pool.Len(); got != n {
		b.Fatalf("pool holds %d connections, want %d", got, n)
	}
	after, gAfter := settledMemory(b)
	writeIdleProfiles(b, n, used)
	return idleMeasure{
		heap:       float64(after.heap) - float64(before.heap),
		stack:      float64(after.stack) - float64(before.stack),
		sys:        float64(after.sys) - float64(before.sys),
		rss:        float64(after.rss) - float64(before.rss),
		goroutines: gAfter - gBefore,
	}
}

// openIdle acquires the session for user, starts its agent and releases
// the lease, leaving the session as the pool keeps it between tasks.
// With used, the session first carries usedBytes each way.
func openIdle(ctx context.Context, pool *Pool, addr, user string, used bool) error {
	l, err := pool.Acquire(ctx, Target{Host: addr, Dial: addr, User: user})
	if err != nil {
		return fmt.Errorf("acquire %s: %w", user, err)
	}
	defer l.Release()
	st, err := l.Agent(ctx)
	if err != nil {
		return fmt.Errorf("agent for %s: %w", user, err)
	}
	if st.Mode != ModeAgent {
		return fmt.Errorf("agent for %s: pool fell back to plain channels: %s", user, st.Reason)
	}
	a := st.Agent
	if used {
		if err := useSession(ctx, a); err != nil {
			return fmt.Errorf("use session %s: %w", user, err)
		}
	}
	return nil
}

// usedBytes is what a "used" session carries each way: about a large
// module's upload and a fetch.
const usedBytes = 256 << 10

// useSession writes usedBytes to /dev/null on the target and reads
// usedBytes of the test binary back (the helper runs the same binary), in
// 32 KiB requests as sftp would, through the agent's file operations.
func useSession(ctx context.Context, a *agent.Client) error {
	w, err := a.Open(ctx, os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	for off := 0; off < usedBytes; off += len(buf) {
		if _, err := w.WriteAt(buf, int64(off)); err != nil {
			w.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	r, err := a.Open(ctx, os.Args[0], os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	for off := 0; off < usedBytes; off += len(buf) {
		if _, err := r.ReadAt(buf, int64(off)); err != nil {
			return err
		}
	}
	return nil
}

// writeIdleProfiles writes the goroutine and heap profiles of the idle
// sessions into $GOMUX_POOL_BENCH_PROFILES, when set, as
// goroutine-<n>.txt and heap-<n>.pb.gz (read with go tool pprof
// -sample_index=inuse_space): what each idle upstream holds, by function
// and by allocation site.
func writeIdleProfiles(b *testing.B, n int, used bool) {
	dir := os.Getenv("GOMUX_POOL_BENCH_PROFILES")
	if dir == "" {
		return
	}
	for _, p := range []struct {
		name, file string
		debug      int
	}{{"goroutine", fmt.Sprintf("goroutine-%d-%v.txt", n, used), 1}, {"heap", fmt.Sprintf("heap-%d-%v.pb.gz", n, used), 0}} {
		f, err := os.Create(filepath.Join(dir, p.file))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.Lookup(p.name).WriteTo(f, p.debug); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// settleGCs is how many collections settledMemory runs.
const settleGCs = 5

type memSample struct{ heap, stack, sys, rss uint64 }

// settledMemory lets just-finished goroutines exit, collects garbage and
// returns the process's memory and goroutine count. A GC halves at most
// the stacks of goroutines using under a quarter of theirs (those grown
// by the key exchange, say); a gomux left idle gets a GC at least every
// two minutes, so its stacks end up as small as a few GCs here make them.
func settledMemory(b *testing.B) (memSample, int) {
	time.Sleep(200 * time.Millisecond)
	for range settleGCs {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err := processRSS()
	if err != nil {
		b.Fatal(err)
	}
	return memSample{heap: ms.HeapInuse, stack: ms.StackInuse, sys: ms.Sys, rss: rss}, runtime.NumGoroutine()
}

// processRSS reads this process's resident set size from /proc.
func processRSS() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("rss: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("rss: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("rss: no VmRSS in /proc/self/status")
}

// raiseNOFILE makes sure this process may hold need descriptors, raising
// the soft limit (and the hard one, which root may) when it is lower.
func raiseNOFILE(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	lim.Cur = need
	if lim.Max < need {
		lim.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("setrlimit NOFILE %d: %w", need, err)
	}
	return nil
}

// startUpstreamHelper runs the test binary as the upstream helper and
// returns the address it serves SSH on and its host key. Cleanup kills it
// by PID and waits for it.
func startUpstreamHelper(b testing.TB) (string, gossh.PublicKey) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), upstreamHelperEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close() // the helper exits when its stdin ends
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("upstream helper: %v", err)
	}
	addr, key, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		b.Fatalf("upstream helper said %q", line)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(key))
	if err != nil {
		b.Fatalf("upstream helper host key: %v", err)
	}
	return addr, pub
}

// runUpstreamHelper is the helper process: an SSH server on 127.0.0.1
// that lets any user in with any key and answers the pool's agent
// launcher the way a target with the agent cached does, by serving a real
// agent.Server on that exec channel. Its first stdout line is its address
// and host key; it exits when stdin ends (the benchmark has finished or
// died).
func runUpstreamHelper() int {
	if err := raiseNOFILE(4096); err != nil {
		fmt.Fprintln(os.Stderr, "upstream helper:", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream helper:", err)
		return 1
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream helper:", err)
		return 1
	}
	cfg := &gossh.ServerConfig{
		PublicKeyCallback: func(gossh.ConnMetadata, gossh.PublicKey) (*gossh.Permissions, error) { return nil, nil },
	}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream helper:", err)
		return 1
	}
	fmt.Printf("%s %s", ln.Addr(), gossh.MarshalAuthorizedKey(signer.PublicKey()))
	go func() {
		io.Copy(io.Discard, os.Stdin)
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return 0
		}
		go serveHelperConn(c, cfg)
	}
}

// serveHelperConn is one upstream SSH connection in the helper.
func serveHelperConn(c net.Conn, cfg *gossh.ServerConfig) {
	sc, chans, reqs, err := gossh.NewServerConn(c, cfg)
	if err != nil {
		c.Close()
		return
	}
	defer sc.Close()
	// Keepalives get a "no", which is an answer all the same, as from sshd.
	go gossh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(gossh.UnknownChannelType, "helper serves sessions only")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go serveHelperSession(ch, creqs)
	}
}

// isLauncher is whether an exec command is the pool's agent launcher
// (launcherScript): it runs the cached agent from ~/.cache/gomux with
// "serve".
func isLauncher(cmd string) bool {
	return strings.Contains(cmd, `d="$HOME/.cache/gomux"`) && strings.Contains(cmd, `exec "$f" serve`)
}

// serveHelperSession runs the agent for the launcher's exec and refuses
// anything else, so a change in how the pool starts its agent shows up as
// a failed benchmark rather than a wrong figure.
func serveHelperSession(ch gossh.Channel, reqs <-chan *gossh.Request) {
	for req := range reqs {
		var p struct{ Command string }
		if req.Type != "exec" || gossh.Unmarshal(req.Payload, &p) != nil || !isLauncher(p.Command) {
			req.Reply(false, nil)
			continue
		}
		req.Reply(true, nil)
		go func() {
			srv := &agent.Server{Version: "bench"}
			// Wrapped so Serve does not close the channel before the exit
			// status is sent.
			srv.Serve(context.Background(), struct{ io.Reader }{ch}, struct{ io.Writer }{ch})
			ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{0}))
			ch.Close()
		}()
	}
}
