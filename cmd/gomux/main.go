// Command gomux is the multiplexing SSH proxy: `gomux serve` runs the jump
// host, `gomux ca` prints the known_hosts line clients need, `gomux
// sessions` and `gomux kill` show and end who is on a running gomux,
// `gomux version` says which build this is.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/proxy"
	"github.com/gomux/gomux/proxy/audit"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  gomux serve [-config FILE] [-listen ADDR] [-state DIR]
  gomux ca [-config FILE] [-state DIR] [-init] [-hosts]
  gomux check [-config FILE] [-state DIR] [-as PERSON] [user@]target[:port]
  gomux sessions [-config FILE] [-state DIR] [-json]
  gomux kill [-config FILE] [-state DIR] (ID | -person NAME)
  gomux version
`

// run returns the process exit status: 2 for usage and configuration
// errors, 1 for runtime failures.
func run(args []string, stdout, stderr io.Writer) int {
	inv, code, ok := parseArgs(args, stdout, stderr)
	if !ok {
		return code
	}
	// The file is read once: what is parsed is what the watcher
	// compares later changes with.
	var content []byte
	var err error
	if inv.configPath != "" {
		if content, err = os.ReadFile(inv.configPath); err != nil {
			fmt.Fprintln(stderr, "gomux: config:", err)
			return 2
		}
	}
	cfg, err := proxy.ParseConfig(inv.configPath, content)
	if err != nil {
		fmt.Fprintln(stderr, "gomux:", err)
		return 2
	}
	inv.override(cfg)
	switch inv.cmd {
	case "check":
		return check(cfg, inv.person, inv.target, stdout, stderr)
	case "ca":
		return printCA(cfg, inv, stdout, stderr)
	case "sessions", "kill":
		return admin(cfg, inv, stdout, stderr)
	}
	return profiled(stderr, func() int { return serve(cfg, inv.configPath, content, inv.override, stderr) })
}

// profiled runs fn with the CPU profile (GOMUX_CPUPROFILE) and the
// allocation profile (GOMUX_MEMPROFILE) the benchmarks ask for.
func profiled(stderr io.Writer, fn func() int) int {
	if path := os.Getenv("GOMUX_CPUPROFILE"); path != "" {
		stopProfile, err := startCPUProfile(path)
		if err != nil {
			fmt.Fprintln(stderr, "gomux:", err)
			return 1
		}
		defer stopProfile()
	}
	if path := os.Getenv("GOMUX_MEMPROFILE"); path != "" {
		// Written at a clean shutdown: what gomux allocated, in all.
		defer writeHeapProfile(path, stderr)
	}
	return fn()
}

// invocation is a command line that names a command needing the config.
type invocation struct {
	cmd        string // serve, ca or check
	configPath string
	state      string // -state, overriding state_dir
	listen     string // -listen (serve), overriding listen
	initCA     bool   // -init (ca)
	caHosts    bool   // -hosts (ca)
	person     string // -as (check), -person (kill)
	target     string // check's argument, kill's connection id
	json       bool   // -json (sessions)
}

// override applies the flags that override config fields, to the config
// loaded first and to every reload.
func (inv invocation) override(c *proxy.Config) {
	if inv.state != "" {
		c.StateDir = inv.state
	}
	if inv.listen != "" {
		c.Listen = inv.listen
	}
}

// parseArgs parses the command line. When it returns false, the command
// is done (version, help) or the line is wrong, and code is the exit
// status.
func parseArgs(args []string, stdout, stderr io.Writer) (inv invocation, code int, ok bool) {
	if code, ok := commandWord(args, stdout, stderr); !ok {
		return inv, code, false
	}
	inv.cmd = args[0]
	fs := flag.NewFlagSet("gomux "+inv.cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&inv.configPath, "config", "", "YAML config file (default: none, every default applies)")
	fs.StringVar(&inv.state, "state", "", "state directory (overrides state_dir)")
	switch inv.cmd {
	case "serve":
		fs.StringVar(&inv.listen, "listen", "", "listen address (overrides listen)")
	case "ca":
		fs.BoolVar(&inv.initCA, "init", false, "create the host CA if the state directory has none")
		fs.BoolVar(&inv.caHosts, "hosts", false, "trust the CA only for gomux and the accelerate rules' hosts, not for every host")
	case "check":
		fs.StringVar(&inv.person, "as", "", "the front login name policy is checked for (default: the running user)")
	case "sessions":
		fs.BoolVar(&inv.json, "json", false, "print JSON instead of a table")
	case "kill":
		fs.StringVar(&inv.person, "person", "", "close every connection of this person")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return inv, 2, false
	}
	if inv.cmd == "check" {
		if fs.NArg() != 1 {
			fmt.Fprintf(stderr, "gomux check: want one [user@]target[:port]\n%s", usage)
			return inv, 2, false
		}
		inv.target = fs.Arg(0)
	} else if inv.cmd == "kill" {
		if (fs.NArg() == 1) == (inv.person != "") || fs.NArg() > 1 {
			fmt.Fprintf(stderr, "gomux kill: want a connection id or -person NAME\n%s", usage)
			return inv, 2, false
		}
		inv.target = fs.Arg(0)
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gomux %s: unexpected argument %q\n", inv.cmd, fs.Arg(0))
		return inv, 2, false
	}
	return inv, 0, true
}

// commandWord handles the commands that need no config (version, help)
// and unknown ones; it returns true for the others.
func commandWord(args []string, stdout, stderr io.Writer) (int, bool) {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2, false
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "gomux", version)
		return 0, false
	case "serve", "ca", "check", "sessions", "kill":
		return 0, true
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0, false
	}
	fmt.Fprintf(stderr, "gomux: unknown command %q\n%s", args[0], usage)
	return 2, false
}

// printCA prints the @cert-authority line clients need, refusing to mint
// a new host CA unless asked (-init). With -hosts the line names only
// gomux and the accelerate rules' hosts, so a client trusts the CA for
// nothing else; what known_hosts cannot express is left out and said on
// stderr.
func printCA(cfg *proxy.Config, inv invocation, stdout, stderr io.Writer) int {
	if !inv.initCA && !proxy.HostCAExists(cfg.StateDir) {
		fmt.Fprintf(stderr, "gomux: no host CA in %s: a new one would not match the @cert-authority line clients have.\n"+
			"  Point -state (or state_dir) at the directory gomux serve uses, or run `gomux ca -init` to create one.\n", cfg.StateDir)
		return 1
	}
	ca, err := proxy.OpenHostCA(cfg.StateDir, cfg.HostCertValidity.D())
	if err != nil {
		fmt.Fprintln(stderr, "gomux:", err)
		return 1
	}
	if !inv.caHosts {
		fmt.Fprint(stdout, ca.KnownHostsLine())
		return 0
	}
	patterns, notes := proxy.CAHostPatterns(cfg.Targets)
	for _, n := range notes {
		fmt.Fprintln(stderr, "gomux ca -hosts:", n)
	}
	fmt.Fprint(stdout, ca.KnownHostsLineFor(patterns))
	return 0
}

// writeHeapProfile writes a pprof heap profile (its alloc_space is every
// allocation since start) to path; set by GOMUX_MEMPROFILE, for benchmarks.
func writeHeapProfile(path string, stderr io.Writer) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(stderr, "gomux: GOMUX_MEMPROFILE:", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		fmt.Fprintln(stderr, "gomux: GOMUX_MEMPROFILE:", err)
	}
}

// startCPUProfile writes a pprof CPU profile of gomux serve to path until
// the returned function is called (at a clean shutdown). It is set by the
// GOMUX_CPUPROFILE environment variable, for the benchmarks that measure
// what gomux's own CPU goes to; it is not a config field, as no deployment
// needs it.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("GOMUX_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("GOMUX_CPUPROFILE: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// newLogger returns the one logger gomux passes down, and the level
// filter a reload sets: the logger itself lets every level through and
// the writer drops what is below the level in force, so a reload changes
// the level of every copy of the logger at once.
func newLogger(w io.Writer, level string) (zerolog.Logger, *levelFilter) {
	out := w
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	lf := &levelFilter{w: out}
	lf.set(level)
	return zerolog.New(lf).Level(zerolog.DebugLevel).With().Timestamp().Logger(), lf
}

// levelFilter writes log events at or above its level, and every audit
// event (proxy.IsAuditEvent) whatever the level: to the audit file when
// one is open, else to the log itself.
type levelFilter struct {
	w     io.Writer
	lvl   atomic.Int32
	audit audit.File
}

func (l *levelFilter) set(level string) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	l.lvl.Store(int32(lvl))
}

func (l *levelFilter) Write(p []byte) (int, error) { return l.w.Write(p) }

// WriteLevel is what zerolog calls for each event.
func (l *levelFilter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	shown := int32(level) >= l.lvl.Load()
	if proxy.IsAuditEvent(eventOf(p)) && !l.audit.Append(p) {
		// No audit file: the log is the audit trail, at any level.
		shown = true
	}
	if !shown {
		return len(p), nil
	}
	return l.w.Write(p)
}

// eventOf reads the "event" field of one zerolog JSON line without
// decoding it: event names are plain identifiers.
func eventOf(p []byte) string {
	const key = `"event":"`
	i := bytes.Index(p, []byte(key))
	if i < 0 {
		return ""
	}
	rest := p[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// serve runs `gomux serve` until a stop signal and a drain, or until the
// server fails; it returns the exit status.
func serve(cfg *proxy.Config, configPath string, content []byte, override func(*proxy.Config), stderr io.Writer) int {
	log, level := newLogger(stderr, cfg.LogLevel)
	if err := level.audit.Open(cfg.Audit.LogFile); err != nil {
		fmt.Fprintln(stderr, "gomux:", err)
		return 2
	}
	defer level.audit.Close()
	// The runtime's limit at start (GOMEMLIMIT, or none): what a reload
	// that removes the ceiling goes back to.
	memBase := debug.SetMemoryLimit(-1)
	setMemoryLimit(cfg.LiveConfig.Limits, memBase)
	srv, ln, code := start(cfg, log, stderr)
	if srv == nil {
		return code
	}
	// bg owns the goroutines beside the server; its deferred Wait runs
	// after every deferred stop below.
	var bg gogroup.Group
	defer bg.CloseWait()
	if cfg.MetricsListen != "" {
		closeMetrics, err := serveMetrics(cfg.MetricsListen, srv, log, &bg)
		if err != nil {
			ln.Close()
			fmt.Fprintln(stderr, "gomux: metrics_listen:", err)
			return 1
		}
		defer closeMetrics()
	}
	adminLn, err := srv.ListenAdmin(context.Background())
	if err != nil {
		ln.Close()
		fmt.Fprintln(stderr, "gomux:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	errc := make(chan error, 1)
	bg.Go(func() { errc <- srv.Serve(ln) })
	bgCtx, stopBg := context.WithCancel(context.Background())
	defer stopBg() // runs before bg.Wait
	bg.Go(func() { srv.LogStats(bgCtx, cfg.StatsInterval.D()) })
	bg.Go(func() { srv.LogNoise(bgCtx, noiseInterval) })
	// The admin socket stays through the drain (gomux kill still works)
	// and is removed once gomux stopped.
	bg.Go(func() { srv.ServeAdmin(bgCtx, adminLn) })
	// A change of the config file reloads it as SIGHUP does (a
	// Kubernetes ConfigMap update, an edit).
	changed := make(chan []byte)
	if configPath != "" {
		bg.Go(func() { watchFile(bgCtx, configPath, content, configPollInterval, changed) })
	}
	d := &daemon{srv: srv, log: log, level: level, configPath: configPath, override: override, drainTimeout: cfg.DrainTimeout.D(), memBase: memBase}
	if code, stopped := d.wait(ctx, hup, changed, errc); stopped {
		return code
	}
	return d.shutdown(errc)
}

// start makes the server and its listener; on failure srv is nil and
// code the exit status.
func start(cfg *proxy.Config, log zerolog.Logger, stderr io.Writer) (srv *proxy.Server, ln net.Listener, code int) {
	agents, err := dist.Load()
	if err != nil {
		log.Error().Err(err).Msg("embedded agent")
		return nil, nil, 1
	}
	if len(agents) == 0 {
		log.Warn().Msg("this build embeds no agent: every target is served in fallback mode (build with make)")
	}
	srv, err = proxy.NewServer(cfg, agents, log)
	if err != nil {
		fmt.Fprintln(stderr, "gomux:", err)
		return nil, nil, 2
	}
	ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "gomux: listen:", err)
		return nil, nil, 1
	}
	return srv, ln, 0
}

// serveMetrics serves the metrics endpoint on addr in a goroutine owned
// by bg, and returns what closes it.
func serveMetrics(addr string, srv *proxy.Server, log zerolog.Logger, bg *gogroup.Group) (func() error, error) {
	mln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	metricsSrv := &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info().Str("event", proxy.EventListen).Str("metrics_addr", mln.Addr().String()).Msg("metrics, /healthz and /readyz listening")
	bg.Go(func() {
		if err := metricsSrv.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Str("event", proxy.EventMetrics).Err(err).Msg("metrics endpoint stopped")
		}
	})
	return metricsSrv.Close, nil
}

// daemon is a running `gomux serve`: what reloads and the shutdown need.
type daemon struct {
	srv          *proxy.Server
	log          zerolog.Logger
	level        *levelFilter
	configPath   string
	override     func(*proxy.Config)
	drainTimeout time.Duration // the one in force, changed by reloads
	memBase      int64         // the runtime's memory limit at start
}

// wait reloads on SIGHUP or a config file change until ctx ends (a stop
// signal: false) or the server stops by itself (true, with the exit
// status).
func (d *daemon) wait(ctx context.Context, hup <-chan os.Signal, changed <-chan []byte, errc <-chan error) (int, bool) {
	for {
		select {
		case err := <-errc:
			if err != nil {
				d.log.Error().Err(err).Msg("serve")
				return 1, true
			}
			return 0, true
		case <-hup:
			d.reload("SIGHUP", nil)
		case b := <-changed:
			d.reload("config file changed", b)
		case <-ctx.Done():
			return 0, false
		}
	}
}

// reload applies the config file again (data: its content as the watcher
// read it, nil to read it now); the server logs how it went.
func (d *daemon) reload(why string, data []byte) {
	ncfg, err := d.srv.ReloadFile(d.configPath, data, d.override, why)
	if err == nil {
		d.level.set(ncfg.LogLevel)
		setMemoryLimit(ncfg.Limits, d.memBase)
		if err := d.level.audit.Open(ncfg.Audit.LogFile); err != nil {
			d.log.Error().Str("event", proxy.EventReload).Str("result", "audit_file_failed").Err(err).Msg("audit file not reopened; the open one stays")
		}
		d.drainTimeout = ncfg.DrainTimeout.D()
	}
}

// shutdown drains the server within the drain timeout and waits for
// Serve to return.
func (d *daemon) shutdown(errc <-chan error) int {
	d.log.Info().Str("event", proxy.EventShutdown).Dur("drain_timeout", d.drainTimeout).Msg("draining")
	dctx, cancel := context.WithTimeout(context.Background(), d.drainTimeout)
	defer cancel()
	// A drain cut short is logged by Shutdown and is still a stop asked
	// for: the exit status stays 0.
	_ = d.srv.Shutdown(dctx)
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		d.log.Warn().Err(err).Msg("serve after shutdown")
	}
	return 0
}

// setMemoryLimit gives the Go runtime gomux's memory ceiling as its soft
// limit, so the collector works hard before the ceiling, not after.
// It is 90% of the ceiling, so the collector's working set stays below
// the figure admission refuses at instead of sitting on it. Without a
// ceiling the limit gomux started with (GOMEMLIMIT, or none) stays.
func setMemoryLimit(limits proxy.AdmissionLimits, base int64) {
	if c := proxy.MemoryCeiling(limits); c > 0 {
		debug.SetMemoryLimit(min(c/10*9, base))
	} else {
		debug.SetMemoryLimit(base)
	}
}

// noiseInterval is how often the counts of unauthenticated noise are
// logged, one line per source address.
const noiseInterval = time.Minute

// configPollInterval is how often the config file is read for a change:
// a few kilobytes, cheap enough to do often.
const configPollInterval = 2 * time.Second

// settledFile decides when a changed file may be applied: only once two
// reads a poll apart agree, so a file an editor or a copy is still
// writing is never in force, half of it. It is the watcher's state, kept
// apart from the polling so it can be tested read by read.
type settledFile struct {
	applied [sha256.Size]byte // what is in force (or was there at start)
	seen    [sha256.Size]byte // what the last read found
}

// newSettledFile starts from the content in force.
func newSettledFile(content []byte) *settledFile {
	h := sha256.Sum256(content)
	return &settledFile{applied: h, seen: h}
}

// read takes one poll's content and says whether to apply it now: it
// differs from what is in force and the previous read found the same.
func (f *settledFile) read(content []byte) bool {
	h := sha256.Sum256(content)
	agree := h == f.seen
	f.seen = h
	if !agree || h == f.applied {
		return false
	}
	f.applied = h
	return true
}

// watchFile sends path's content on changed once it differs from
// inForce (the content gomux runs with) and two reads a poll apart agree
// (an edit, or the symlink swap of a Kubernetes ConfigMap, once it
// settled). A file that cannot be read is skipped: the running config
// stays.
func watchFile(ctx context.Context, path string, inForce []byte, every time.Duration, changed chan<- []byte) {
	f := newSettledFile(inForce)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b, err := os.ReadFile(path)
		if err != nil || !f.read(b) {
			continue
		}
		select {
		case changed <- b:
		case <-ctx.Done():
			return
		}
	}
}
