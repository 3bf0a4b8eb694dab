package proxy

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/internal/gogroup"
	"github.com/gomux/gomux/proxy/audit"
	"github.com/gomux/gomux/proxy/upstream"
)

// forwardSession serves a session channel in fallback mode by opening a
// channel of the same type upstream and relaying requests and data
// unchanged, so the target's sshd answers everything itself.
func (ic *innerConn) forwardSession(ctx context.Context, l *upstream.Lease, nc gossh.NewChannel) {
	start := time.Now()
	uch, ureqs, err := l.OpenChannel("session", nc.ExtraData())
	if err != nil {
		msg := fmt.Sprintf("gomux: open session on %s: %v", ic.host, err)
		ic.log.Warn().Str("event", EventChannel).Str("mode", "fallback").Err(err).Msg("session refused")
		nc.Reject(gossh.ConnectionFailed, msg)
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		uch.Close()
		return
	}
	defer ic.held.run("fallback session")()
	var cmd string
	var rec atomic.Pointer[recording] // set before the command starts
	var fromClient gogroup.Group
	fromClient.Go(func() {
		cmd = ic.forwardClientRequests(reqs, uch, ch, &rec)
		uch.Close()
	})
	var in int64
	fromClient.Go(func() {
		in, _ = io.Copy(uch, ch)
		uch.CloseWrite()
	})

	// Everything from the target reaches the client before the close, so
	// the client sees the same data, exit report and EOF it would directly.
	var fromTarget gogroup.Group
	var out, errOut int64
	exited := false
	fromTarget.Go(func() { exited = forwardTargetRequests(ureqs, ch) })
	fromTarget.Go(func() { errOut, _ = io.Copy(recTee{ch.Stderr(), &rec}, uch.Stderr()) })
	fromTarget.Go(func() { out, _ = io.Copy(recTee{ch, &rec}, uch) })
	fromTarget.Wait()
	ch.CloseWrite()
	ch.Close()
	fromClient.Wait()
	ic.s.metrics.task("fallback", false, time.Since(start), in, out+errOut)
	ev := ic.log.Info().Str("event", EventChannel).Str("mode", "fallback").Str("command", audit.RedactCommand(cmd)).Bool("exited", exited).
		Int64("bytes_in", in).Int64("bytes_out", out+errOut).Dur("duration", time.Since(start))
	if r := rec.Load(); r != nil {
		ev = ev.Str("recording", r.Path())
		r.finish(ic.log)
	}
	ev.Msg("session ended")
}

// recTee writes to w and to the recording once there is one.
type recTee struct {
	w   io.Writer
	rec *atomic.Pointer[recording]
}

func (t recTee) Write(p []byte) (int, error) {
	if r := t.rec.Load(); r != nil {
		r.Write(p)
	}
	return t.w.Write(p)
}

// forwardClientRequests relays the client's requests to the target's
// channel, refusing env requests upstream.accept_env does not name, and
// returns the command (or subsystem) the client asked for. A session with
// a pty, or a shell, is recorded as through the agent: the recording is
// set in rec before the command starts, and where recording is required
// and cannot be had, the command is refused with a message on ch.
func (ic *innerConn) forwardClientRequests(reqs <-chan *gossh.Request, uch, ch gossh.Channel, rec *atomic.Pointer[recording]) (cmd string) {
	var pty *agent.Pty
	for r := range reqs {
		switch r.Type {
		case "env":
			var e envRequest
			if gossh.Unmarshal(r.Payload, &e) != nil || !matchAny(ic.s.start.Upstream.AcceptEnv, e.Name) {
				r.Reply(false, nil)
				continue
			}
		case "pty-req":
			var p ptyRequest
			if gossh.Unmarshal(r.Payload, &p) == nil {
				pty = &agent.Pty{Term: p.Term, Cols: p.Cols, Rows: p.Rows}
			}
		case "window-change":
			var w windowChange
			if rc := rec.Load(); rc != nil && gossh.Unmarshal(r.Payload, &w) == nil {
				rc.Resize(w.Cols, w.Rows)
			}
		case "exec", "subsystem", "shell":
			var e execRequest
			if r.Type != "shell" && gossh.Unmarshal(r.Payload, &e) == nil {
				cmd = e.Command
			}
			if !ic.recordFallback(r, cmd, pty, ch, rec) {
				continue
			}
		}
		ok, err := uch.SendRequest(r.Type, r.WantReply, r.Payload)
		if r.WantReply {
			r.Reply(ok && err == nil, nil)
		}
	}
	return cmd
}

// recordFallback opens the recording of a fallback session about to run
// r (exec or shell; a subsystem is not recorded), and says whether r may
// go on; when not, r was refused with a message on ch.
func (ic *innerConn) recordFallback(r *gossh.Request, cmd string, pty *agent.Pty, ch gossh.Channel, rec *atomic.Pointer[recording]) bool {
	if r.Type == "subsystem" || rec.Load() != nil {
		return true
	}
	rc, err := ic.record(r.Type, cmd, pty, ic.log)
	if err != nil {
		if r.WantReply {
			r.Reply(true, nil)
		}
		refuseRun(ch, err)
		return false
	}
	if rc != nil {
		rec.Store(rc)
	}
	return true
}

// forwardTargetRequests relays the target's requests (the exit report
// among them) to the client, and says whether an exit report came.
func forwardTargetRequests(ureqs <-chan *gossh.Request, ch gossh.Channel) (exited bool) {
	for r := range ureqs {
		if r.Type == "exit-status" || r.Type == "exit-signal" {
			exited = true
		}
		ok, _ := ch.SendRequest(r.Type, r.WantReply, r.Payload)
		if r.WantReply {
			r.Reply(ok, nil)
		}
	}
	return exited
}
