package proxy

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// castHeader is the first line of an asciicast v2 file. Players ignore
// fields they do not know; gomux adds who and where, so a recording names
// its person without the log.
type castHeader struct {
	Version   int               `json:"version"`
	Width     uint32            `json:"width"`
	Height    uint32            `json:"height"`
	Timestamp int64             `json:"timestamp"`
	Command   string            `json:"command,omitempty"`
	Title     string            `json:"title,omitempty"`
	Env       map[string]string `json:"env"`
	User      string            `json:"gomux_user"`
	Remote    string            `json:"gomux_remote_user"`
	Target    string            `json:"gomux_target"`
}

// recorder writes one pty session as asciicast v2: terminal output and
// resizes, each with its time since the start. Input is never recorded.
// A write error, or reaching the size limit, stops the recording, never
// the session.
type recorder struct {
	path  string
	start time.Time
	// limit is the most bytes the file may hold (0: no limit); onFull,
	// when set, is called once when an event would pass it.
	limit  int64
	onFull func()

	mu      sync.Mutex
	f       *os.File
	w       *bufio.Writer
	size    int64  // bytes written to f
	partial []byte // an incomplete UTF-8 sequence held for the next write
	err     error
}

// errRecordingFull ends a recording that reached its size limit; the file
// ends with a marker event that says so.
var errRecordingFull = errors.New("recording reached its size limit")

// fullMarkerRoom is what the limit keeps free for that marker.
const fullMarkerRoom = 128

// newRecorder creates a new recording file in dir, mode 0600, and writes
// its header. The name says when, who and where, plus random bytes so two
// sessions never share a file. limit caps the file's size (0: none).
func newRecorder(dir string, h castHeader, limit int64) (*recorder, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("recording dir: %w", err)
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	start := time.Now()
	name := fmt.Sprintf("%s-%s-%s-%s.cast", start.UTC().Format("20060102T150405Z"), fileSafe(h.User),
		fileSafe(h.Target), hex.EncodeToString(rnd[:]))
	p := filepath.Join(dir, name)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("recording: %w", err)
	}
	h.Version, h.Timestamp = 2, start.Unix()
	b, err := json.Marshal(h)
	if err != nil {
		f.Close()
		return nil, err
	}
	r := &recorder{path: p, start: start, limit: limit, f: f, w: bufio.NewWriter(f), size: int64(len(b)) + 1}
	r.w.Write(b)
	r.w.WriteByte('\n')
	if err := r.w.Flush(); err != nil {
		f.Close()
		return nil, fmt.Errorf("recording: %w", err) // err names the file
	}
	return r, nil
}

// fileSafe keeps a name to characters that are safe in a file name.
func fileSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' || r == '@' {
			return r
		}
		return '_'
	}, s)
}

// Write records terminal output. It always reports success, so a full
// disk cannot break the session it records.
func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data := append(r.partial, p...)
	// Hold back a multi-byte character cut at the end of this chunk, so
	// the event's string stays valid UTF-8.
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	r.partial = append([]byte(nil), data[cut:]...)
	r.eventLocked("o", string(data[:cut]))
	return len(p), nil
}

// resize records a window change.
func (r *recorder) resize(cols, rows uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eventLocked("r", fmt.Sprintf("%dx%d", cols, rows))
}

func (r *recorder) eventLocked(kind, data string) {
	if r.err != nil || data == "" {
		return
	}
	at := time.Since(r.start).Seconds()
	b, err := json.Marshal([]any{at, kind, data})
	if err == nil && r.limit > 0 && r.size+int64(len(b))+1 > r.limit-fullMarkerRoom {
		// An asciicast marker event ("m") tells whoever plays it back.
		b, _ = json.Marshal([]any{at, "m", fmt.Sprintf("gomux: recording stopped at its %d MiB limit", r.limit>>20)})
		r.writeLocked(b)
		if r.err == nil {
			r.err = errRecordingFull
			if r.onFull != nil {
				r.onFull()
			}
		}
		return
	}
	if err != nil {
		r.err = err
		return
	}
	r.writeLocked(b)
}

// writeLocked writes one event line and flushes it, so a recording is
// complete up to the last event even if gomux is killed.
func (r *recorder) writeLocked(b []byte) {
	r.w.Write(b)
	r.w.WriteByte('\n')
	r.size += int64(len(b)) + 1
	if err := r.w.Flush(); err != nil && r.err == nil {
		r.err = err
	}
}

// Close ends the recording and returns the first error it met, other
// than reaching its size limit (reported when it happened, by onFull).
func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.partial) > 0 {
		r.eventLocked("o", string(r.partial))
		r.partial = nil
	}
	if err := r.f.Close(); r.err == nil {
		r.err = err
	}
	if errors.Is(r.err, errRecordingFull) {
		return nil
	}
	return r.err
}
