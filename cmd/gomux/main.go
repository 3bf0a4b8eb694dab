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
	"os"
	"os/signal"
	"sync"
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
  gomux ca [-config FILE] [-state DIR]
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
	case "serve", "ca":
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
	listen := new(string)
	if args[0] == "serve" {
		listen = fs.String("listen", "", "listen address (overrides listen)")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
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
	if args[0] == "ca" {
		ca, err := proxy.OpenHostCA(cfg.StateDir, cfg.HostCertValidity.D())
		if err != nil {
			fmt.Fprintln(stderr, "gomux:", err)
			return 1
		}
		fmt.Fprint(stdout, ca.KnownHostsLine())
		return 0
	}
	return serve(cfg, stderr)
}

func newLogger(w io.Writer, level string) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	out := w
	if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger()
}

func serve(cfg *proxy.Config, stderr io.Writer) int {
	log := newLogger(stderr, cfg.LogLevel)
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	statsCtx, stopStats := context.WithCancel(context.Background())
	var stats sync.WaitGroup
	stats.Add(1)
	go func() {
		defer stats.Done()
		srv.LogStats(statsCtx, cfg.StatsInterval.D())
	}()
	defer stats.Wait()
	defer stopStats()
	select {
	case err := <-errc:
		if err != nil {
			log.Error().Err(err).Msg("serve")
			return 1
		}
		return 0
	case <-ctx.Done():
	}
	log.Info().Str("event", "shutdown").Dur("drain_timeout", cfg.DrainTimeout.D()).Msg("draining")
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout.D())
	defer cancel()
	srv.Shutdown(dctx)
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		log.Warn().Err(err).Msg("serve after shutdown")
	}
	return 0
}
