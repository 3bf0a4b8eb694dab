package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gomux/gomux/target"
)

// isCachedAgent says whether name is an agent in the agent cache
// (target.CacheDir): cleaning touches only the names the cache holds
// (target.AgentName, target.IsAgentTemp, target.IsBlobName).
func isCachedAgent(name string) bool {
	_, ok := target.AgentSHA(name)
	return ok
}

// CacheCleanup says what CleanCache did.
type CacheCleanup struct {
	// Dir is the cache directory, "" when the agent does not run from one.
	Dir string
	// Removed are the names removed, blobs as blobs/NAME.
	Removed []string
}

// CleanCache runs at each agent start. A rolling upgrade leaves each
// version's agent in the target's cache, and blobs pile up with every
// new module version; nothing else ever removes them. So the agent at
// exe first marks itself used (its mtime set to now), then removes the
// agents, blobs and leftover temporary files of its cache directory that
// no agent start and no blob read has touched for maxAge: other gomux
// versions' agents still in use are touched by their own starts (or, for
// versions older than this cleanup, were uploaded less than maxAge ago or
// are uploaded again). It never removes the running binary, anything but
// regular files of the names the cache uses, or anything outside the
// directory: entries are looked at and removed relative to the opened
// directory, without following symbolic links. It does nothing unless exe
// is a cached agent (agent-SHA256 in a directory named gomux) and maxAge
// is positive.
func CleanCache(exe string, maxAge time.Duration, now time.Time) (CacheCleanup, error) {
	dir := filepath.Dir(exe)
	if maxAge <= 0 || !isCachedAgent(filepath.Base(exe)) || !target.IsCachePath(dir) {
		return CacheCleanup{}, nil
	}
	res := CacheCleanup{Dir: dir}
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("open agent cache: %w", err)
	}
	defer unix.Close(dfd)
	self, err := touchSelf(dfd, filepath.Base(exe), now)
	if err != nil {
		return res, err
	}
	cutoff := now.Add(-maxAge)
	isOld := func(name string) bool { return target.IsAgentTemp(name) || isCachedAgent(name) }
	removed, err := removeOld(dfd, isOld, self, cutoff)
	res.Removed = append(res.Removed, removed...)
	bfd, berr := unix.Openat(dfd, target.BlobDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if berr != nil {
		if errors.Is(berr, unix.ENOENT) {
			return res, err
		}
		return res, errors.Join(err, fmt.Errorf("open blob cache: %w", berr))
	}
	defer unix.Close(bfd)
	removed, berr = removeOld(bfd, target.IsBlobName, self, cutoff)
	for _, n := range removed {
		res.Removed = append(res.Removed, target.BlobDir+"/"+n)
	}
	return res, errors.Join(err, berr)
}

// touchSelf sets the mtime of the running agent's file, name in the
// directory dfd, to now, and returns its identity. It refuses a name
// that is not a regular file or not the binary running.
func touchSelf(dfd int, name string, now time.Time) (unix.Stat_t, error) {
	var st, run unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, fmt.Errorf("stat own binary: %w", err)
	}
	if err := unix.Stat("/proc/self/exe", &run); err != nil {
		return st, fmt.Errorf("stat running binary: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Dev != run.Dev || st.Ino != run.Ino {
		return st, errors.New("the agent cache's file is not the running agent")
	}
	ts := unix.NsecToTimespec(now.UnixNano())
	if err := unix.UtimesNanoAt(dfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, fmt.Errorf("mark own binary used: %w", err)
	}
	return run, nil
}

// removeOld removes, from the directory dfd, the regular files whose
// name match accepts and whose mtime is before cutoff, except the file
// self. It returns the names removed and the first error.
func removeOld(dfd int, match func(string) bool, self unix.Stat_t, cutoff time.Time) ([]string, error) {
	// A duplicate, so that closing the listing leaves dfd open.
	lfd, err := unix.Dup(dfd)
	if err != nil {
		return nil, fmt.Errorf("list cache: %w", err)
	}
	unix.CloseOnExec(lfd)
	f := os.NewFile(uintptr(lfd), "cache")
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list cache: %w", err)
	}
	var removed []string
	var first error
	for _, n := range names {
		if !match(n) {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(dfd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		if (st.Dev == self.Dev && st.Ino == self.Ino) || !time.Unix(st.Mtim.Unix()).Before(cutoff) {
			continue
		}
		if err := unix.Unlinkat(dfd, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			first = firstErr(first, fmt.Errorf("remove %s: %w", n, err))
			continue
		}
		removed = append(removed, n)
	}
	return removed, first
}

// firstErr returns the first non-nil error of a and b.
func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// markUsed sets the mtime of the cached blob at path to now when it is
// older than an hour, so that CleanCache keeps blobs still in use; the
// hour spares a write per read. It does not follow a symbolic link.
func markUsed(path string, mtime, now time.Time) {
	if now.Sub(mtime) < time.Hour {
		return
	}
	ts := unix.NsecToTimespec(now.UnixNano())
	unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}
