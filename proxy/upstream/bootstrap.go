package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/agent/dist"
	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/target"
)

// Launcher status lines (target.Launcher, target.Upload). The launcher
// prints one of these, or execs the agent, which prints agent.Banner.
const (
	needAgentLine = target.NeedAgent
	noAgentLine   = target.NoAgent
	uploadedLine  = target.Uploaded
)

// launcherScript is the command that starts the cached agent if its hash
// verifies (target.Launcher). The agent is told cacheDays, after which it
// removes what no start has used (agent.CleanCache).
func launcherScript(bins map[string]dist.Binary, cacheDays int) string {
	sums := make(map[string]string, len(bins))
	for _, b := range bins {
		sums[b.Arch] = b.SHA256
	}
	return target.Launcher(sums, cacheDays)
}

// uploadScript is the command that writes the agent from stdin into the
// per-user cache and verifies it (target.Upload).
func uploadScript(hash string) string { return target.Upload(hash) }

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

// archOf is the GOARCH of a `uname -m` name, or the name itself when
// there is no agent build for it.
func archOf(machine string) string {
	if a, ok := target.ArchOf(machine); ok {
		return a
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
		return fallbackError{reason: fmt.Sprintf("cannot install agent in ~/"+target.CacheDir+": %v stderr: %q", err, stderr.String())}
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
