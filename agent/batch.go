package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/gomux/gomux/target"
)

// PrepOp is one filesystem step a batch performs before its command, so a
// task's temp dir, uploads and modes cost no round trips of their own.
type PrepOp struct {
	// Op is "mkdir", "write", "chmod", "remove_all" or "run".
	Op string `json:"op"`
	// Argv is the program a "run" op executes (no shell); a non-zero exit
	// fails the batch with its stderr.
	Argv []string `json:"argv,omitempty"`
	// Path is what the op works on; relative to the home directory.
	Path string `json:"path"`
	// Mode is the mode mkdir and write set (permission bits) and chmod
	// sets (with Go's setuid, setgid and sticky bits).
	Mode fs.FileMode `json:"mode,omitempty"`
	// Parents makes mkdir create missing parents (mkdir -p).
	Parents bool `json:"parents,omitempty"`
	// SHA256 names a write's content; the agent keeps a copy under it.
	SHA256 string `json:"sha256,omitempty"`
	// Cached means the content is not sent: the agent copies it from its
	// blob cache.
	Cached bool `json:"cached,omitempty"`
	// Data is the content of a write that is not cached; it travels as
	// blob frames after the request, not inside it.
	Data []byte `json:"-"`
	// Parts, when set, make the write the concatenation of several
	// contents, each cached on its own: an AnsiballZ file is mostly a
	// module archive that is the same for every task of that module.
	Parts []PrepPart `json:"parts,omitempty"`
}

// PrepPart is one piece of a written file (or of a batch's stdin), so
// the piece shared by many files is cached once and sent by reference.
type PrepPart struct {
	// SHA256 names the piece; the agent caches it under that name.
	SHA256 string `json:"sha256"`
	// Cached means the piece is not sent: the agent has it.
	Cached bool `json:"cached,omitempty"`
	// Data is the piece, sent as blob frames when it is not cached.
	Data []byte `json:"-"`
}

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// errNoBlob is a cached write whose content the agent no longer has.
var errNoBlob = errors.New("blob not in cache")

// blobDir is the agent's content-addressed cache, beside its own binary.
func blobDir(home string) string { return target.BlobPath(home) }

// batch performs a request's prep ops in order, then runs its command
// (when there is one) exactly as exec does. Cached contents are checked
// before anything is changed, so a cache miss leaves no partial state and
// the client can resend with data.
func (s *Server) batch(ctx context.Context, st net.Conn, req *request, info Info) {
	cached, err := s.loadCached(req, info.Home)
	if err != nil {
		batchError(st, err)
		return
	}
	fo := fileOps{home: info.Home}
	for _, op := range req.Prep {
		if err := s.prep(ctx, st, fo, op, cached); err != nil {
			batchError(st, prepError(op, err))
			return
		}
	}
	if req.Exec == nil {
		writeJSON(st, frameOK, struct{}{})
		return
	}
	var stdin []byte
	if len(req.Exec.Stdin) > 0 {
		if stdin, err = readStdin(st, info.Home, req.Exec.Stdin, cached); err != nil {
			batchError(st, prepError(stdinOp(req.Exec), err))
			return
		}
	}
	s.execInput(ctx, st, req.Exec, info, stdin)
}

// stdinOp names a batch's whole stdin in errors, as a write of "stdin".
func stdinOp(e *ExecRequest) PrepOp {
	return PrepOp{Op: "write", Path: "stdin", Parts: e.Stdin}
}

// opError is a failed prep op, answered as an error naming it.
type opError struct {
	op  PrepOp
	err error
}

// Error names the op, its path and what went wrong.
func (e *opError) Error() string { return e.op.Op + " " + e.op.Path + ": " + e.err.Error() }

// Unwrap is the op's own error, for errors.Is (errNoBlob).
func (e *opError) Unwrap() error { return e.err }

// prepError ties err to the prep op it failed.
func prepError(op PrepOp, err error) error { return &opError{op: op, err: err} }

// batchError answers a failed batch: "blob" for a cache miss (the client
// resends the data), else "batch:<op>" and the op's path.
func batchError(st net.Conn, err error) {
	var oe *opError
	if !errors.As(err, &oe) {
		writeJSON(st, frameError, toRemoteError("batch", "", err))
		return
	}
	re := toRemoteError("batch:"+oe.op.Op, oe.op.Path, oe.err)
	if errors.Is(oe.err, errNoBlob) {
		re.Op = "blob"
	}
	writeJSON(st, frameError, re)
}

// loadCached reads and hashes every cached content the batch names (its
// writes' and its stdin's), before anything is changed; those very bytes
// are what the writes use. The cache is a directory the login user (and
// anything running as it) can write, so a file there is only a hint
// until its hash matches.
func (s *Server) loadCached(req *request, home string) (map[string][]byte, error) {
	cached := map[string][]byte{}
	var cachedBytes int64
	ops := req.Prep
	if req.Exec != nil && len(req.Exec.Stdin) > 0 {
		ops = append(ops[:len(ops):len(ops)], stdinOp(req.Exec))
	}
	for _, op := range ops {
		if op.Op != "write" {
			continue
		}
		for _, part := range op.parts() {
			if !sha256RE.MatchString(part.SHA256) {
				return nil, prepError(op, fmt.Errorf("bad sha256 %q", part.SHA256))
			}
			if !part.Cached || cached[part.SHA256] != nil {
				continue
			}
			data, err := s.readBlob(home, part.SHA256, maxCachedBatch-cachedBytes)
			if err != nil {
				return nil, prepError(op, err)
			}
			cached[part.SHA256] = data
			cachedBytes += int64(len(data))
		}
	}
	return cached, nil
}

// prep performs one prep op.
func (s *Server) prep(ctx context.Context, st net.Conn, fo fileOps, op PrepOp, cached map[string][]byte) error {
	p := fo.abs(op.Path)
	switch op.Op {
	case "mkdir":
		if op.Parents {
			// Like mkdir -p: existing directories keep their mode.
			return os.MkdirAll(p, op.Mode.Perm())
		}
		if err := os.Mkdir(p, op.Mode.Perm()); err != nil {
			return err
		}
		// mkdir applies the umask; the caller asked for this mode.
		return os.Chmod(p, op.Mode.Perm())
	case "write":
		return s.writeBlob(st, fo.home, p, op, cached)
	case "chmod":
		return os.Chmod(p, op.Mode)
	case "remove_all":
		return os.RemoveAll(p)
	case "run":
		return runPrep(ctx, op.Argv, fo.home)
	}
	return fmt.Errorf("unknown prep op %q", op.Op)
}

// readStdin assembles a batch's whole stdin from its parts. On a failure
// the remaining parts' blob frames are read, so nothing is left unread.
func readStdin(st net.Conn, home string, parts []PrepPart, cached map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	for i, part := range parts {
		if err := writePart(st, &buf, home, part, cached); err != nil {
			drainParts(st, parts[i+1:])
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// drainParts skips the blob frames of the parts that are sent as data.
func drainParts(st io.Reader, parts []PrepPart) {
	for _, p := range parts {
		if !p.Cached {
			drainBlob(st)
		}
	}
}

// parts is the write's content as pieces: Parts, or the whole content.
func (op PrepOp) parts() []PrepPart {
	if len(op.Parts) > 0 {
		return op.Parts
	}
	return []PrepPart{{SHA256: op.SHA256, Cached: op.Cached}}
}

// maxCachedBatch bounds the cached content one batch reads into memory
// (as much as gomux stages for one task); beyond it a content counts as
// not cached and is sent again.
const maxCachedBatch = 64 << 20

// readBlob returns the cached content named sum, read whole and checked
// against its name. Content that is missing, larger than limit or does
// not hash to its name is errNoBlob (the client resends it); a mismatch is
// logged and the file removed, so the resend caches the right bytes.
func (s *Server) readBlob(home, sum string, limit int64) ([]byte, error) {
	p := filepath.Join(blobDir(home), sum)
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, errNoBlob
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil || int64(len(data)) > limit {
		return nil, errNoBlob
	}
	if got := sha256.Sum256(data); hex.EncodeToString(got[:]) != sum {
		s.log().Warn("cached blob does not match its hash; resending", "event", "blob_mismatch", "sha256", sum,
			"got", hex.EncodeToString(got[:]), "bytes", len(data))
		os.Remove(p)
		return nil, errNoBlob
	}
	if fi, err := f.Stat(); err == nil {
		markUsed(p, fi.ModTime(), time.Now())
	}
	return data, nil
}

// writeBlob writes one file from its parts, each from blob frames (checked
// against its hash and then cached) or from cached, the verified cache.
func (s *Server) writeBlob(st io.Reader, home, path string, op PrepOp, cached map[string][]byte) error {
	mode := op.Mode.Perm()
	if mode == 0 {
		mode = 0o600
	}
	parts := op.parts()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		drainParts(st, parts)
		return err
	}
	var werr error
	for i, part := range parts {
		err := writePart(st, f, home, part, cached)
		if err != nil && werr == nil {
			werr = err
			// Keep reading the remaining parts so the stream stays in step.
			drainParts(st, parts[i+1:])
			break
		}
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		os.Remove(path)
		return werr
	}
	return os.Chmod(path, mode)
}

// writePart appends one part to f.
func writePart(st io.Reader, f io.Writer, home string, part PrepPart, cached map[string][]byte) error {
	cache := filepath.Join(blobDir(home), part.SHA256)
	if part.Cached {
		data, ok := cached[part.SHA256]
		if !ok {
			return errNoBlob
		}
		_, err := f.Write(data)
		return err
	}
	h := sha256.New()
	var data []byte
	for {
		typ, p, err := readFrame(st)
		if err != nil {
			return fmt.Errorf("read blob: %w", err)
		}
		if typ != frameBlob {
			return fmt.Errorf("unexpected frame %d in blob", typ)
		}
		if len(p) == 0 {
			break
		}
		h.Write(p)
		data = append(data, p...)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != part.SHA256 {
		return fmt.Errorf("content hash %s, want %s", got, part.SHA256)
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if _, err := os.Stat(cache); err != nil {
		// Best effort: a cache that cannot be written only costs a resend.
		if os.MkdirAll(filepath.Dir(cache), 0o700) == nil {
			tmp := filepath.Join(filepath.Dir(cache), target.BlobTempName(part.SHA256, os.Getpid()))
			if os.WriteFile(tmp, data, 0o600) == nil {
				os.Rename(tmp, cache)
			} else {
				os.Remove(tmp)
			}
		}
	}
	return nil
}

// drainBlob skips one blob's frames after a failed open.
func drainBlob(st io.Reader) {
	for {
		typ, p, err := readFrame(st)
		if err != nil || typ != frameBlob || len(p) == 0 {
			return
		}
	}
}

// runPrep runs a prep program such as setfacl, in home, with the agent's
// environment, and turns a failure into an error carrying its stderr.
func runPrep(ctx context.Context, argv []string, home string) error {
	if len(argv) == 0 {
		return errors.New("run without a program")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = home
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", argv[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}
