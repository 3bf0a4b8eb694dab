package proxy

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"github.com/gomux/gomux/agent"
)

// sftpFront serves the inner sftp subsystem from the agent's file RPCs, so
// an upload costs the target no extra channel, process or round trip per
// request beyond the file operation itself.
type sftpFront struct {
	ctx context.Context
	a   *agent.Client
}

func newSFTPServer(ctx context.Context, a *agent.Client, rwc io.ReadWriteCloser) *sftp.RequestServer {
	f := &sftpFront{ctx: ctx, a: a}
	return sftp.NewRequestServer(rwc, sftp.Handlers{FileGet: f, FilePut: f, FileCmd: f, FileList: f},
		sftp.WithStartDirectory(a.Info().Home))
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

func (f *sftpFront) Fileread(r *sftp.Request) (io.ReaderAt, error) {
	h, err := f.a.Open(f.ctx, r.Filepath, os.O_RDONLY, 0)
	if err != nil {
		return nil, sftpErr("open", r.Filepath, err)
	}
	return &sftpFile{f: h, path: r.Filepath}, nil
}

func (f *sftpFront) Filewrite(r *sftp.Request) (io.WriterAt, error) {
	return f.open(r)
}

// OpenFile serves read-write opens on one handle.
func (f *sftpFront) OpenFile(r *sftp.Request) (sftp.WriterAtReaderAt, error) {
	return f.open(r)
}

func (f *sftpFront) open(r *sftp.Request) (*sftpFile, error) {
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
	perm := fs.FileMode(0o644)
	if r.AttrFlags().Permissions {
		perm = r.Attributes().FileMode().Perm()
	}
	h, err := f.a.Open(f.ctx, r.Filepath, flag, perm)
	if err != nil {
		return nil, sftpErr("open", r.Filepath, err)
	}
	return &sftpFile{f: h, path: r.Filepath}, nil
}

func (f *sftpFront) Filecmd(r *sftp.Request) error {
	ctx, p := f.ctx, r.Filepath
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
		perm := fs.FileMode(0o755)
		if r.AttrFlags().Permissions {
			perm = r.Attributes().FileMode().Perm()
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

// PosixRename overwrites the target, as posix-rename@openssh.com promises.
func (f *sftpFront) PosixRename(r *sftp.Request) error {
	return sftpErr("rename", r.Filepath, f.a.Rename(f.ctx, r.Filepath, r.Target, true))
}

func (f *sftpFront) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
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
func (f *sftpFront) Lstat(r *sftp.Request) (sftp.ListerAt, error) {
	fi, err := f.a.Lstat(f.ctx, r.Filepath)
	if err != nil {
		return nil, sftpErr("lstat", r.Filepath, err)
	}
	return listerAt{fileInfo{fi}}, nil
}

// Readlink returns the link's content as written, relative or absolute.
func (f *sftpFront) Readlink(p string) (string, error) {
	t, err := f.a.Readlink(f.ctx, p)
	return t, sftpErr("readlink", p, err)
}

// RealPath resolves against the login user's home on the target, which is
// where OpenSSH's sftp-server starts, so "." and relative uploads land in
// the same place with and without gomux.
func (f *sftpFront) RealPath(p string) (string, error) {
	r, err := f.a.RealPath(f.ctx, p)
	return r, sftpErr("realpath", p, err)
}

// sftpFile adapts an agent file handle; Close is called by pkg/sftp.
type sftpFile struct {
	f    *agent.File
	path string
}

func (s *sftpFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := s.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		return n, io.EOF
	}
	return n, sftpErr("read", s.path, err)
}

func (s *sftpFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.f.WriteAt(p, off)
	return n, sftpErr("write", s.path, err)
}

func (s *sftpFile) Close() error { return sftpErr("close", s.path, s.f.Close()) }

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
