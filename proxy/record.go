package proxy

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
// A write error stops the recording, never the session.
type recorder struct {
	path  string
	start time.Time

	mu      sync.Mutex
	f       *os.File
	w       *bufio.Writer
	partial []byte // an incomplete UTF-8 sequence held for the next write
	err     error
}

// newRecorder creates a new recording file in dir, mode 0600, and writes
// its header. The name says when, who and where, plus random bytes so two
// sessions never share a file.
func newRecorder(dir string, h castHeader) (*recorder, error) {
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
	r := &recorder{path: p, start: start, f: f, w: bufio.NewWriter(f)}
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
	b, err := json.Marshal([]any{time.Since(r.start).Seconds(), kind, data})
	if err == nil {
		r.w.Write(b)
		r.w.WriteByte('\n')
		err = r.w.Flush()
	}
	r.err = err
}

// Close ends the recording and returns the first error it met.
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
	return r.err
}
