package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/proxy/admission"
	"github.com/gomux/gomux/proxy/audit"
	"github.com/gomux/gomux/proxy/upstream"
	"github.com/gomux/gomux/shim"
)

// RFC 4254 request payloads.
type ptyRequest struct {
	Term                          string
	Cols, Rows, WidthPx, HeightPx uint32
	Modes                         string
}

type windowChange struct {
	Cols, Rows, WidthPx, HeightPx uint32
}

type envRequest struct{ Name, Value string }

type execRequest struct{ Command string }

type signalRequest struct{ Name string }

type exitStatus struct{ Status uint32 }

type exitSignal struct {
	Signal     string
	CoreDumped bool
	Message    string
	Lang       string
}

// maxEnv is how many env requests one session may make, as sshd's limit.
const maxEnv = 128

func (ic *innerConn) handleSession(ctx context.Context, nc gossh.NewChannel) {
	l, st, err := ic.backend(ctx)
	if err != nil {
		ic.log.Warn().Str("event", EventChannel).Err(err).Msg("session refused")
		nc.Reject(gossh.ConnectionFailed, err.Error())
		return
	}
	if st.Mode == upstream.ModeFallback {
		ic.forwardSession(ctx, l, nc)
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	s := &session{ic: ic, a: st.Agent, lease: l, ch: ch, start: time.Now(), log: ic.log, first: ic.sessions.Add(1) == 1}
	s.serve(ctx, reqs)
}

// session is one inner session channel served by the agent.
type session struct {
	ic    *innerConn
	a     *agent.Client
	lease *upstream.Lease
	ch    gossh.Channel
	log   zerolog.Logger
	start time.Time

	env  []string
	pty  *agent.Pty
	kind string // exec, shell or subsystem
	cmd  string
	// exec is how the command is served: the shim's whole decision and
	// where the session reports what it saw (shim.Exec).
	exec *shim.Exec
	// wholeStdin: the module went with the command (runWholeStdin).
	wholeStdin bool

	// first is the inner connection's first session (flushFirst).
	first bool

	mu   sync.Mutex
	proc *agent.Process
	// rec records the terminal output of a pty session (audit.record_dir).
	rec *recording

	bytesIn, bytesOut atomic.Int64
	run               gogroup.Group
	// unrun drops the command from what gomux sessions shows running.
	unrun func()
}

func (s *session) serve(ctx context.Context, reqs <-chan *gossh.Request) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for req := range reqs {
		ok := s.handleRequest(ctx, req)
		if req.WantReply {
			req.Reply(ok, nil)
		}
	}
	// The client closed the channel: its buffers are gone, so is its
	// count against the person's memory (a command that never reads its
	// stdin may keep its process, and this handler, waiting), and
	// whatever still runs for it is stopped.
	admission.FreeChannelMemory(ctx)
	if s.unrun != nil {
		s.unrun()
	}
	s.mu.Lock()
	if s.proc != nil {
		s.proc.Close()
	}
	s.mu.Unlock()
	cancel()
	s.run.CloseWait()
}

// handleRequest dispatches one channel request to the handler of its
// type and says whether it succeeded. auth-agent-req, x11-req and unknown
// requests are refused, as an sshd with forwarding disabled would.
func (s *session) handleRequest(ctx context.Context, req *gossh.Request) bool {
	switch req.Type {
	case "pty-req":
		return s.onPty(req)
	case "env":
		return s.onEnv(req)
	case "window-change":
		return s.onWindowChange(req)
	case "signal":
		return s.onSignal(req)
	case "exec":
		return s.onExec(ctx, req)
	case "shell":
		return !s.started() && s.startProcess(ctx, req, "shell", "")
	case "subsystem":
		return s.onSubsystem(ctx, req)
	}
	return false
}

// started says a command, shell or subsystem runs: the requests that
// set it up come too late.
func (s *session) started() bool { return s.kind != "" }

func (s *session) onPty(req *gossh.Request) bool {
	var p ptyRequest
	if s.started() || gossh.Unmarshal(req.Payload, &p) != nil {
		return false
	}
	s.pty = &agent.Pty{Term: p.Term, Cols: p.Cols, Rows: p.Rows, WidthPx: p.WidthPx, HeightPx: p.HeightPx, Modes: []byte(p.Modes)}
	return true
}

// onEnv accepts the variables upstream.accept_env names, up to maxEnv.
func (s *session) onEnv(req *gossh.Request) bool {
	var e envRequest
	if s.started() || gossh.Unmarshal(req.Payload, &e) != nil {
		return false
	}
	if !matchAny(s.ic.s.start.Upstream.AcceptEnv, e.Name) || strings.ContainsRune(e.Name, '=') {
		s.log.Debug().Str("env", e.Name).Msg("env request not accepted")
		return false
	}
	if len(s.env) >= maxEnv {
		s.log.Warn().Str("event", EventLimit).Str("env", e.Name).Int("max_env", maxEnv).Msg("env request beyond the limit refused")
		return false
	}
	s.env = append(s.env, e.Name+"="+e.Value)
	return true
}

func (s *session) onWindowChange(req *gossh.Request) bool {
	var w windowChange
	if gossh.Unmarshal(req.Payload, &w) != nil {
		return false
	}
	if s.pty != nil {
		s.pty.Cols, s.pty.Rows, s.pty.WidthPx, s.pty.HeightPx = w.Cols, w.Rows, w.WidthPx, w.HeightPx
	}
	if s.rec != nil {
		s.rec.Resize(w.Cols, w.Rows)
	}
	if p := s.process(); p != nil {
		p.Resize(w.Cols, w.Rows, w.WidthPx, w.HeightPx)
	}
	return true
}

func (s *session) onSignal(req *gossh.Request) bool {
	var sig signalRequest
	if gossh.Unmarshal(req.Payload, &sig) != nil {
		return false
	}
	if p := s.process(); p != nil {
		return p.Signal(sig.Name) == nil
	}
	return false
}

func (s *session) onExec(ctx context.Context, req *gossh.Request) bool {
	var e execRequest
	if s.started() || gossh.Unmarshal(req.Payload, &e) != nil {
		return false
	}
	return s.startProcess(ctx, req, "exec", e.Command)
}

// onSubsystem serves sftp from the agent; other subsystems are refused.
func (s *session) onSubsystem(ctx context.Context, req *gossh.Request) bool {
	var e execRequest
	if s.started() || gossh.Unmarshal(req.Payload, &e) != nil {
		return false
	}
	if e.Command != "sftp" {
		s.log.Info().Str("event", EventChannel).Str("subsystem", e.Command).Msg("unknown subsystem refused")
		return false
	}
	s.kind, s.cmd = "subsystem", "sftp"
	s.exec = shim.Unplanned(s.shimHost(), "")
	s.unrun = s.ic.held.run(runName(s.kind, s.cmd))
	answer(req, true)
	s.spawn(func() { s.serveSFTP(ctx) })
	return true
}

func (s *session) process() *agent.Process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// startProcess starts an exec or a shell as the shim decides
// (shim.Exec.Start): answered by gomux (replyLocally), sent with its whole
// stdin (runWholeStdin), or started on the agent (startOnAgent).
func (s *session) startProcess(ctx context.Context, req *gossh.Request, kind, cmd string) bool {
	s.kind, s.cmd = kind, cmd
	s.unrun = s.ic.held.run(runName(kind, cmd))
	host := s.shimHost()
	s.exec = shim.Unplanned(host, cmd)
	if kind == "exec" && host != nil {
		s.exec = host.Exec(cmd, s.execOptions())
	}
	switch s.exec.Start {
	case shim.StartReply:
		answer(req, true)
		s.spawn(func() { s.replyLocally(s.exec.Plan) })
		return true
	case shim.StartWholeStdin:
		answer(req, true)
		if s.exec.Ahead != "" {
			io.WriteString(s.ch, s.exec.Ahead)
		}
		s.spawn(func() { s.runWholeStdin(ctx) })
		return true
	}
	return s.startOnAgent(ctx, req)
}

// shimHost is the shim's state of this session's target and login user,
// looked up once per session; nil with Ansible mode off.
func (s *session) shimHost() *shim.Host {
	if !s.ic.s.start.Upstream.Ansible {
		return nil
	}
	return s.lease.Shim(s.a)
}

// execOptions are what the shim needs to know of this session.
func (s *session) execOptions() shim.ExecOptions {
	o := shim.ExecOptions{Terminal: s.pty != nil}
	if up := &s.ic.s.start.Upstream; up.WarmPython {
		info := s.a.Info()
		o.Warm = shim.WarmOptions{Agent: info.Executable, AgentID: info.ID(), Idle: up.WarmPythonIdle.D(), Terminal: s.pty != nil}
	}
	return o
}

// terminal is the session's pty as the command gets it: a warm run takes
// it as its controlling terminal, so the shell must not.
func (s *session) terminal() *agent.Pty {
	if s.pty == nil || !s.exec.TerminalToRun {
		return s.pty
	}
	pty := *s.pty
	pty.NotControlling = true
	return &pty
}

// startOnAgent starts the command on the agent and pumps its stdio.
func (s *session) startOnAgent(ctx context.Context, req *gossh.Request) bool {
	rec, err := s.ic.record(s.kind, s.cmd, s.pty, s.log)
	if err != nil {
		answer(req, true)
		refuseRun(s.ch, err)
		return true
	}
	s.rec = rec
	p, err := s.begin(ctx, &agent.ExecRequest{Command: s.exec.Command, Env: s.env, Pty: s.terminal()})
	if err != nil {
		if s.rec != nil {
			// Nothing ran: the recording ends here, its stop logged.
			s.rec.finish(s.log)
			s.rec = nil
		}
		if reply, ok := s.exec.PrepFailed(err); ok {
			answer(req, true)
			s.spawn(func() { s.replyLocally(reply) })
			return true
		}
		s.log.Warn().Str("event", EventChannel).Str("kind", s.kind).Str("command", audit.RedactCommand(s.exec.Command)).Err(err).Msg("exec failed")
		// A broken agent is a broken path to the target: close without
		// an exit status so the client reports a connection failure.
		answer(req, false)
		s.ch.Close()
		return false
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	answer(req, true)
	s.spawn(func() { s.pump(p, s.ch) })
	return true
}

// begin starts exec with the shim's deferred steps on the agent, as its
// start mode says: with agent.Client.Batch, or without waiting for the
// answer (agent.Client.Start) so stdin follows at once. When the agent's
// session had ended while idle and gomux had not yet seen it, nothing
// reached the target, so one more try on a new agent is safe; the module
// runs cold there (shim.Exec.Cold), which is the same run, only slower.
func (s *session) begin(ctx context.Context, exec *agent.ExecRequest) (*agent.Process, error) {
	start := s.a.Batch
	if s.exec.Start != shim.StartBatch {
		start = s.a.Start
	}
	ctx = s.exec.Sending(ctx)
	p, err := start(ctx, s.exec.Prep, exec)
	if errors.Is(err, agent.ErrNotSent) {
		if l, st, berr := s.ic.backend(ctx); berr == nil && st.Mode == upstream.ModeAgent {
			s.log.Info().Str("event", EventChannel).Err(err).Msg("agent session had ended; sending the command again on a new one")
			s.lease, s.a = l, st.Agent
			retry := *exec
			retry.Command = s.exec.Cold()
			p, err = s.a.Batch(ctx, s.exec.Prep, &retry)
		}
	}
	return p, err
}

// maxWholeStdin bounds the pipelined module gomux takes whole before it
// starts the run; a larger input is streamed as it comes.
const maxWholeStdin = 16 << 20

// runWholeStdin serves a pipelined module run whose stdin Ansible sends
// at once: it reads stdin to its end (at most maxWholeStdin, within the
// staging budget), and when that is an AnsiballZ module, sends it with
// the command as parts the agent caches, so a module's archive crosses
// the network once per run, not once per task. Anything else, or more,
// is streamed as before. The exec request was already answered.
func (s *session) runWholeStdin(ctx context.Context) {
	var buf bytes.Buffer
	var held int64
	person := s.ic.frontUser
	defer func() { s.ic.s.budget.Release(held); s.ic.s.limits.Free(person, held) }()
	whole := false
	chunk := make([]byte, 32<<10)
	for {
		n, err := s.ch.Read(chunk)
		if n > 0 {
			if int64(buf.Len()+n) > maxWholeStdin || !s.ic.s.limits.Hold(person, int64(n)) {
				buf.Write(chunk[:n])
				break
			}
			if !s.ic.s.budget.Reserve(int64(n)) {
				s.ic.s.limits.Free(person, int64(n))
				buf.Write(chunk[:n])
				break
			}
			held += int64(n)
			buf.Write(chunk[:n])
		}
		if err != nil {
			whole = err == io.EOF
			break
		}
	}
	if ctx.Err() != nil {
		// The client closed the channel while sending: nothing was
		// started, and no one is left to tell.
		return
	}
	exec := &agent.ExecRequest{Command: s.exec.Command, Env: s.env}
	var in io.Reader
	var parts []agent.PrepPart
	if whole {
		parts = shim.ModuleParts(buf.Bytes(), s.ic.s.pool.Sums())
	}
	if parts != nil {
		exec.Stdin = parts
		s.bytesIn.Add(int64(buf.Len()))
		s.wholeStdin = true
	} else {
		in = io.MultiReader(bytes.NewReader(buf.Bytes()), s.ch)
	}
	p, err := s.begin(ctx, exec)
	if err != nil {
		if reply, ok := s.exec.PrepFailed(err); ok {
			s.replyLocally(reply)
			return
		}
		s.log.Warn().Str("event", EventChannel).Str("kind", s.kind).Str("command", audit.RedactCommand(s.cmd)).Err(err).Msg("exec failed")
		s.ch.Close()
		return
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	s.pump(p, in)
}

// becomeStdout is the process's stdout as the shim passes it on
// (shim.Exec.Stdout: a become marker watched, one sent ahead removed).
func (s *session) becomeStdout(p *agent.Process) io.Reader {
	return s.exec.Stdout(p.Stdout(), func() {
		s.log.Warn().Str("event", EventBecomeSpeculation).Str("command", audit.RedactCommand(s.cmd)).
			Msg("BECOME-SUCCESS was sent ahead but the target's output did not begin with it; its output is passed on unchanged")
	})
}

// replyLocally answers a step the shim served without the target, exactly
// as the target's shell would have, then sends what the target is owed
// (the removal of a finished temp dir) without making the client wait.
func (s *session) replyLocally(plan shim.Plan) {
	s.flushFirst()
	if plan.Stdout != "" {
		io.WriteString(s.ch, plan.Stdout)
	}
	if plan.Stderr != "" {
		io.WriteString(s.ch.Stderr(), plan.Stderr)
	}
	s.reportExit(plan.Exit, "", false)
	s.ic.s.metrics.sessionEnded(s, true)
	s.counters(s.log.Info().Str("event", EventChannel).Str("kind", "exec").Str("command", audit.RedactCommand(s.cmd)).Str("step", s.exec.Kind.String()).
		Bool("local", true).Int("exit_status", plan.Exit).Dur("duration", time.Since(s.start))).Msg("answered locally")
	if len(plan.After) == 0 {
		return
	}
	a, host, log := s.a, s.exec.Host(), s.log
	sent := s.lease.Go(func() {
		ctx, cancel := context.WithTimeout(s.lease.Context(), time.Minute)
		defer cancel()
		if err := sendOps(ctx, a, host, plan.After); err != nil {
			log.Warn().Str("event", EventShimAfter).Err(err).Msg("deferred temp dir removal failed")
		}
	})
	if !sent {
		log.Warn().Str("event", EventShimAfter).Err(errShuttingDown).Msg("deferred temp dir removal not sent")
	}
}

// flush is the one way gomux writes to the target what the shim holds
// for it only in gomux's memory (shim.Host.Flush: temp dirs not yet made,
// staged uploads, recorded modes), before anything that could see them.
func flush(ctx context.Context, a *agent.Client, host *shim.Host) error {
	ops := host.Flush()
	if len(ops) == 0 {
		return nil
	}
	return sendOps(ctx, a, host, ops)
}

// sendOps sends ops the shim owes the target (flush, or a Plan's After:
// a deferred temp dir removal) as one batch, counted in host's round
// trips once it left gomux, and again if it is resent after a cache miss.
func sendOps(ctx context.Context, a *agent.Client, host *shim.Host, ops []agent.PrepOp) error {
	_, err := a.Batch(agent.WithResent(ctx, host.CountRoundTrip), ops, nil)
	if !errors.Is(err, agent.ErrNotSent) {
		host.CountRoundTrip()
	}
	return err
}

// counters adds what the shim and the blob cache saved so far on this
// target, cumulative, so a log reader sees round trips per task.
func (s *session) counters(ev *zerolog.Event) *zerolog.Event {
	host := s.exec.Host()
	if host == nil {
		return ev
	}
	c := host.Counters()
	sent, saved := s.a.BlobBytes()
	return ev.Int64("round_trips", c.RoundTrips).Int64("local_steps", c.Local).
		Int64("blob_bytes_sent", sent).Int64("blob_bytes_saved", saved)
}

// reportExit ends the channel the way sshd does: the exit report first,
// then EOF, then close. The order matters. OpenSSH's client closes a
// channel as soon as its own input has ended and it has seen EOF, without
// waiting for an exit report, and x/crypto answers that close at once and
// drops whatever the channel sends after it. An exit report sent after EOF
// therefore races the client's close; when it loses, the client (a
// ControlMaster's mux client, with Ansible's pipelined stdin already
// closed) exits 255 and Ansible calls the host UNREACHABLE. All output has
// been written before this is called, so nothing of it follows the report.
func (s *session) reportExit(code int, signal string, coreDumped bool) {
	var err error
	if signal != "" {
		_, err = s.ch.SendRequest("exit-signal", false, gossh.Marshal(exitSignal{Signal: signal, CoreDumped: coreDumped}))
	} else {
		_, err = s.ch.SendRequest("exit-status", false, gossh.Marshal(exitStatus{Status: uint32(code)}))
	}
	if err != nil {
		// Only a client that closed the channel before the command ended
		// gets here: nobody is left to tell.
		s.log.Debug().Str("event", EventChannel).Err(err).Msg("exit report not delivered: channel already closed by the client")
	}
	s.ch.CloseWrite()
	s.ch.Close()
}

// answer replies to req at once, before any data the request causes, so
// the client sees success first as from sshd; the request loop then does
// not reply again.
func answer(req *gossh.Request, ok bool) {
	if req.WantReply {
		req.Reply(ok, nil)
		req.WantReply = false
	}
}

// spawn runs fn as one of the session's goroutines, which serve waits for.
// It is called from serve's request loop, before serve closes s.run, so
// it is not refused; were it, the channel would close.
func (s *session) spawn(fn func()) {
	ok := s.run.Go(func() {
		defer contain(s.log, "session "+s.kind, s.ch)
		fn()
	})
	if !ok {
		s.ch.Close()
	}
}

// Buffer sizes of copyGrowing: a read that fills the buffer doubles it, up
// to the largest SSH channel packet.
const (
	copyBufMin = 2 << 10
	copyBufMax = 32 << 10
)

// copyGrowing is io.Copy with a buffer that starts small and doubles while
// reads fill it. A task's stdio is mostly a few hundred bytes or nothing,
// and io.Copy's 32 KiB buffer for each of stdin, stdout and stderr was most
// of what gomux allocated per command; bulk output still moves in 32 KiB
// reads after a few.
func copyGrowing(dst io.Writer, src io.Reader) (int64, error) {
	var written int64
	buf := make([]byte, copyBufMin)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			written += int64(w)
			if werr != nil {
				return written, werr
			}
			if w != n {
				return written, io.ErrShortWrite
			}
			if n == len(buf) && len(buf) < copyBufMax {
				buf = make([]byte, 2*len(buf))
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// pump moves stdio between the channel and the process, then reports the
// exit the way sshd does: EOF, exit-status or exit-signal, close.
func (s *session) pump(p *agent.Process, stdin io.Reader) {
	out := s.copyOutput(p)
	in := s.copyInput(p, stdin)
	out.Wait()
	st, err := p.Wait()
	defer s.ic.s.metrics.sessionEnded(s, false)
	log := s.endEvent()
	if reply, ok := s.exec.PrepFailed(err); ok && errors.Is(err, agent.ErrNotStarted) {
		// As with Batch in startOnAgent: a deferred step failed on the
		// target and Ansible sees a failed command.
		io.WriteString(s.ch.Stderr(), reply.Stderr)
		s.reportExit(reply.Exit, "", false)
		in.Wait()
		log.Err(err).Int("exit_status", reply.Exit).Dur("duration", time.Since(s.start)).Msg("deferred step failed")
		return
	}
	if err != nil {
		s.ch.Close()
		in.Wait()
		log.Err(err).Int64("bytes_in", s.bytesIn.Load()).Int64("bytes_out", s.bytesOut.Load()).
			Dur("duration", time.Since(s.start)).Msg("agent lost during session; closed without exit status")
		return
	}
	if st.Signal == "" {
		s.exec.Done(st.Code)
	}
	s.reportExit(st.Code, st.Signal, st.CoreDumped)
	in.Wait()
	s.counters(log).Int("exit_status", st.Code).Str("exit_signal", st.Signal).Int64("bytes_in", s.bytesIn.Load()).
		Int64("bytes_out", s.bytesOut.Load()).Dur("duration", time.Since(s.start)).Msg("session ended")
}

// copyOutput copies the process's stdout and stderr to the channel (and
// the recording); a failed write abandons the process. The caller waits
// for the copies on the returned group.
func (s *session) copyOutput(p *agent.Process) *gogroup.Group {
	out := new(gogroup.Group)
	stdout, stderr := io.Writer(s.ch), io.Writer(s.ch.Stderr())
	if s.rec != nil {
		stdout, stderr = io.MultiWriter(s.ch, s.rec), io.MultiWriter(s.ch.Stderr(), s.rec)
	}
	out.Go(func() {
		n, err := copyGrowing(stdout, s.becomeStdout(p))
		s.bytesOut.Add(n)
		if err != nil {
			p.Close()
		}
	})
	out.Go(func() {
		n, err := copyGrowing(stderr, p.Stderr())
		s.bytesOut.Add(n)
		if err != nil {
			p.Close()
		}
	})
	return out
}

// copyInput copies stdin to the process, then closes the process's stdin;
// nil stdin means it went whole with the command. The caller waits for
// the copy on the returned group.
func (s *session) copyInput(p *agent.Process, stdin io.Reader) *gogroup.Group {
	in := new(gogroup.Group)
	in.Go(func() {
		if stdin == nil {
			// The whole stdin went with the command; the client's
			// has ended.
			return
		}
		n, _ := copyGrowing(p.Stdin(), stdin)
		s.bytesIn.Add(n)
		p.Stdin().Close()
	})
	return in
}

// endEvent is the session's closing log line, with what every ending
// reports, and closes the recording.
func (s *session) endEvent() *zerolog.Event {
	log := s.log.Info().Str("event", EventChannel).Str("kind", s.kind).Str("command", audit.RedactCommand(s.cmd)).Str("step", s.exec.Kind.String()).Bool("pty", s.pty != nil).
		Bool("warm", s.exec.Warm).Bool("module_by_parts", s.wholeStdin)
	if s.exec.BecomeWatched() {
		log = log.Bool("become_speculated", s.exec.Ahead != "").Bool("become_marker_seen", s.exec.MarkerSeen())
	}
	if s.rec != nil {
		log = log.Str("recording", s.rec.Path())
		s.rec.finish(s.log)
	}
	return log
}

func (s *session) serveSFTP(ctx context.Context) {
	// pkg/sftp closes its connection when it stops; the channel must stay
	// open for the exit status, which scp checks.
	cw := &countingRW{rw: s.ch, in: &s.bytesIn, out: &s.bytesOut}
	host := s.exec.Host()
	person := s.ic.frontUser
	srv := newSFTPServer(ctx, s.a, host, cw, sftpLimits{handles: s.ic.s.start.Limits.MaxSFTPHandles, budget: s.ic.s.budget,
		hold: func(n int64) bool { return s.ic.s.limits.Hold(person, n) }, free: func(n int64) { s.ic.s.limits.Free(person, n) }}, s.log)
	err := srv.Serve()
	srv.Close()
	s.flushFirst()
	status := 0
	if err != nil && err != io.EOF {
		status = 1
	}
	s.reportExit(status, "", false)
	s.ic.s.metrics.sessionEnded(s, false)
	ev := s.counters(s.log.Info()).Str("event", EventChannel).Str("kind", "subsystem").Str("command", "sftp").
		Int64("bytes_in", s.bytesIn.Load()).Int64("bytes_out", s.bytesOut.Load()).Dur("duration", time.Since(s.start))
	if status != 0 {
		ev = ev.Err(err)
	}
	ev.Msg("sftp session ended")
}

// countingRW counts the bytes of an sftp session for the channel log line.
type countingRW struct {
	rw      io.ReadWriter
	in, out *atomic.Int64
}

func (c *countingRW) Read(p []byte) (int, error) {
	n, err := c.rw.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *countingRW) Write(p []byte) (int, error) {
	n, err := c.rw.Write(p)
	c.out.Add(int64(n))
	return n, err
}

// Close leaves the channel open: the session sends the exit status and
// closes it after the sftp server has stopped.
func (c *countingRW) Close() error { return nil }

// refuseRun ends a session whose command gomux will not run, after its
// request was accepted: why goes to the client's stderr, then exit status
// 1 and the close, which every client shows in that order (a refused
// request's reply can overtake the message).
func refuseRun(ch gossh.Channel, why error) {
	io.WriteString(ch.Stderr(), why.Error()+"\r\n")
	ch.SendRequest("exit-status", false, gossh.Marshal(exitStatus{Status: 1}))
	ch.CloseWrite()
	ch.Close()
}
