package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/internal/fixedpath"
	"github.com/gomux/gomux/internal/gogroup"
)

// Launcher status lines. The launcher prints one of these, or execs the
// agent, which prints agent.Banner.
const (
	needAgentLine = "GOMUX-NEED-AGENT"
	noAgentLine   = "GOMUX-NO-AGENT"
	uploadedLine  = "GOMUX-UPLOADED"
)

// cacheChecks is shell that sets bad to why the agent cache
// ($HOME/.cache/gomux, in d) cannot be trusted: a file there runs as the
// login user, so no one else may be able to write it or rename it. As
// OpenSSH's StrictModes does for authorized_keys, $HOME and ~/.cache must
// be owned by the user (or root) and not writable by group or others;
// then ~/.cache/gomux must be a directory (not a symlink) owned by the
// user and not writable by group or others. top is set when the fault
// is above ~/.cache/gomux (gomux cannot fix it and does without the
// agent); otherwise the upload script replaces the directory.
const cacheChecks = `u=$(id -u); bad=; top=; ` +
	`for p in "$HOME" "$HOME/.cache"; do [ -e "$p" ] || continue; s=$(stat -Lc '%u %a' "$p") || { bad="cannot stat $p"; top=1; break; }; ` +
	`case "$s" in "$u "*|"0 "*) ;; *) bad="$p is not owned by uid $u ($s)"; top=1; break ;; esac; ` +
	`case "$s" in *[2367]?|*[2367]) bad="$p is writable by others (mode ${s#* })"; top=1; break ;; esac; done; ` +
	`if [ -z "$bad" ] && { [ -e "$d" ] || [ -L "$d" ]; }; then ` +
	`if [ -L "$d" ] || [ ! -d "$d" ] || [ ! -O "$d" ]; then bad="$d is not a directory owned by uid $u"; ` +
	`else s=$(stat -c '%a' "$d"); case "$s" in *[2367]?|*[2367]) bad="$d is writable by others (mode $s)" ;; esac; fi; fi; `

// launcherScript starts the cached agent if its hash verifies. It runs
// under /bin/sh whatever the login shell is, and costs one round trip on a
// warm target. It opens the agent once, hashes that open file, checks
// that the path still names that very file (test -ef) and executes it by
// its path, so ps and the agent's own executable path show the real
// name, not /proc/self/fd/3. Only the login user could swap the file in
// between: the launcher runs only from a cache directory no one else can
// write (cacheChecks), and this is the login user running its own file.
// The become side never runs it (see shim.Warm). Where the file was
// replaced between the hash and the check (a concurrent upload from
// another connection to the same home, as on a shared NFS home), it looks
// again, up to three times. It runs its tools with a fixed PATH
// (fixedpath.Set) and gives the agent back the PATH it was given, which
// the agent passes on to the commands it runs, as sshd would. The agent
// is told cacheDays, after which it removes what no start has used
// (agent.CleanCache).
func launcherScript(bins map[string]dist.Binary, cacheDays int) string {
	var cases strings.Builder
	for _, b := range bins {
		switch b.Arch {
		case "amd64":
			fmt.Fprintf(&cases, "x86_64|amd64) h=%s ;; ", b.SHA256)
		case "arm64":
			fmt.Fprintf(&cases, "aarch64|arm64) h=%s ;; ", b.SHA256)
		}
	}
	// No umask here: the agent and every command it runs inherit this
	// shell's, which must stay the one sshd gave the login.
	script := `path0=${PATH-}; pathset=${PATH+1}; ` + fixedpath.Set + `m=$(uname -m); case "$m" in ` + cases.String() +
		`*) echo "` + noAgentLine + ` no agent build for machine $m"; exit 0 ;; esac; ` +
		`d="$HOME/.cache/gomux"; f="$d/agent-$h"; ` + cacheChecks +
		`if [ -n "$top" ]; then echo "` + noAgentLine + ` unsafe agent cache: $bad"; exit 0; fi; ` +
		`if [ -n "$bad" ]; then echo "` + needAgentLine + ` $h $m unsafe agent cache: $bad"; exit 0; fi; ` +
		`for i in 1 2 3; do ` +
		`if [ -f "$f" ] && [ ! -L "$f" ] && [ -O "$f" ] && exec 3<"$f"; then ` +
		`if [ "$(sha256sum <&3 2>/dev/null | cut -c1-64)" = "$h" ] && [ "$f" -ef /proc/self/fd/3 ]; then ` +
		`if [ -n "$pathset" ]; then PATH=$path0; else unset PATH; fi; exec "$f" serve -cache-days ` + strconv.Itoa(cacheDays) + `; fi; exec 3<&-; ` +
		`else break; fi; done; ` +
		`echo "` + needAgentLine + ` $h $m"`
	return "exec /bin/sh -c " + shellQuote(script)
}

// uploadScript writes the agent from stdin into the per-user cache under a
// temporary name, verifies it, and renames it into place, so a broken
// transfer never leaves a file the launcher would run. A cache directory
// that others could write (cacheChecks) is removed first and made again,
// 0700: whatever is in it is not the user's. Its tools run with a fixed
// PATH (fixedpath.Set).
func uploadScript(hash string) string {
	script := fixedpath.Set + `umask 077; d="$HOME/.cache/gomux"; ` + cacheChecks +
		`if [ -n "$top" ]; then echo "$bad" >&2; exit 1; fi; ` +
		`if [ -n "$bad" ]; then rm -rf "$d" || exit 1; fi; ` +
		`t="$d/.agent-` + hash + `.$$"; f="$d/agent-` + hash + `"; ` +
		`mkdir -p "$d" && [ ! -L "$d" ] && [ -O "$d" ] && cat > "$t" && [ "$(sha256sum < "$t" | cut -c1-64)" = "` + hash + `" ] && chmod 700 "$t" && ` +
		// A shared home (NFS) or a second gomux may have put a good copy
		// there meanwhile: keep it, so a launcher hashing it is not raced.
		`{ { [ -f "$f" ] && [ ! -L "$f" ] && [ "$(sha256sum < "$f" | cut -c1-64)" = "` + hash + `" ] && rm -f "$t"; } || mv -f "$t" "$f"; } && echo ` + uploadedLine + ` && exit 0; ` +
		`rm -f "$t"; exit 1`
	return "exec /bin/sh -c " + shellQuote(script)
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// errNeedAgent means the target has no verified copy of the agent;
// unsafe says why the cache directory was not trusted, when it was not.
type errNeedAgent struct{ arch, unsafe string }

func (e errNeedAgent) Error() string { return "agent not cached on target (" + e.arch + ")" }

// fallbackError means the agent cannot run on this target; the reason is
// logged once and the target is served by forwarding channels.
type fallbackError struct{ reason string }

func (e fallbackError) Error() string { return e.reason }

// agentClient returns how the target is served: the running agent,
// starting it if needed, or fallback with its reason. Only one start runs
// at a time per upstream; others wait for it.
func (u *upstream) agentClient(ctx context.Context) (Start, error) {
	for {
		if err := u.ended(); err != nil {
			return Start{}, err
		}
		u.amu.Lock()
		if u.fallback != "" {
			reason := u.fallback
			u.amu.Unlock()
			return fallback(reason), nil
		}
		if a := u.liveAgentLocked(); a != nil {
			u.amu.Unlock()
			return Start{Mode: ModeAgent, Agent: a}, nil
		}
		if ch := u.starting; ch != nil {
			u.amu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return Start{}, ctx.Err()
			}
		}
		if reason := u.noAgentReason(); reason != "" {
			u.fallback = reason
			u.amu.Unlock()
			u.logFallback(reason)
			return fallback(reason), nil
		}
		ch := make(chan struct{})
		u.starting = ch
		u.amu.Unlock()
		a, err := u.startAgent(ctx)
		return u.settleStart(ch, a, err)
	}
}

// liveAgentLocked returns the agent client unless there is none or its
// session has ended (then it is dropped). u.amu is held.
func (u *upstream) liveAgentLocked() *agent.Client {
	if u.agent == nil {
		return nil
	}
	select {
	case <-u.agent.Done():
		u.agent = nil
		return nil
	default:
		return u.agent
	}
}

// noAgentReason says why no target of this pool can run the agent, or ""
// when the agent may be started.
func (u *upstream) noAgentReason() string {
	switch {
	case !u.pool.cfg.Agent:
		return "agent disabled in config"
	case len(u.pool.agents) == 0:
		return "this gomux build embeds no agent binaries (build with make)"
	}
	return ""
}

// settleStart records how the start announced on ch ended and wakes the
// callers waiting on it: a running agent, fallback mode, or an error for
// this attempt only.
func (u *upstream) settleStart(ch chan struct{}, a *agent.Client, err error) (Start, error) {
	var ended error
	if err != nil {
		ended = u.ended() // before amu: dmu is never taken under it
	}
	u.amu.Lock()
	u.starting = nil
	close(ch)
	if ended != nil {
		// The start failed because the connection went: that, not the
		// target, is the reason, and it is no cause to fall back.
		u.amu.Unlock()
		return Start{}, fmt.Errorf("%w (%w)", ended, err)
	}
	var fb fallbackError
	switch {
	case errors.As(err, &fb):
		u.fallback = fb.reason
		u.amu.Unlock()
		u.logFallback(fb.reason)
		return fallback(fb.reason), nil
	case err != nil:
		u.amu.Unlock()
		return Start{}, err
	}
	u.agent = a
	u.amu.Unlock()
	return Start{Mode: ModeAgent, Agent: a}, nil
}

// logFallback records that the target is served without the agent.
func (u *upstream) logFallback(reason string) {
	u.pool.m.AgentFallback()
	u.logger().Warn().Str("event", EventAgentFallback).Str("reason", reason).Msg("serving target without agent")
}

func (u *upstream) startAgent(ctx context.Context) (*agent.Client, error) {
	log := u.logger()
	start := time.Now()
	a, err := u.launch(ctx)
	var need errNeedAgent
	uploaded := false
	if errors.As(err, &need) {
		if need.unsafe != "" {
			log.Warn().Str("event", EventAgentCacheUnsafe).Str("reason", need.unsafe).
				Msg("agent cache on target is open to others; replacing it")
		}
		if err := u.upload(ctx, need.arch); err != nil {
			return nil, err
		}
		uploaded = true
		// A home shared with other targets (NFS) may see their uploads
		// renamed over this one meanwhile: the launcher itself looks
		// again when that happens (launcherScript).
		a, err = u.launch(ctx)
	}
	u.pool.m.AgentStart(err)
	if err != nil {
		log.Warn().Str("event", EventAgentStart).Err(err).Dur("duration", time.Since(start)).Msg("agent start failed")
		return nil, err
	}
	info := a.Info()
	log.Info().Str("event", EventAgentStart).Bool("uploaded", uploaded).Str("agent_version", info.AgentVersion).
		Str("arch", info.Arch).Dur("duration", time.Since(start)).Msg("agent started")
	return a, nil
}

// launchStderrBuf is the read buffer of an agent channel's stderr
// reader, held for as long as the agent runs: the agent writes little
// there, so a small one keeps an idle upstream small (io.Copy's would be
// 32 KiB).
const launchStderrBuf = 512

// launch runs the launcher on a new exec channel and, when the agent starts,
// returns a client speaking yamux over that channel's stdio.
//
// One goroutine per channel reads its stderr (keeping the first 64 KiB
// for the log) and sees the channel out: stderr ends when the channel
// does (SSH has one EOF for all its streams), whoever ended it. The agent
// client owns the channel: when its session ends, it closes stdin and the
// channel, which makes the agent exit.
func (u *upstream) launch(ctx context.Context) (a *agent.Client, err error) {
	ch, err := u.openAgentChannel()
	if err != nil {
		return nil, err
	}
	w := &stderrWatch{buf: &boundedBuffer{max: 64 << 10}, copied: make(chan struct{}), decided: make(chan struct{})}
	if !u.pool.tasks.Go(func() { u.watchStderr(ch, w) }) {
		ch.sess.Close()
		return nil, ErrShuttingDown
	}
	defer func() { w.decide(err == nil) }()
	// Only for the launcher's status line: once it is read, what is left
	// in the buffer is handed on and the buffer dropped.
	br := bufio.NewReader(ch.stdout)
	status, err := readLauncherStatus(br)
	if err != nil {
		ch.sess.Close()
		waitErr := ch.sess.Wait()
		<-w.copied
		return nil, fallbackError{reason: fmt.Sprintf("agent did not start: %v (%v) stderr: %q", err, waitErr, w.buf.String())}
	}
	if err := launcherRefusal(status); err != nil {
		ch.sess.Close()
		return nil, err
	}
	// status is the banner line; hand it back to the client with the
	// bytes read past it, then the channel itself.
	rest := make([]byte, br.Buffered())
	io.ReadFull(br, rest)
	r := io.MultiReader(strings.NewReader(status+"\n"+string(rest)), ch.stdout)
	a, err = agent.NewClient(ctx, r, closeBoth{ch.stdin, ch.sess})
	if err != nil {
		// The agent package names what failed ("agent: handshake: ...")
		// and the caller names the target: nothing to add here.
		ch.sess.Close()
		return nil, err
	}
	a.SetReplyTimeout(u.pool.limits.AgentReplyTimeout)
	return a, nil
}

// agentChannel is the exec channel the launcher runs on, and then the
// agent it execs.
type agentChannel struct {
	sess   *gossh.Session
	stdin  io.WriteCloser
	stdout io.Reader
	stderr io.Reader
}

// openAgentChannel opens an exec channel and starts the launcher on it.
func (u *upstream) openAgentChannel() (agentChannel, error) {
	sess, err := u.client.NewSession()
	if err != nil {
		return agentChannel{}, fmt.Errorf("open agent channel: %w", err)
	}
	stdin, err1 := sess.StdinPipe()
	stdout, err2 := sess.StdoutPipe()
	stderr, err3 := sess.StderrPipe()
	if err := errors.Join(err1, err2, err3); err != nil {
		sess.Close()
		return agentChannel{}, fmt.Errorf("agent channel pipes: %w", err)
	}
	if err := sess.Start(launcherScript(u.pool.agents, u.pool.limits.AgentCacheDays)); err != nil {
		sess.Close()
		return agentChannel{}, fmt.Errorf("start agent launcher: %w", err)
	}
	return agentChannel{sess: sess, stdin: stdin, stdout: stdout, stderr: stderr}, nil
}

// stderrWatch is what launch shares with the goroutine reading the agent
// channel's stderr.
type stderrWatch struct {
	buf     *boundedBuffer
	copied  chan struct{} // stderr has ended
	decided chan struct{} // launch has returned; up is set
	up      bool
}

// decide tells the stderr reader whether the agent came up, and so
// whether the channel's end is an agent_exit worth logging.
func (w *stderrWatch) decide(up bool) {
	w.up = up
	close(w.decided)
}

// watchStderr reads the agent channel's stderr until the channel ends,
// closes the channel, and logs the agent's exit if it had started.
func (u *upstream) watchStderr(ch agentChannel, w *stderrWatch) {
	io.CopyBuffer(w.buf, ch.stderr, make([]byte, launchStderrBuf))
	close(w.copied)
	ch.sess.Close()
	<-w.decided
	if !w.up {
		return
	}
	ev := u.logger().Info().Str("event", EventAgentExit)
	if s := w.buf.String(); s != "" {
		ev = ev.Str("agent_stderr", s)
	}
	ev.Msg("agent session ended")
}

// launcherRefusal turns a launcher status that is not the agent's banner
// into its error: errNeedAgent to upload, or a fallbackError; nil for the
// banner.
func launcherRefusal(status string) error {
	switch {
	case strings.HasPrefix(status, needAgentLine):
		f := strings.Fields(status)
		if len(f) < 3 {
			return fallbackError{reason: "launcher said " + status}
		}
		unsafe := ""
		if len(f) > 3 {
			unsafe = strings.Join(f[3:], " ")
		}
		return errNeedAgent{arch: archOf(f[2]), unsafe: unsafe}
	case strings.HasPrefix(status, noAgentLine):
		return fallbackError{reason: strings.TrimSpace(strings.TrimPrefix(status, noAgentLine))}
	}
	return nil
}

// closeBoth is the agent channel's stdin as the agent client sees it:
// closing it closes the channel, as the client's owner of the channel
// must when its session ends. It does not send EOF first: x/crypto sets
// its EOF flag without the lock its writes read it under, and yamux may
// still be writing when its session closes; a channel close ends the
// agent's input all the same.
type closeBoth struct {
	io.WriteCloser
	sess *gossh.Session
}

func (c closeBoth) Close() error { return c.sess.Close() }

func archOf(machine string) string {
	switch machine {
	case "x86_64", "amd64":
		return "amd64"
	case "aarch64", "arm64":
		return "arm64"
	}
	return machine
}

// readLauncherStatus skips login-shell noise and returns the first line
// that is a launcher status or the agent banner.
func readLauncherStatus(br *bufio.Reader) (string, error) {
	skipped := 0
	for skipped < 64<<10 {
		line, err := br.ReadString('\n')
		skipped += len(line)
		t := strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(t, needAgentLine) || strings.HasPrefix(t, noAgentLine) || strings.HasPrefix(t, agent.Banner+" ") {
			return t, nil
		}
		if err != nil {
			return "", fmt.Errorf("launcher output ended: %w", err)
		}
	}
	return "", errors.New("no agent banner in the first 64 KiB of output")
}

func (u *upstream) upload(ctx context.Context, arch string) error {
	bin, ok := u.pool.agents[arch]
	if !ok {
		return fallbackError{reason: "no agent build for " + arch}
	}
	start := time.Now()
	sess, err := u.client.NewSession()
	if err != nil {
		return fmt.Errorf("open upload channel: %w", err)
	}
	defer sess.Close()
	var out bytes.Buffer
	stderr := &boundedBuffer{max: 64 << 10}
	sess.Stdout = &out
	sess.Stderr = stderr
	sess.Stdin = bytes.NewReader(bin.Data)
	done := make(chan error, 1)
	// Owned here: the upload returns only after sess.Run has.
	var run gogroup.Group
	defer run.CloseWait()
	run.Go(func() { done <- sess.Run(uploadScript(bin.SHA256)) })
	select {
	case err = <-done:
	case <-ctx.Done():
		sess.Close()
		return ctx.Err()
	}
	var exitErr *gossh.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return fmt.Errorf("upload agent: %w", err)
	}
	if err != nil || !strings.Contains(out.String(), uploadedLine) {
		return fallbackError{reason: fmt.Sprintf("cannot install agent in ~/.cache/gomux: %v stderr: %q", err, stderr.String())}
	}
	u.pool.m.AgentUpload(len(bin.Data))
	u.logger().Info().Str("event", EventAgentUpload).Str("arch", arch).Str("sha256", bin.SHA256).
		Int("bytes", len(bin.Data)).Dur("duration", time.Since(start)).Msg("agent uploaded")
	return nil
}

// boundedBuffer keeps the first max bytes written to it: enough stderr to
// explain a failure, never unbounded memory.
type boundedBuffer struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.b.Len(); room > 0 {
		if len(p) > room {
			b.b.Write(p[:room])
		} else {
			b.b.Write(p)
		}
	}
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(b.b.String())
}
