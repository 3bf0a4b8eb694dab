// Command gomux-agent runs on targets, started by gomux over one SSH exec
// channel: `gomux-agent serve` speaks the agent protocol on stdin/stdout
// until stdin closes. `gomux-agent pyrun -- INTERP SCRIPT` is what gomux
// puts in place of the interpreter of an Ansible module run, to run it in
// a warm fork server (see agent/pyrun/DESIGN.md). Neither is meant to be run
// by hand.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/agent/pyrun"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "pyrun" {
		// One Ansible module run handed to the warm interpreter; kept
		// free of logging and set-up because it runs once per task.
		os.Exit(pyrun.Run(context.Background(), os.Args[2:]))
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gomux-agent serve [-cache-days N]|version")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "version":
		fmt.Println("gomux-agent", version)
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		days := fs.Int("cache-days", 0, "remove cached agents and blobs unused for this many days (0: keep)")
		if err := fs.Parse(os.Args[2:]); err != nil || fs.NArg() > 0 {
			os.Exit(2)
		}
		os.Exit(serve(*days))
	default:
		fmt.Fprintln(os.Stderr, "usage: gomux-agent serve|version")
		os.Exit(2)
	}
}

// serve speaks the agent protocol on stdin and stdout; first, when it
// runs from the target's agent cache, it cleans that cache of what no
// agent start has used for cacheDays days (agent.CleanCache).
func serve(cacheDays int) int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := setNotDumpable(); err != nil {
		log.Error("harden", "err", err)
		return 1
	}
	closeLauncherFD()
	cleanCache(log, cacheDays)
	// The protocol owns the original stdin and stdout. Point fds 0 and 1 at
	// /dev/null so nothing else (a child, a stray print) can write into the
	// multiplexed stream.
	in, err := unix.FcntlInt(0, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		log.Error("dup stdin", "err", err)
		return 1
	}
	out, err := unix.FcntlInt(1, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		log.Error("dup stdout", "err", err)
		return 1
	}
	null, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		log.Error("open /dev/null", "err", err)
		return 1
	}
	for _, fd := range []int{0, 1} {
		if err := unix.Dup3(null, fd, 0); err != nil {
			log.Error("point fd at /dev/null", "fd", fd, "err", err)
			return 1
		}
	}
	unix.Close(null)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT)
	defer stop()
	s := &agent.Server{Version: version, Log: log, Liveness: 15 * time.Second}
	// Serve returns when stdin reaches EOF (gomux closed the channel) or a
	// signal arrives; either way its children have been killed.
	if err := s.Serve(ctx, os.NewFile(uintptr(in), "agent-in"), os.NewFile(uintptr(out), "agent-out")); err != nil {
		log.Error("serve", "err", err)
		return 1
	}
	return 0
}

// setNotDumpable makes the agent non-dumpable (PR_SET_DUMPABLE 0), first
// thing: it carries what passes through it for everyone who uses this
// login (become passwords on stdin, environments, file contents), and
// another process of the same user must not read that by ptrace or from
// /proc/PID/mem, environ or fd (the kernel then refuses them to anyone
// without CAP_SYS_PTRACE, and gives /proc/PID to root). Its own
// /proc/self stays open to it. The commands it starts become dumpable
// again at execve, as they are under sshd; so does `gomux-agent pyrun`,
// which stands in for the interpreter and is not made non-dumpable (the
// fork server reads its /proc/PID/ns to compare confinement).
func setNotDumpable() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl PR_SET_DUMPABLE 0: %w", err)
	}
	return nil
}

// cleanCache runs agent.CleanCache for the binary running; a failure is
// logged (gomux shows the agent's stderr when the agent exits) and the
// agent serves all the same: a cache left uncleaned costs only disk.
func cleanCache(log *slog.Logger, days int) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil || days <= 0 {
		return
	}
	res, err := agent.CleanCache(exe, time.Duration(days)*24*time.Hour, time.Now())
	if err != nil {
		log.Warn("agent cache cleanup", "event", "cache_clean", "dir", res.Dir, "removed", res.Removed, "err", err)
	} else if len(res.Removed) > 0 {
		log.Info("agent cache cleanup", "event", "cache_clean", "dir", res.Dir, "removed", res.Removed)
	}
}

// launcherFD is the descriptor through which the launcher hashed this
// binary before it executed it by path (see target.Launcher).
const launcherFD = 3

// closeLauncherFD closes the launcher's descriptor of this binary, so no
// command the agent runs inherits it. It touches fd 3 only when that is a
// file of this binary's name (the same file, or one a concurrent upload
// just replaced).
func closeLauncherFD() {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return
	}
	name, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", launcherFD))
	if err != nil {
		return
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	if strings.TrimSuffix(name, " (deleted)") == exe {
		unix.Close(launcherFD)
	}
}
