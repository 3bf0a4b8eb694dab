// Package target is what gomux knows of the machines it serves: where the
// agent keeps its files there (the cache layout), which machine types
// there is an agent build for, and the shell programs gomux runs there.
// Each of these is read on more than one side — by gomux, by the agent
// on the target, by the Makefile, by the programs themselves — so they
// live in one place, where they cannot drift apart. It imports nothing
// of gomux's agent, shim or proxy, so all three may use it (the agent
// runs on targets and must stay small).
package target

import (
	"path"
	"strconv"
	"strings"
)

// CacheDir is the agent cache, relative to the home of the user the agent
// runs as: the agent binaries, by their SHA-256, and the blob cache. The
// launcher, the upload and the become guard (the *.sh programs) spell
// the same path; TestProgramsSpellLayout holds them to it.
const CacheDir = ".cache/gomux"

// BlobDir is the agent's content-addressed blob cache inside CacheDir.
const BlobDir = "blobs"

// agentPrefix starts the name of a cached agent; ".agent-" that of an
// upload's temporary file (upload.sh, warm-become.sh).
const agentPrefix = "agent-"

// CachePath is CacheDir in home.
func CachePath(home string) string { return path.Join(home, CacheDir) }

// BlobPath is the blob cache (BlobDir) in home.
func BlobPath(home string) string { return path.Join(home, CacheDir, BlobDir) }

// IsCachePath says whether dir ends in CacheDir's last element: the agent
// cleans only the cache it runs from, so it checks it runs from one.
func IsCachePath(dir string) bool { return path.Base(dir) == path.Base(CacheDir) }

// AgentName is the name of the cached agent whose content has the SHA-256
// sha (hex): the launcher runs the file only when its hash matches.
func AgentName(sha string) string { return agentPrefix + sha }

// AgentSHA returns the SHA-256 that a cached agent's name carries, and
// false for any other name: a name is trusted as far as the hash in it.
func AgentSHA(name string) (string, bool) {
	sha, ok := strings.CutPrefix(name, agentPrefix)
	return sha, ok && isSHA256(sha)
}

// IsAgentTemp says whether name is an upload's temporary file,
// .agent-SHA.PID, which the agent's cache cleaning may remove.
func IsAgentTemp(name string) bool {
	rest, ok := strings.CutPrefix(name, "."+agentPrefix)
	if !ok || len(rest) < 66 || rest[64] != '.' {
		return false
	}
	return isSHA256(rest[:64]) && isDigits(rest[65:])
}

// BlobTempName is the temporary file a blob of SHA-256 sha is written to
// by process pid before it is renamed to sha.
func BlobTempName(sha string, pid int) string { return sha + "." + strconv.Itoa(pid) + ".tmp" }

// IsBlobName says whether name is a blob (its SHA-256) or a blob's
// temporary file (BlobTempName): the only names cache cleaning touches
// in BlobDir.
func IsBlobName(name string) bool {
	if len(name) < 64 || !isSHA256(name[:64]) {
		return false
	}
	rest := name[64:]
	if rest == "" {
		return true
	}
	pid, ok := strings.CutSuffix(rest, ".tmp")
	return ok && len(pid) > 1 && pid[0] == '.' && isDigits(pid[1:])
}

// RunDirName is the warm Python fork servers' socket directory inside
// $XDG_RUNTIME_DIR, when that is the user's.
const RunDirName = "gomux"

// FallbackRunDir is the fork servers' socket directory of user euid when
// there is no usable $XDG_RUNTIME_DIR.
func FallbackRunDir(euid int) string { return "/tmp/gomux-" + strconv.Itoa(euid) }

// ForkServerSocket is the name of the socket of the fork server for the
// interpreter key, in the socket directory; ForkServerLock the name of
// the lock that one start of it holds.
func ForkServerSocket(key string) string { return "py-" + key + ".sock" }

// ForkServerLock: see ForkServerSocket.
func ForkServerLock(key string) string { return "py-" + key + ".lock" }

func isSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Quote makes s one word for a POSIX shell, as Python's shlex.quote does:
// s itself when it holds only characters no shell treats specially, else
// s in single quotes, each ' in it written '"'"'. It is the one quoting
// every value in gomux's shell programs goes through. It is shlex.quote
// exactly, not merely equivalent, because Ansible quotes every level of
// its commands with shlex.quote: the shim recognizes a word by quoting its
// value again and comparing bytes, and splices its own words in the same
// form.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_@%+=:,./-", c) >= 0) {
			return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
		}
	}
	return s
}
