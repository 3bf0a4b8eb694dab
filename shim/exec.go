package shim

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	"github.com/gomux/gomux/agent"
)

// StepKind is what a command was recognized as, as a value callers
// compare (metrics count module runs, logs name the step) without naming
// the shim's step types.
type StepKind uint8

// The kinds of step, one per Step type, and StepNone for a command the
// shim did not plan (Ansible mode off, a shell, a subsystem).
const (
	StepNone StepKind = iota
	StepEchoHome
	StepMakeTemp
	StepChmod
	StepSetfacl
	StepRemove
	StepRun
	StepPassthrough
)

// String is the step's name in log lines (the "step" field), as it has
// always been written: the step type's name, empty for StepNone.
func (k StepKind) String() string {
	switch k {
	case StepEchoHome:
		return "EchoHome"
	case StepMakeTemp:
		return "MakeTemp"
	case StepChmod:
		return "Chmod"
	case StepSetfacl:
		return "Setfacl"
	case StepRemove:
		return "Remove"
	case StepRun:
		return "Run"
	case StepPassthrough:
		return "Passthrough"
	}
	return ""
}

// kindOf names step's kind.
func kindOf(step Step) StepKind {
	switch step.(type) {
	case EchoHome:
		return StepEchoHome
	case MakeTemp:
		return StepMakeTemp
	case Chmod:
		return StepChmod
	case Setfacl:
		return StepSetfacl
	case Remove:
		return StepRemove
	case Run:
		return StepRun
	case Passthrough:
		return StepPassthrough
	}
	return StepNone
}

// StartMode is how a command starts on the target: the one choice the
// caller acts on, so no caller rebuilds it from flags.
type StartMode uint8

const (
	// StartReply: gomux answers with Exec.Stdout, Stderr and Exit;
	// nothing runs on the target now (Exec.After may follow it).
	StartReply StartMode = iota
	// StartBatch: the command goes in one batch with Exec.Prep and the
	// caller waits for the agent's answer before it passes stdin on
	// (agent.Client.Batch).
	StartBatch
	// StartEarly: the command goes without waiting for the agent's
	// answer, so the stdin that follows it goes in the same round trip
	// (agent.Client.Start): a pipelined run whose module Ansible sends
	// only after it sees something of the target (a become marker or
	// prompt), or one on a terminal.
	StartEarly
	// StartWholeStdin: a pipelined module run Ansible sends at once and
	// ends: the caller writes Exec.Ahead, reads stdin to its end and
	// sends it with the command (its archive as parts, ModuleParts), then
	// starts it as StartEarly.
	StartWholeStdin
)

// ExecOptions are what the caller knows of the session a command runs in.
type ExecOptions struct {
	// Warm names the agent whose fork servers may run a module; the zero
	// value runs every command cold.
	Warm WarmOptions
	// Terminal says the session has a pty.
	Terminal bool
}

// Exec is one command as the shim serves it: the whole decision (what
// runs, what goes with it, how it starts, what gomux says ahead) and the
// feedback the shim learns from as it ends. The caller moves the bytes
// and reports what it saw through Exec's methods; it never reaches into
// the Host. An Exec from Unplanned decides nothing and learns nothing.
type Exec struct {
	Plan
	// Kind is what the command was recognized as.
	Kind StepKind
	// Start is how the command starts.
	Start StartMode
	// Ahead is written to the client before anything of the target's:
	// the become marker gomux answers in the target's place
	// (speculateBecome), so Ansible sends its module at once.
	Ahead string

	host    *Host
	sent    string  // the command as the client sent it
	become  *Become // a wrapper whose marker is watched on stdout
	watched atomic.Int32
}

// Marker-watch outcomes of an Exec (watched).
const (
	markerUndecided = iota
	markerSeen
	markerMissing
)

// Unplanned is a command the shim does not serve (a shell, a subsystem,
// or any command with Ansible mode off, where h is nil): it runs as sent,
// started as a batch, and the shim learns nothing from it; h is still
// what the session flushes and counts against.
func Unplanned(h *Host, cmd string) *Exec {
	return &Exec{Plan: Plan{Command: cmd}, Start: StartBatch, host: h, sent: cmd}
}

// Exec decides how to serve cmd (Plan), how it starts, and what gomux
// says ahead of the target.
func (h *Host) Exec(cmd string, o ExecOptions) *Exec {
	e := &Exec{Plan: h.planCmd(cmd, o.Warm), host: h, sent: cmd}
	e.Kind = kindOf(e.Step)
	switch run, ok := e.Step.(Run); {
	case e.Reply:
		e.Start = StartReply
	case !ok || run.Script.Value != "":
		e.Start = StartBatch
	default:
		// A pipelined run: its module follows on stdin.
		e.Start = StartEarly
		if run.Become.watchBecome() && !o.Terminal {
			e.become = run.Become
			if h.speculateBecome(run.Become) {
				e.Ahead = run.Become.Marker()
			}
		}
		if !o.Terminal && (run.Become == nil || e.Ahead != "") {
			// Ansible sends the module now and closes stdin after it.
			// Never under a become gomux did not answer ahead: there
			// Ansible waits for the target (a marker, a password
			// prompt) before it sends anything.
			e.Start = StartWholeStdin
		}
	}
	return e
}

// Cold is the command as the client sent it, for a run sent again on a
// new agent, whose fork servers the warm rewrite does not name.
func (e *Exec) Cold() string {
	e.Warm = false
	return e.sent
}

// Done tells the shim how a command that reached the target ended.
func (e *Exec) Done(exit int) {
	if e.host != nil && e.Kind != StepNone {
		e.host.observe(e.Step, exit)
	}
}

// Stdout is the run's stdout as the client gets it: when a become
// wrapper's marker is watched, the shim learns from its first bytes
// whether the wrapper worked, and a marker gomux already sent (Ahead) is
// removed. onMissing is called when gomux sent the marker ahead and the
// target's output did not begin with it.
func (e *Exec) Stdout(r io.Reader, onMissing func()) io.Reader {
	if e.become == nil {
		return r
	}
	return &markerReader{R: r, Marker: e.become.Marker(), Strip: e.Ahead != "", Seen: func(seen bool) {
		if seen {
			e.watched.Store(markerSeen)
		} else {
			e.watched.Store(markerMissing)
		}
		e.host.observeBecome(e.become, seen)
		if !seen && e.Ahead != "" && onMissing != nil {
			onMissing()
		}
	}}
}

// BecomeWatched says whether the run's stdout was watched for a become
// marker; MarkerSeen whether it came (false until decided).
func (e *Exec) BecomeWatched() bool { return e.become != nil }

// MarkerSeen says whether the watched become marker came first on stdout.
func (e *Exec) MarkerSeen() bool { return e.watched.Load() == markerSeen }

// prepFailed says whether err is a deferred step (a temp dir, an upload)
// that went with the command failing on the target, and if so tells the
// shim, and returns the reply Ansible gets instead: a failed command with
// the target's error on stderr, as it would have seen the step fail.
func (e *Exec) PrepFailed(err error) (reply Plan, ok bool) {
	var re *agent.RemoteError
	if len(e.Prep) == 0 || !errors.As(err, &re) {
		return Plan{}, false
	}
	if e.host != nil {
		e.host.prepFailed()
	}
	return Plan{Exit: 1, Stderr: "gomux: " + re.Error() + "\n"}, true
}

// Sending is ctx for the request that carries the command: a resend after
// the agent's cache missed counts as a round trip of the Host's, as the
// first sending was counted when the shim planned it.
func (e *Exec) Sending(ctx context.Context) context.Context {
	if e.host == nil || e.Kind == StepNone {
		return ctx
	}
	return agent.WithResent(ctx, e.host.CountRoundTrip)
}

// Host is the target state the command was planned against (nil with
// Ansible mode off): what a caller flushes before it replies, and whose
// counters its log line reports.
func (e *Exec) Host() *Host { return e.host }
