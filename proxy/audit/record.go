package audit

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
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Header is the first line of an asciicast v2 file. Players ignore
// fields they do not know; gomux adds who and where, so a recording names
// its person without the log.
type Header struct {
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

// Recorder writes one pty session as asciicast v2: terminal output and
// resizes, each with its time since the start. Input is never recorded.
// A write error, or reaching the size limit, stops the recording, never
// the session.
type Recorder struct {
	path  string
	start time.Time
	// limit is the most bytes the file may hold (0: no limit); onFull,
	// when set, is called once when an event would pass it.
	limit  int64
	onFull func()
	// used, when set, counts the bytes written, for the quota of the
	// directory the recording is in; quota (0: none) is what all of its
	// recordings may hold together, checked at every event so recordings
	// running at once stop together there.
	used  *atomic.Int64
	quota int64

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
func newRecorder(dir string, h Header, limit int64) (*Recorder, error) {
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
	r := &Recorder{path: p, start: start, limit: limit, f: f, w: bufio.NewWriter(f), size: int64(len(b)) + 1}
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
func (r *Recorder) Write(p []byte) (int, error) {
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

// Resize records a window change.
func (r *Recorder) Resize(cols, rows uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eventLocked("r", fmt.Sprintf("%dx%d", cols, rows))
}

func (r *Recorder) eventLocked(kind, data string) {
	if r.err != nil || data == "" {
		return
	}
	at := time.Since(r.start).Seconds()
	b, err := json.Marshal([]any{at, kind, data})
	n := int64(len(b)) + 1
	overQuota := r.quota > 0 && r.used != nil && r.used.Load()+n > r.quota-fullMarkerRoom
	if err == nil && (r.limit > 0 && r.size+n > r.limit-fullMarkerRoom || overQuota) {
		// An asciicast marker event ("m") tells whoever plays it back.
		why := fmt.Sprintf("its %d MiB limit", r.limit>>20)
		if overQuota {
			why = fmt.Sprintf("the recordings' %d MiB quota", r.quota>>20)
		}
		b, _ = json.Marshal([]any{at, "m", "gomux: recording stopped at " + why})
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
func (r *Recorder) writeLocked(b []byte) {
	r.w.Write(b)
	r.w.WriteByte('\n')
	r.size += int64(len(b)) + 1
	if r.used != nil {
		r.used.Add(int64(len(b)) + 1)
	}
	if err := r.w.Flush(); err != nil && r.err == nil {
		r.err = err
	}
}

// Close ends the recording and returns the first error it met, other
// than reaching its size limit (reported when it happened, by onFull).
func (r *Recorder) Close() error {
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

// Path is the recording's file.
func (r *Recorder) Path() string { return r.path }

// Limit is the most bytes the file may hold (0: no limit).
func (r *Recorder) Limit() int64 { return r.limit }

// Size is the bytes written to the file so far.
func (r *Recorder) Size() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.size
}

// Recordings opens session recordings in audit.record_dir within
// audit.record_quota_mib: it knows what the directory holds (counted
// again at most every recountEvery, so files an operator moved away are
// seen) plus what recorders wrote since.
type Recordings struct {
	mu      sync.Mutex
	dir     string
	counted time.Time
	used    atomic.Int64
}

// recountEvery is how often the recordings directory is measured again.
const recountEvery = time.Minute

// ErrRecordQuota is a recording not started because the directory holds
// audit.record_quota_mib already.
var ErrRecordQuota = errors.New("audit.record_quota_mib reached")

// RecordOptions are the settings a recording is opened with: the audit
// section of gomux's config, and who to tell when it stops early.
type RecordOptions struct {
	// Dir is audit.record_dir, where the recording is written.
	Dir string
	// MaxMiB is audit.record_max_mib, the most one recording may hold
	// (0: no limit).
	MaxMiB int
	// QuotaMiB is audit.record_quota_mib, the most Dir may hold (0: no
	// quota).
	QuotaMiB int
	// OnFull, when set, is called once, under the recorder's lock, when
	// the recording stops at its limit or the quota.
	OnFull func()
}

// Open starts a recording described by h under o, limited to the
// smaller of MaxMiB and what the quota leaves.
func (rs *Recordings) Open(o RecordOptions, h Header) (*Recorder, error) {
	if o.Dir == "" {
		return nil, errors.New("audit.record_dir is not set")
	}
	limit := int64(o.MaxMiB) << 20
	if o.QuotaMiB > 0 {
		left := int64(o.QuotaMiB)<<20 - rs.usage(o.Dir)
		if left <= fullMarkerRoom+4096 {
			return nil, fmt.Errorf("%w (%d MiB in %s)", ErrRecordQuota, o.QuotaMiB, o.Dir)
		}
		limit = min(limit, left)
	}
	r, err := newRecorder(o.Dir, h, limit)
	if err != nil {
		return nil, err
	}
	r.used, r.quota, r.onFull = &rs.used, int64(o.QuotaMiB)<<20, o.OnFull
	rs.used.Add(r.size)
	return r, nil
}

// usage is what dir holds, measured again when it is another directory
// or the last count is older than recountEvery.
func (rs *Recordings) usage(dir string) int64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if dir == rs.dir && time.Since(rs.counted) < recountEvery {
		return rs.used.Load()
	}
	var total int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
	}
	rs.dir, rs.counted = dir, time.Now()
	rs.used.Store(total)
	return total
}
