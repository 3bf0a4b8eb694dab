package proxy

import (
	"errors"
	"fmt"
	"os"

	"github.com/rs/zerolog"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/proxy/audit"
)

// recordingCost is what one open recording counts against its person's
// memory share: its write buffer and a held partial character.
const recordingCost = 8 << 10

// recording is a session's recording as the proxy holds it: the
// recorder, and the release of its count against its person's memory
// share (recordingCost), which finish calls.
type recording struct {
	*audit.Recorder
	release func()
}

// record opens the recording a session is due: one with a pty, or a shell
// without one, when audit.record_dir is set or recording is required. It
// returns nil and no error when none is due, or when one could not be made
// and recording is not required (logged: the session goes on). An error
// means recording is required and cannot be had: the caller refuses the
// session with it (phrased for the client, without gomux's paths).
func (ic *innerConn) record(kind, cmd string, pty *agent.Pty, log zerolog.Logger) (*recording, error) {
	cfg := ic.s.config().Audit
	if pty == nil && kind != "shell" || cfg.RecordDir == "" && !cfg.RecordRequired {
		return nil, nil
	}
	h := audit.Header{Width: 80, Height: 24, Command: audit.RedactCommand(cmd), Env: map[string]string{},
		Title: ic.frontUser + " as " + ic.remoteUser + "@" + ic.host, User: ic.frontUser, Remote: ic.remoteUser, Target: ic.addr}
	if pty != nil {
		h.Env["TERM"] = pty.Term
		if pty.Cols > 0 && pty.Rows > 0 {
			h.Width, h.Height = pty.Cols, pty.Rows
		}
	}
	var rec *audit.Recorder
	rec, err := ic.s.recordings.Open(audit.RecordOptions{Dir: cfg.RecordDir, MaxMiB: cfg.RecordMaxMiB, QuotaMiB: cfg.RecordQuotaMiB,
		OnFull: func() {
			log.Warn().Str("event", EventRecording).Str("result", "full").Str("recording", rec.Path()).
				Int("limit_mib", int(rec.Limit()>>20)).Msg("recording stopped at its size limit or the quota; the session goes on")
		}}, h)
	if err == nil && !ic.s.limits.Hold(ic.frontUser, recordingCost) {
		rec.Close()
		os.Remove(rec.Path())
		rec, err = nil, errors.New("the person holds their memory share (limits.person_memory_mib)")
	}
	if err != nil {
		if cfg.RecordRequired {
			log.Warn().Str("event", EventRecording).Str("result", "refused").Err(err).
				Msg("session refused: audit.record_required and it cannot be recorded")
			why := "recording is unavailable"
			if errors.Is(err, audit.ErrRecordQuota) {
				why = "the recordings quota is reached"
			}
			return nil, fmt.Errorf("gomux: this session must be recorded and cannot be (%s)", why)
		}
		log.Error().Str("event", EventRecording).Str("result", "failed").Err(err).Msg("cannot record the session; it goes on unrecorded")
		return nil, nil
	}
	person := ic.frontUser
	log.Info().Str("event", EventRecording).Str("result", "started").Str("recording", rec.Path()).Bool("pty", pty != nil).
		Msg("recording started")
	return &recording{Recorder: rec, release: func() { ic.s.limits.Free(person, recordingCost) }}, nil
}

// finish closes the recording and logs its end, the audit event that
// pairs with its start: complete, or why not.
func (r *recording) finish(log zerolog.Logger) {
	err := r.Close()
	if r.release != nil {
		r.release()
	}
	size := r.Size()
	if err != nil {
		log.Error().Str("event", EventRecording).Str("result", "incomplete").Str("recording", r.Path()).Int64("bytes", size).
			Err(err).Msg("recording incomplete")
		return
	}
	log.Info().Str("event", EventRecording).Str("result", "stopped").Str("recording", r.Path()).Int64("bytes", size).
		Msg("recording stopped")
}
