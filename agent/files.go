package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FileInfo is a file's metadata on the target, with the owner, access
// time and link target that fs.FileInfo alone does not carry.
type FileInfo struct {
	w wireInfo
}

type wireInfo struct {
	Name  string      `json:"name"`
	Size  int64       `json:"size"`
	Mode  fs.FileMode `json:"mode"`
	Mtime time.Time   `json:"mtime"`
	Atime time.Time   `json:"atime"`
	UID   uint32      `json:"uid"`
	GID   uint32      `json:"gid"`
	Link  string      `json:"link,omitempty"`
}

// Name is the base name.
func (f *FileInfo) Name() string { return f.w.Name }

// Size is the length in bytes.
func (f *FileInfo) Size() int64 { return f.w.Size }

// Mode is the Go file mode, with type bits.
func (f *FileInfo) Mode() fs.FileMode { return f.w.Mode }

// ModTime is the modification time.
func (f *FileInfo) ModTime() time.Time { return f.w.Mtime }

// AccessTime is the last access time.
func (f *FileInfo) AccessTime() time.Time { return f.w.Atime }

// IsDir reports whether the file is a directory.
func (f *FileInfo) IsDir() bool { return f.w.Mode.IsDir() }

// Sys returns the FileInfo itself, for callers that want the owner.
func (f *FileInfo) Sys() any { return f }

// UID is the owner's user id.
func (f *FileInfo) UID() uint32 { return f.w.UID }

// GID is the owner's group id.
func (f *FileInfo) GID() uint32 { return f.w.GID }

// Link is a symlink's target, empty for other files.
func (f *FileInfo) Link() string { return f.w.Link }

// SetAttr changes what its non-nil fields name, as SFTP SETSTAT does:
// a nil field is left as it is.
type SetAttr struct {
	Mode         *fs.FileMode // mode (chmod)
	UID, GID     *uint32      // owner (chown)
	Atime, Mtime *time.Time   // times (utimes); a nil one is kept
	Size         *int64       // length (truncate)
}

type wireAttr struct {
	Mode  *fs.FileMode `json:"mode,omitempty"`
	UID   *uint32      `json:"uid,omitempty"`
	GID   *uint32      `json:"gid,omitempty"`
	Atime *time.Time   `json:"atime,omitempty"`
	Mtime *time.Time   `json:"mtime,omitempty"`
	Size  *int64       `json:"size,omitempty"`
}

func infoFrom(name string, fi fs.FileInfo) wireInfo {
	out := wireInfo{Name: name, Size: fi.Size(), Mode: fi.Mode(), Mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		out.UID, out.GID = st.Uid, st.Gid
		out.Atime = time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return out
}

// fileOps runs file RPCs with paths relative to home.
type fileOps struct{ home string }

func (f fileOps) abs(p string) string {
	if p == "" {
		return f.home
	}
	if !filepath.IsAbs(p) {
		return filepath.Join(f.home, p)
	}
	return p
}

func (f fileOps) stat(p string, follow bool) (*wireInfo, error) {
	p = f.abs(p)
	var fi fs.FileInfo
	var err error
	if follow {
		fi, err = os.Stat(p)
	} else {
		fi, err = os.Lstat(p)
	}
	if err != nil {
		return nil, err
	}
	info := infoFrom(filepath.Base(p), fi)
	if fi.Mode()&fs.ModeSymlink != 0 {
		info.Link, _ = os.Readlink(p)
	}
	return &info, nil
}

func (f fileOps) readDir(p string) ([]wireInfo, error) {
	p = f.abs(p)
	ents, err := os.ReadDir(p)
	if err != nil {
		return nil, err
	}
	out := make([]wireInfo, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue // removed while listing
		}
		info := infoFrom(e.Name(), fi)
		if fi.Mode()&fs.ModeSymlink != 0 {
			info.Link, _ = os.Readlink(filepath.Join(p, e.Name()))
		}
		out = append(out, info)
	}
	return out, nil
}

func (f fileOps) rename(oldp, newp string, overwrite bool) error {
	oldp, newp = f.abs(oldp), f.abs(newp)
	if overwrite {
		return os.Rename(oldp, newp)
	}
	err := unix.Renameat2(unix.AT_FDCWD, oldp, unix.AT_FDCWD, newp, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) {
		// Filesystems without RENAME_NOREPLACE: check, then rename.
		if _, err := os.Lstat(newp); err == nil {
			return &os.LinkError{Op: "rename", Old: oldp, New: newp, Err: unix.EEXIST}
		}
		return os.Rename(oldp, newp)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldp, New: newp, Err: err}
	}
	return nil
}

func (f fileOps) realPath(p string) (string, error) {
	p = filepath.Clean(f.abs(p))
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r, nil
	}
	return p, nil
}

func (f fileOps) setstat(p string, a *wireAttr) error {
	p = f.abs(p)
	if a == nil {
		return nil
	}
	if a.Size != nil {
		if err := os.Truncate(p, *a.Size); err != nil {
			return err
		}
	}
	if a.UID != nil || a.GID != nil {
		uid, gid := -1, -1
		if a.UID != nil {
			uid = int(*a.UID)
		}
		if a.GID != nil {
			gid = int(*a.GID)
		}
		if err := os.Chown(p, uid, gid); err != nil { // SFTP setstat follows symlinks
			return err
		}
	}
	if a.Mode != nil {
		if err := os.Chmod(p, *a.Mode); err != nil {
			return err
		}
	}
	if a.Atime != nil || a.Mtime != nil {
		var at, mt time.Time
		if a.Atime != nil {
			at = *a.Atime
		}
		if a.Mtime != nil {
			mt = *a.Mtime
		}
		if err := os.Chtimes(p, at, mt); err != nil {
			return err
		}
	}
	return nil
}

// do performs one file operation that has one reply, and returns the
// reply's value and the path an error names.
func (f fileOps) do(req *request) (v any, path string, err error) {
	ok := struct{}{}
	switch req.Op {
	case "stat", "lstat":
		fi, err := f.stat(req.Path, req.Op == "stat")
		return fi, req.Path, err
	case "readdir":
		ents, err := f.readDir(req.Path)
		return ents, req.Path, err
	case "mkdir":
		return ok, req.Path, os.Mkdir(f.abs(req.Path), os.FileMode(req.Mode))
	case "remove":
		return ok, req.Path, removeFile(f.abs(req.Path))
	case "rmdir":
		return ok, req.Path, removeDir(f.abs(req.Path))
	case "rename":
		return ok, req.Path, f.rename(req.Path, req.NewPath, req.Overwrite)
	case "posix-rename":
		return ok, req.Path, f.rename(req.Path, req.NewPath, true)
	case "symlink":
		return ok, req.Link, os.Symlink(req.Path, f.abs(req.Link))
	case "link":
		return ok, req.NewPath, os.Link(f.abs(req.Path), f.abs(req.NewPath))
	case "readlink":
		t, err := os.Readlink(f.abs(req.Path))
		return t, req.Path, err
	case "realpath":
		rp, err := f.realPath(req.Path)
		return rp, req.Path, err
	case "setstat":
		return ok, req.Path, f.setstat(req.Path, req.Attr)
	}
	return nil, "", fmt.Errorf("unknown op %q", req.Op)
}
