package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/sftp"
	"github.com/rs/zerolog"

	"github.com/gomux/gomux/agent"
	"github.com/gomux/gomux/shim"
)

// sftpFront serves the inner sftp subsystem from the agent's file RPCs, so
// an upload costs the target no extra channel, process or round trip per
// request beyond the file operation itself.
type sftpFront struct {
	ctx context.Context
	a   *agent.Client
	// host is the Ansible state of this target and user; nil when the
	// shim is off. Uploads into its temp dirs are staged there.
	host *shim.Host
	// opens has the permissions each OPEN asked for, which pkg/sftp's
	// request server does not pass on.
	opens *openModes
	lim   sftpLimits
	// log receives one event per operation: its name and paths, never
	// file contents.
	log zerolog.Logger
	// handles counts the open files, against lim.handles.
	handles atomic.Int64
}

// sftpLimits bound one sftp session.
type sftpLimits struct {
	// handles is the most files open at once; 0 means no limit.
	handles int
	// budget is gomux's staging memory, which the buffers of uploads
	// being staged count against; nil means only shim.MaxStagedFile.
	budget *shim.Budget
	// hold and free count the same buffers in the person's memory
	// share; nil means no share.
	hold func(n int64) bool
	free func(n int64)
}

func newSFTPServer(ctx context.Context, a *agent.Client, host *shim.Host, rwc io.ReadWriteCloser, lim sftpLimits, log zerolog.Logger) *sftp.RequestServer {
	home := a.Info().Home
	opens := newOpenModes(home)
	f := &sftpFront{ctx: ctx, a: a, host: host, opens: opens, lim: lim, log: log}
	return sftp.NewRequestServer(&openSniffer{ReadWriteCloser: rwc, modes: opens}, sftp.Handlers{FileGet: f, FilePut: f, FileCmd: f, FileList: f},
		sftp.WithStartDirectory(home))
}

// contain turns a panic in a handler into an error for that one request,
// logged with its stack: handlers run in pkg/sftp's goroutines, which
// gomux cannot guard otherwise.
func (f *sftpFront) contain(op string, err *error) {
	if r := recover(); r != nil {
		f.log.Error().Str("event", EventPanic).Str("in", "sftp "+op).Interface("panic", r).Str("stack", string(debug.Stack())).
			Msg("bug: panic in an sftp request contained; the request fails")
		*err = fmt.Errorf("gomux: internal error serving %s", op)
	}
}

// takeHandle counts a file opened for the client; the returned func gives
// it back on close.
func (f *sftpFront) takeHandle(p string) (func(), error) {
	if n := f.handles.Add(1); f.lim.handles > 0 && n > int64(f.lim.handles) {
		f.handles.Add(-1)
		f.opens.take(p) // the refused open's mode is not for a later one
		f.log.Warn().Str("event", EventLimit).Str("path", p).Int("max_sftp_handles", f.lim.handles).Msg("sftp open refused: too many open files")
		return nil, fmt.Errorf("gomux: too many open files in this sftp session (max_sftp_handles %d)", f.lim.handles)
	}
	if f.lim.hold != nil && !f.lim.hold(sftpHandleCost) {
		f.handles.Add(-1)
		f.opens.take(p)
		f.log.Warn().Str("event", EventLimit).Str("path", p).Msg("sftp open refused: the person holds their memory share")
		return nil, errors.New("gomux: you hold your memory share (limits.person_memory_mib): close some sessions or files")
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			f.handles.Add(-1)
			if f.lim.free != nil {
				f.lim.free(sftpHandleCost)
			}
		})
	}, nil
}

// sftpHandleCost is what one open sftp file counts against its person's
// memory share beyond the upload buffer counted as it grows: pkg/sftp's
// request state and the agent stream behind it.
const sftpHandleCost = 64 << 10

// checkRange validates a client's offset before anything uses it: pkg/sftp
// turns the wire's uint64 into an int64, so 2^63 and above arrive negative.
func checkRange(op, p string, off int64, n int) error {
	if off < 0 || off > math.MaxInt64-int64(n) {
		return fmt.Errorf("gomux: %s %s: offset %d out of range: %w", op, p, uint64(off), sftp.ErrSSHFxBadMessage)
	}
	return nil
}

// createMode is the mode a file created by r gets before the umask: the
// permissions the client sent with OPEN, else 0666, as OpenSSH's
// sftp-server does. (pkg/sftp's AttrFlags reads OPEN's pflags as if they
// were attribute flags, so it cannot be asked.)
func (f *sftpFront) createMode(r *sftp.Request) fs.FileMode {
	if m, ok := f.opens.take(r.Filepath); ok {
		return m
	}
	return 0o666
}

// sftpErr turns an agent error into one pkg/sftp maps to the right SFTP
// status code (it only unwraps *os.PathError and syscall.Errno).
func sftpErr(op, p string, err error) error {
	if err == nil {
		return nil
	}
	var re *agent.RemoteError
	if errors.As(err, &re) && re.Errno != 0 {
		return &os.PathError{Op: op, Path: p, Err: re.Errno}
	}
	return err
}

// flushFor writes what the shim owes the target (flush) before an
// operation on p could observe it, so sftp sees the target as it would
// without gomux.
func (f *sftpFront) flushFor(paths ...string) error {
	if f.host == nil {
		return nil
	}
	for _, p := range paths {
		if p != "" && f.host.InTempDir(p) {
			if err := flush(f.ctx, f.a, f.host); err != nil {
				return sftpErr("flush", p, err)
			}
			return nil
		}
	}
	return nil
}

// audit logs one sftp operation: reads of metadata at debug, everything
// that opens, changes or removes a file at info.
func (f *sftpFront) audit(r *sftp.Request, op string, err error) {
	ev := f.log.Info()
	switch op {
	case "List", "Stat", "Lstat", "Readlink":
		ev = f.log.Debug()
	}
	ev = ev.Str("event", EventSFTP).Str("op", op).Str("path", r.Filepath)
	if r.Target != "" {
		ev = ev.Str("target_path", r.Target)
	}
	if err != nil {
		ev = ev.Err(err)
	}
	ev.Msg("sftp operation")
}

// Fileread opens a file for reading.
func (f *sftpFront) Fileread(r *sftp.Request) (_ io.ReaderAt, err error) {
	defer f.contain("read open", &err)
	ra, err := f.fileread(r)
	f.audit(r, "open-read", err)
	return ra, err
}

// Filewrite opens a file for writing.
func (f *sftpFront) Filewrite(r *sftp.Request) (_ io.WriterAt, err error) {
	defer f.contain("write open", &err)
	wa, err := f.filewrite(r)
	f.audit(r, "open-write", err)
	return wa, err
}

// OpenFile serves read-write opens on one handle.
func (f *sftpFront) OpenFile(r *sftp.Request) (_ sftp.WriterAtReaderAt, err error) {
	defer f.contain("open", &err)
	h, err := f.openFile(r)
	f.audit(r, "open-readwrite", err)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// Filecmd changes the file system: setstat, rename, mkdir, remove...
func (f *sftpFront) Filecmd(r *sftp.Request) (err error) {
	defer f.contain(r.Method, &err)
	err = f.filecmd(r)
	f.audit(r, r.Method, err)
	return err
}

// PosixRename overwrites the target, as posix-rename@openssh.com promises.
func (f *sftpFront) PosixRename(r *sftp.Request) (err error) {
	defer f.contain("posix-rename", &err)
	err = f.posixRename(r)
	f.audit(r, "PosixRename", err)
	return err
}

// Filelist lists a directory, stats a file or reads a link.
func (f *sftpFront) Filelist(r *sftp.Request) (_ sftp.ListerAt, err error) {
	defer f.contain(r.Method, &err)
	l, err := f.filelist(r)
	f.audit(r, r.Method, err)
	return l, err
}

func (f *sftpFront) fileread(r *sftp.Request) (io.ReaderAt, error) {
	f.opens.take(r.Filepath) // a read creates nothing
	release, err := f.takeHandle(r.Filepath)
	if err != nil {
		return nil, err
	}
	if err := f.flushFor(r.Filepath); err != nil {
		release()
		return nil, err
	}
	f.rt()
	h, err := f.a.Open(f.ctx, r.Filepath, os.O_RDONLY, 0)
	if err != nil {
		release()
		return nil, sftpErr("open", r.Filepath, err)
	}
	return &sftpFile{f: h, path: r.Filepath, log: &f.log, release: release}, nil
}

func (f *sftpFront) filewrite(r *sftp.Request) (io.WriterAt, error) {
	pf := r.Pflags()
	if f.host == nil || pf.Read || pf.Append || !f.host.InTempDir(r.Filepath) {
		h, err := f.openFile(r)
		if err != nil {
			return nil, err // not a nil *sftpFile in a non-nil interface
		}
		return h, nil
	}
	// An upload into a temp dir: keep it in gomux until the command that
	// uses it, and send both in one batch.
	release, err := f.takeHandle(r.Filepath)
	if err != nil {
		return nil, err
	}
	perm := f.createMode(r)
	return &stagingFile{f: f, path: r.Filepath, mode: perm &^ 0o022, perm: perm, req: r, release: release}, nil
}

// openFile opens a file for reading and writing on one handle.
func (f *sftpFront) openFile(r *sftp.Request) (*sftpFile, error) {
	release, err := f.takeHandle(r.Filepath)
	if err != nil {
		return nil, err
	}
	h, err := f.open(r)
	if err != nil {
		release()
		return nil, err
	}
	h.release = release
	return h, nil
}

func (f *sftpFront) open(r *sftp.Request) (*sftpFile, error) {
	return f.openMode(r, f.createMode(r))
}

// openMode opens r's file on the target, creating it with perm (before
// the umask) when the flags say so.
func (f *sftpFront) openMode(r *sftp.Request, perm fs.FileMode) (*sftpFile, error) {
	if err := f.flushFor(r.Filepath); err != nil {
		return nil, err
	}
	pf := r.Pflags()
	flag := 0
	switch {
	case pf.Read && (pf.Write || pf.Append):
		flag = os.O_RDWR
	case pf.Write || pf.Append:
		flag = os.O_WRONLY
	default:
		flag = os.O_RDONLY
	}
	if pf.Creat {
		flag |= os.O_CREATE
	}
	if pf.Trunc {
		flag |= os.O_TRUNC
	}
	if pf.Excl {
		flag |= os.O_EXCL
	}
	// Append is served by WriteAt offsets the client computes, as OpenSSH's
	// sftp-server does; O_APPEND would make pwrite ignore them.
	f.rt()
	h, err := f.a.Open(f.ctx, r.Filepath, flag, perm)
	if err != nil {
		return nil, sftpErr("open", r.Filepath, err)
	}
	return &sftpFile{f: h, path: r.Filepath, log: &f.log}, nil
}

func (f *sftpFront) filecmd(r *sftp.Request) error {
	ctx, p := f.ctx, r.Filepath
	if err := f.flushFor(p, r.Target); err != nil {
		return err
	}
	f.rt()
	switch r.Method {
	case "Setstat":
		var attr agent.SetAttr
		flags, st := r.AttrFlags(), r.Attributes()
		if flags.Permissions {
			m := toGoMode(st.Mode)
			attr.Mode = &m
		}
		if flags.UidGid {
			u, g := st.UID, st.GID
			attr.UID, attr.GID = &u, &g
		}
		if flags.Acmodtime {
			at, mt := st.AccessTime(), st.ModTime()
			attr.Atime, attr.Mtime = &at, &mt
		}
		if flags.Size {
			sz := int64(st.Size)
			attr.Size = &sz
		}
		return sftpErr("setstat", p, f.a.Setstat(ctx, p, attr))
	case "Rename":
		return sftpErr("rename", p, f.a.Rename(ctx, p, r.Target, false))
	case "PosixRename":
		return sftpErr("rename", p, f.a.Rename(ctx, p, r.Target, true))
	case "Rmdir":
		return sftpErr("rmdir", p, f.a.Rmdir(ctx, p))
	case "Mkdir":
		// As sftp-server: the permissions sent, else 0777, then the umask.
		perm := fs.FileMode(0o777)
		if m, ok := f.opens.take(p); ok {
			perm = m
		}
		return sftpErr("mkdir", p, f.a.Mkdir(ctx, p, perm))
	case "Link":
		return sftpErr("link", p, f.a.Link(ctx, p, r.Target))
	case "Symlink":
		// pkg/sftp has already undone OpenSSH's reversed SYMLINK arguments:
		// Filepath is the link's content, as sent, and Target the new link.
		return sftpErr("symlink", r.Target, f.a.Symlink(ctx, p, r.Target))
	case "Remove":
		return sftpErr("remove", p, f.a.Remove(ctx, p))
	}
	return sftp.ErrSSHFxOpUnsupported
}

func (f *sftpFront) posixRename(r *sftp.Request) error {
	if err := f.flushFor(r.Filepath, r.Target); err != nil {
		return err
	}
	f.rt()
	return sftpErr("rename", r.Filepath, f.a.Rename(f.ctx, r.Filepath, r.Target, true))
}

func (f *sftpFront) filelist(r *sftp.Request) (sftp.ListerAt, error) {
	if r.Method == "Stat" {
		if fi, ok := f.virtual(r.Filepath); ok {
			return statResult(fi, r.Filepath)
		}
	}
	if err := f.flushFor(r.Filepath); err != nil {
		return nil, err
	}
	f.rt()
	switch r.Method {
	case "List":
		ents, err := f.a.ReadDir(f.ctx, r.Filepath)
		if err != nil {
			return nil, sftpErr("readdir", r.Filepath, err)
		}
		out := make(listerAt, len(ents))
		for i, e := range ents {
			out[i] = fileInfo{e}
		}
		return out, nil
	case "Stat":
		fi, err := f.a.Stat(f.ctx, r.Filepath)
		if err != nil {
			return nil, sftpErr("stat", r.Filepath, err)
		}
		return listerAt{fileInfo{fi}}, nil
	case "Readlink":
		t, err := f.a.Readlink(f.ctx, r.Filepath)
		if err != nil {
			return nil, sftpErr("readlink", r.Filepath, err)
		}
		return listerAt{linkInfo(t)}, nil
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

// Lstat does not follow a final symlink, unlike Stat.
func (f *sftpFront) Lstat(r *sftp.Request) (_ sftp.ListerAt, err error) {
	defer f.contain("lstat", &err)
	if fi, ok := f.virtual(r.Filepath); ok {
		return statResult(fi, r.Filepath)
	}
	f.rt()
	fi, err := f.a.Lstat(f.ctx, r.Filepath)
	if err != nil {
		return nil, sftpErr("lstat", r.Filepath, err)
	}
	return listerAt{fileInfo{fi}}, nil
}

// Readlink returns the link's content as written, relative or absolute.
func (f *sftpFront) Readlink(p string) (_ string, err error) {
	defer f.contain("readlink", &err)
	f.rt()
	t, err := f.a.Readlink(f.ctx, p)
	return t, sftpErr("readlink", p, err)
}

// RealPath resolves against the login user's home on the target, which is
// where OpenSSH's sftp-server starts, so "." and relative uploads land in
// the same place with and without gomux.
func (f *sftpFront) RealPath(p string) (_ string, err error) {
	defer f.contain("realpath", &err)
	resolve := func(p string) (string, error) { return f.a.RealPath(f.ctx, p) }
	var r string
	if f.host != nil {
		r, err = f.host.RealPath(p, resolve)
	} else {
		r, err = resolve(p)
	}
	return r, sftpErr("realpath", p, err)
}

// rt counts an agent request made for sftp, for the shim's counters.
func (f *sftpFront) rt() {
	if f.host != nil {
		f.host.CountRoundTrip()
	}
}

// statResult is a local stat answer: the file, or ENOENT for nil.
func statResult(fi os.FileInfo, p string) (sftp.ListerAt, error) {
	if fi == nil {
		return nil, &os.PathError{Op: "stat", Path: p, Err: syscall.ENOENT}
	}
	return listerAt{fi}, nil
}

// virtual answers a stat of a temp dir or staged upload that exists only
// in gomux, as the target would once it is there; ok with a nil info is a
// path that cannot exist yet. ok false means ask the target.
func (f *sftpFront) virtual(p string) (os.FileInfo, bool) {
	if f.host == nil {
		return nil, false
	}
	size, mode, pr := f.host.Lookup(p)
	switch pr {
	case shim.Unknown:
		return nil, false
	case shim.Absent:
		return nil, true
	}
	info := f.a.Info()
	return virtualInfo{name: path.Base(p), size: size, mode: mode, uid: uint32(info.UID), gid: uint32(info.GID), mtime: time.Now()}, true
}

type virtualInfo struct {
	name     string
	size     int64
	mode     fs.FileMode
	uid, gid uint32
	mtime    time.Time
}

func (v virtualInfo) Name() string       { return v.name }
func (v virtualInfo) Size() int64        { return v.size }
func (v virtualInfo) Mode() fs.FileMode  { return v.mode }
func (v virtualInfo) ModTime() time.Time { return v.mtime }
func (v virtualInfo) IsDir() bool        { return v.mode.IsDir() }
func (v virtualInfo) Sys() any           { return nil }
func (v virtualInfo) Uid() uint32        { return v.uid }
func (v virtualInfo) Gid() uint32        { return v.gid }

// stagingFile collects an upload into a temp dir. It is handed to the shim
// on Close; one too large to stage goes to the target instead.
type stagingFile struct {
	f    *sftpFront
	path string
	mode fs.FileMode
	// perm is what the client asked for, for an upload that spills.
	perm fs.FileMode
	req  *sftp.Request

	release func() // the sftp handle

	mu   sync.Mutex
	buf  []byte
	held int64 // bytes of buf reserved from the staging budget
	real *sftpFile
}

func (s *stagingFile) WriteAt(p []byte, off int64) (_ int, err error) {
	defer s.f.contain("write", &err)
	if err := checkRange("write", s.path, off, len(p)); err != nil {
		s.f.log.Warn().Str("event", EventSFTPBadRequest).Str("path", s.path).Err(err).Msg("sftp write refused")
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.real != nil {
		return s.real.WriteAt(p, off)
	}
	end := off + int64(len(p))
	if end > shim.MaxStagedFile || (end > s.held && !s.reserveLocked(end)) {
		// Too large to stage, or gomux's staging memory is spent: the
		// upload goes to the target from here on.
		if err := s.spillLocked(); err != nil {
			return 0, err
		}
		return s.real.WriteAt(p, off)
	}
	if end > int64(len(s.buf)) {
		s.buf = append(s.buf, make([]byte, end-int64(len(s.buf)))...)
	}
	copy(s.buf[off:], p)
	return len(p), nil
}

// reserveLocked grows the budget held for buf to end bytes, rounded up
// so that a stream of small writes does not take the budget's lock each.
func (s *stagingFile) reserveLocked(end int64) bool {
	want := min(max(end, 2*s.held, 64<<10), shim.MaxStagedFile)
	if s.f.lim.hold != nil && !s.f.lim.hold(want-s.held) {
		return false
	}
	if !s.f.lim.budget.Reserve(want - s.held) {
		if s.f.lim.free != nil {
			s.f.lim.free(want - s.held)
		}
		return false
	}
	s.held = want
	return true
}

// unreserveLocked gives back what buf held of the budget and the share.
func (s *stagingFile) unreserveLocked() {
	s.f.lim.budget.Release(s.held)
	if s.f.lim.free != nil {
		s.f.lim.free(s.held)
	}
	s.held = 0
}

// spillLocked sends the temp dirs to the target and continues the upload
// there, for files beyond what gomux stages.
func (s *stagingFile) spillLocked() error {
	real, err := s.f.openMode(s.req, s.perm)
	if err != nil {
		return err
	}
	if len(s.buf) > 0 {
		if _, err := real.WriteAt(s.buf, 0); err != nil {
			real.Close()
			return err
		}
	}
	s.real, s.buf = real, nil
	s.unreserveLocked()
	return nil
}

// stageLocked hands buf to the shim, counted in the person's share for
// as long as the shim holds it; false when the share, the budget or the
// shim refuses it (the caller writes it to the target).
func (s *stagingFile) stageLocked() bool {
	n := int64(len(s.buf))
	if s.f.lim.hold == nil {
		return s.f.host.Stage(s.path, s.buf, s.mode)
	}
	if !s.f.lim.hold(n) {
		return false
	}
	free := s.f.lim.free
	if s.f.host.StageHeld(s.path, s.buf, s.mode, func() { free(n) }) {
		return true
	}
	free(n)
	return false
}

func (s *stagingFile) Close() (err error) {
	defer s.f.contain("close", &err)
	defer s.release()
	s.mu.Lock()
	defer s.mu.Unlock()
	// The buffer's reservation passes to the staged file (Stage takes
	// its own, and the person's share counts it until the shim lets go
	// of it), or ends with the spill.
	s.unreserveLocked()
	if s.real == nil && s.stageLocked() {
		s.buf = nil
		return nil
	}
	if s.real == nil {
		if err := s.spillLocked(); err != nil {
			return err
		}
	}
	return s.real.Close()
}

// sftpFile adapts an agent file handle; Close is called by pkg/sftp.
type sftpFile struct {
	f       *agent.File
	path    string
	log     *zerolog.Logger
	release func() // the sftp handle, when this is one
}

func (s *sftpFile) ReadAt(p []byte, off int64) (int, error) {
	if err := checkRange("read", s.path, off, len(p)); err != nil {
		s.log.Warn().Str("event", EventSFTPBadRequest).Str("path", s.path).Err(err).Msg("sftp read refused")
		return 0, err
	}
	n, err := s.f.ReadAt(p, off)
	if n > len(p) || n < 0 {
		// The agent client vouches for this; a slip here would make
		// pkg/sftp slice past its buffer.
		return 0, fmt.Errorf("gomux: read %s: %d bytes reported for a buffer of %d", s.path, n, len(p))
	}
	if errors.Is(err, io.EOF) {
		return n, io.EOF
	}
	return n, sftpErr("read", s.path, err)
}

func (s *sftpFile) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange("write", s.path, off, len(p)); err != nil {
		s.log.Warn().Str("event", EventSFTPBadRequest).Str("path", s.path).Err(err).Msg("sftp write refused")
		return 0, err
	}
	n, err := s.f.WriteAt(p, off)
	return n, sftpErr("write", s.path, err)
}

func (s *sftpFile) Close() error {
	if s.release != nil {
		defer s.release()
	}
	return sftpErr("close", s.path, s.f.Close())
}

type listerAt []os.FileInfo

func (l listerAt) ListAt(dst []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}

// fileInfo reports the target's owner, which pkg/sftp only learns from
// FileInfoUidGid.
type fileInfo struct{ *agent.FileInfo }

func (f fileInfo) Uid() uint32 { return f.UID() }
func (f fileInfo) Gid() uint32 { return f.GID() }

// linkInfo carries a readlink result through the FileInfo-shaped API for
// clients that do not use the Readlink extension path.
type linkInfo string

func (l linkInfo) Name() string       { return string(l) }
func (l linkInfo) Size() int64        { return 0 }
func (l linkInfo) Mode() fs.FileMode  { return fs.ModeSymlink | 0o777 }
func (l linkInfo) ModTime() time.Time { return time.Time{} }
func (l linkInfo) IsDir() bool        { return false }
func (l linkInfo) Sys() any           { return nil }

// toGoMode converts POSIX mode bits, keeping setuid, setgid and sticky.
func toGoMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	if m&syscall.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}
