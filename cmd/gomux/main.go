// Command gomux is the multiplexing SSH proxy: `gomux serve` runs the jump
// host, `gomux ca` prints the known_hosts line clients need, `gomux version`
// says which build this is.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"

	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/proxy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  gomux serve [-config FILE] [-listen ADDR] [-state DIR]
  gomux ca [-config FILE] [-state DIR] [-init]
  gomux check [-config FILE] [-state DIR] [-as PERSON] [user@]target[:port]
  gomux version
`

// run returns the process exit status: 2 for usage and configuration
// errors, 1 for runtime failures.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "gomux", version)
		return 0
	case "serve", "ca", "check":
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "gomux: unknown command %q\n%s", args[0], usage)
		return 2
	}
	fs := flag.NewFlagSet("gomux "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (default: none, every default applies)")
	state := fs.String("state", "", "state directory (overrides state_dir)")
	listen, initCA, person := new(string), new(bool), new(string)
	switch args[0] {
	case "serve":
		listen = fs.String("listen", "", "listen address (overrides listen)")
	case "ca":
		initCA = fs.Bool("init", false, "create the host CA if the state directory has none")
	case "check":
		person = fs.String("as", "", "the front login name policy is checked for (default: the running user)")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if args[0] == "check" {
		if fs.NArg() != 1 {
			fmt.Fprintf(stderr, "gomux check: want one [user@]target[:port]\n%s", usage)
			return 2
		}
	} else if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "gomux %s: unexpected argument %q\n", args[0], fs.Arg(0))
		return 2
	}
	cfg, err := proxy.LoadConfig(*configPath)
	if err != nil {
		fmt.Fprintln(stderr, "gomux:", err)
		return 2
	}
	if *state != "" {
		cfg.StateDir = *state
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	switch args[0] {
	case "check":
		return check(cfg, *person, fs.Arg(0), stdout, stderr)
	case "ca":
		if !*initCA && !proxy.HostCAExists(cfg.StateDir) {
			fmt.Fprintf(stderr, "gomux: no host CA in %s: a new one would not match the @cert-authority line clients have.\n"+
				"  Point -state (or state_dir) at the directory gomux serve uses, or run `gomux ca -init` to create one.\n", cfg.StateDir)
			return 1
		}
		ca, err := proxy.OpenHostCA(cfg.StateDir, cfg.HostCertValidity.D())
		if err != nil {
			fmt.Fprintln(stderr, "gomux:", err)
			return 1
		}
		fmt.Fprint(stdout, ca.KnownHostsLine())
		return 0
	}
	override := func(c *proxy.Config) {
		if *state != "" {
			c.StateDir = *state
		}
		if *listen != "" {
			c.Listen = *listen
		}
	}
	return serve(cfg, *configPath, override, stderr)
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

// levelFilter writes log events at or above its level.
type levelFilter struct {
	w   io.Writer
	lvl atomic.Int32
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
	if int32(level) < l.lvl.Load() {
		return len(p), nil
	}
	return l.w.Write(p)
}

func serve(cfg *proxy.Config, configPath string, override func(*proxy.Config), stderr io.Writer) int {
	log, level := newLogger(stderr, cfg.LogLevel)
	agents, err := dist.Load()
	if err != nil {
		log.Error().Err(err).Msg("embedded agent")
		return 1
	}
	if len(agents) == 0 {
		log.Warn().Msg("this build embeds no agent: every target is served in fallback mode (build with make)")
	}
	srv, err := proxy.NewServer(cfg, agents, log)
	if err != nil {
		fmt.Fprintln(stderr, "gomux:", err)
		return 2
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "gomux: listen:", err)
		return 1
	}
	var bg sync.WaitGroup
	defer bg.Wait()
	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			fmt.Fprintln(stderr, "gomux: metrics_listen:", err)
			return 1
		}
		metricsSrv = &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		log.Info().Str("event", proxy.EventListen).Str("metrics_addr", mln.Addr().String()).Msg("metrics, /healthz and /readyz listening")
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := metricsSrv.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error().Str("event", proxy.EventMetrics).Err(err).Msg("metrics endpoint stopped")
			}
		}()
		defer metricsSrv.Close()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	bgCtx, stopBg := context.WithCancel(context.Background())
	defer stopBg() // runs before bg.Wait
	bg.Add(1)
	go func() {
		defer bg.Done()
		srv.LogStats(bgCtx, cfg.StatsInterval.D())
	}()
	// A change of the config file reloads it as SIGHUP does (a
	// Kubernetes ConfigMap update, an edit).
	changed := make(chan struct{}, 1)
	if configPath != "" {
		bg.Add(1)
		go func() {
			defer bg.Done()
			watchFile(bgCtx, configPath, configPollInterval, changed)
		}()
	}
	drainTimeout := cfg.DrainTimeout.D()
	reload := func(why string) {
		ncfg, err := srv.ReloadFile(configPath, override, why)
		if err == nil {
			level.set(ncfg.LogLevel)
			drainTimeout = ncfg.DrainTimeout.D()
		}
	}
	for {
		select {
		case err := <-errc:
			if err != nil {
				log.Error().Err(err).Msg("serve")
				return 1
			}
			return 0
		case <-hup:
			reload("SIGHUP")
			continue
		case <-changed:
			reload("config file changed")
			continue
		case <-ctx.Done():
		}
		break
	}
	log.Info().Str("event", proxy.EventShutdown).Dur("drain_timeout", drainTimeout).Msg("draining")
	dctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	srv.Shutdown(dctx)
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		log.Warn().Err(err).Msg("serve after shutdown")
	}
	return 0
}

// configPollInterval is how often the config file is checked for a
// change: a stat, cheap enough to do often.
const configPollInterval = 2 * time.Second

// watchFile signals changed when path's size, modification time or inode
// changes (an edit, or the symlink swap of a Kubernetes ConfigMap).
func watchFile(ctx context.Context, path string, every time.Duration, changed chan<- struct{}) {
	stamp := func() string {
		fi, err := os.Stat(path)
		if err != nil {
			return "missing"
		}
		ino := uint64(0)
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		return fmt.Sprintf("%d:%d:%d", fi.Size(), fi.ModTime().UnixNano(), ino)
	}
	last := stamp()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if now := stamp(); now != last {
			last = now
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	}
}
