// Package audit holds the mechanics of gomux's audit trail: what a logged
// command may show, the recording of interactive sessions, the counting
// of unauthenticated noise, and the audit file. It writes no log line:
// the proxy logs the audit events, with the names declared in
// proxy/events.go, and feeds this package what it needs (RecordOptions
// from the audit config, a callback for a recording that stops early).
//
// The schema of the trail (proxy.IsAuditEvent, proxy.AuditFields) stays
// in proxy/events.go, keyed by the event constants: here it would have
// to name each event again as a string, and the names are declared once.
//
// Dependencies run one way: proxy and cmd/gomux → proxy/audit → shim (its
// nesting bound) and target (shell quoting). This package imports neither
// proxy nor proxy/upstream.
//
// Files: redact.go (RedactCommand: NAME=value values as *** in a
// command, followed into sh -c scripts, by pattern where the parser
// cannot read it), record.go (Recorder: one session as asciicast v2, its
// size limit and marker; Recordings: the record_dir quota shared by
// every recording), noise.go (Noise: handshake failures, drops and login
// grace timeouts per source address, for the front_noise line), file.go
// (File: audit.log_file, reopened at reload).
//
// # Concurrency
//
// RedactCommand keeps no state.
//
// A Recorder is owned by the one session that opened it (through
// Recordings.Open), which closes it once. Its output copiers (stdout and
// stderr, two goroutines) and its request loop (Resize) call it at once:
// Recorder.mu serializes every event and guards the file, its writer,
// size, a held partial character and the first error. path, start,
// limit, quota and the OnFull callback are set before Open returns and
// read without the lock. OnFull runs under Recorder.mu, so it may read
// Path and Limit but must not call the Recorder's other methods.
//
// Recordings is one per server, shared by all sessions. Its mu guards the
// last count of the directory (which directory, when), held while Open
// measures the directory again (a ReadDir, at most once a minute); what
// recorders write since is added to an atomic counter without it. No
// Recorder.mu is taken under Recordings.mu, nor the reverse.
//
// Noise is one per server; its mu guards the counts and is a leaf. File
// is one per process; its mu guards the open file and is held across the
// write of one line, so a reopen never closes the file under a writer.
// File.mu is a leaf too, and the one lock here taken under another: the
// proxy's OnFull logs the recording event under Recorder.mu, and that
// line goes to the audit file.
package audit
