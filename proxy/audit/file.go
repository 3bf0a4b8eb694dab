package audit

import (
	"fmt"
	"os"
	"sync"
)

// File is audit.log_file: an append-only JSON-lines file, opened at
// start and again at every reload (so logrotate can move it away and
// reload gomux). The zero File is closed: Append reports false, and the
// caller keeps the line in the log instead.
type File struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

// Open (re)opens path, "" closing the file; on error the open file stays.
func (a *File) Open(path string) error {
	var f *os.File
	if path != "" {
		var err error
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("audit.log_file: %w", err)
		}
	}
	a.mu.Lock()
	old := a.f
	a.f, a.path = f, path
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Append appends one line; false when there is no audit file or the
// write failed.
func (a *File) Append(p []byte) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return false
	}
	// A failed write (a full disk) is no write: the caller sends the
	// line to the log at any level instead, so it is not lost.
	_, err := a.f.Write(p)
	return err == nil
}

// Close closes the file; later lines go to the log.
func (a *File) Close() { a.Open("") }
