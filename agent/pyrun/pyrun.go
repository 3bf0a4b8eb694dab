// Package pyrun is `gomux-agent pyrun` and its Python side: it runs one
// Ansible module the way the interpreter command gomux replaced would,
// but forked from a warm per-user fork server (forkserver.py, embedded),
// and runs the interpreter itself whenever that cannot be exact. It runs
// on targets, apart from the agent's RPC server: the agent only names
// its own binary and PID for the `pyrun` command line the shim writes
// (agent/pyrun/DESIGN.md).
package pyrun

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
	"unsafe"

	_ "embed"

	"golang.org/x/sys/unix"

	"github.com/gomux/gomux/target"
)

// forkServerScript is the Python side of the warm interpreter; pyrun
// writes it into the per-user socket directory and starts it there.
//
//go:embed forkserver.py
var forkServerScript []byte

// Protocol is the version of the request pyrun sends the fork server
// (the "v" field), declared once: forkserver.py's VERSION must equal it
// (TestForkServerVersionAgrees), and it answers any other with "cold".
const Protocol = 1

// pyRunReadyTimeout bounds how long a client waits for a fork server to
// start or to accept a request before it runs the interpreter itself. It
// is a safety net for a wedged server, not a performance threshold.
const pyRunReadyTimeout = 30 * time.Second

// pyRunOptions are the flags of `gomux-agent pyrun`.
type pyRunOptions struct {
	// Agent is "PID:STARTTIME" of the agent the fork server lives with.
	Agent string
	// Idle is how long the fork server waits for a run before it exits.
	Idle time.Duration
	// Argv is the interpreter command line as the shell would have run it.
	Argv []string
	// Terminal (-ctty 0) says stdin is a terminal the run takes as its
	// controlling terminal, in a session of its own: the agent started the
	// shell on it without making it the shell's (agent.Pty.NotControlling).
	Terminal bool
}

// parsePyRunArgs reads `[-agent PID:START] [-idle DUR] [-ctty 0] -- INTERP [SCRIPT
// [ARGS...]]`. On error Argv is set when the interpreter command could
// still be found, so the caller can run it cold.
func parsePyRunArgs(args []string) (pyRunOptions, error) {
	o := pyRunOptions{Idle: 5 * time.Minute}
	for i, a := range args {
		if a == "--" {
			o.Argv = args[i+1:]
			break
		}
	}
	if len(o.Argv) == 0 {
		return o, errors.New("pyrun: no interpreter after --")
	}
	for i := 0; i < len(args) && args[i] != "--"; i++ {
		if i+1 >= len(args) || args[i+1] == "--" {
			return o, fmt.Errorf("pyrun: flag %q needs a value", args[i])
		}
		v := args[i+1]
		switch args[i] {
		case "-agent":
			pid, start, ok := strings.Cut(v, ":")
			if _, err := strconv.Atoi(pid); err != nil || !ok || start == "" {
				return o, fmt.Errorf("pyrun: bad -agent %q", v)
			}
			o.Agent = v
		case "-idle":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return o, fmt.Errorf("pyrun: bad -idle %q", v)
			}
			o.Idle = d
		case "-ctty":
			if v != "0" {
				return o, fmt.Errorf("pyrun: bad -ctty %q: only 0, stdin", v)
			}
			o.Terminal = true
		default:
			return o, fmt.Errorf("pyrun: unknown flag %q", args[i])
		}
		i++
	}
	if !filepath.IsAbs(o.Argv[0]) {
		return o, errors.New("pyrun: interpreter path is not absolute")
	}
	return o, nil
}

// pyRequest is the first message a client sends the fork server, with
// its stdin, stdout, stderr, working directory and script as descriptors.
type pyRequest struct {
	V       int        `json:"v"`
	Argv    []string   `json:"argv"`
	Script  bool       `json:"script"`
	Env     []string   `json:"env"`
	Umask   int        `json:"umask"`
	Nice    int        `json:"nice"`
	UID     int        `json:"uid"`
	EUID    int        `json:"euid"`
	GID     int        `json:"gid"`
	EGID    int        `json:"egid"`
	Groups  []int      `json:"groups"`
	Rlimits [][3]int64 `json:"rlimits"`
	SigIgn  []int      `json:"sigign"`
	// Ctty is the TIOCSCTTY ioctl number when the run takes stdin as its
	// controlling terminal (-ctty 0), else 0.
	Ctty uint `json:"ctty,omitempty"`
}

// pyReply is every message the fork server side sends a client.
type pyReply struct {
	Ready  int       `json:"ready"`
	Cold   string    `json:"cold"`
	Exit   *int      `json:"exit"`
	Status *pyStatus `json:"status"`
}

type pyStatus struct {
	Code   int  `json:"code"`
	Signal int  `json:"signal"`
	Core   bool `json:"core"`
}

// decodePyReply parses one message from the fork server. It is a fuzz
// target: garbage is an error, never a panic.
func decodePyReply(p []byte) (pyReply, error) {
	var r pyReply
	if len(p) == 0 {
		return r, io.EOF
	}
	if err := json.Unmarshal(p, &r); err != nil {
		return r, fmt.Errorf("pyrun: bad message from fork server: %w", err)
	}
	if r.Status != nil && (r.Status.Signal < 0 || r.Status.Signal > 64 || r.Status.Code < 0 || r.Status.Code > 255) {
		return r, errors.New("pyrun: status out of range")
	}
	if r.Exit != nil && (*r.Exit < 0 || *r.Exit > 255) {
		return r, errors.New("pyrun: exit code out of range")
	}
	return r, nil
}

// Run is `gomux-agent pyrun`: run one Python module the way `INTERP
// SCRIPT ARGS...` (or a pipelined `INTERP` reading the script on stdin)
// would, but in a child forked from a warm fork server of this user. It
// returns the exit code; a run that dies by a signal kills this process
// with the same signal. Whatever goes wrong before the fork server has
// committed to the run, it replaces itself with the real interpreter, so
// a broken fork server costs speed, never a task.
func Run(ctx context.Context, args []string) int {
	o, err := parsePyRunArgs(args)
	if err != nil {
		if len(o.Argv) > 0 {
			if os.Getenv("GOMUX_PYRUN_DEBUG") != "" {
				fmt.Fprintf(os.Stderr, "gomux pyrun: cold: %v\n", err)
			}
			return execCold(o, nil)
		}
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var stdin *os.File
	conn, err := pyConnect(ctx, o, &stdin)
	if err != nil {
		if os.Getenv("GOMUX_PYRUN_DEBUG") != "" {
			fmt.Fprintf(os.Stderr, "gomux pyrun: cold: %v\n", err)
		}
		return execCold(o, stdin)
	}
	return pyWait(conn)
}

// execCold replaces this process with the interpreter, given the script
// on stdin when the client already read it (a pipelined run). With
// -ctty 0 the interpreter gets the terminal as its controlling terminal,
// as a warm run would: in a session of its own, since the shell's has
// none.
func execCold(o pyRunOptions, script *os.File) int {
	argv := o.Argv
	if o.Terminal {
		unix.Setsid()
		unix.IoctlSetInt(0, unix.TIOCSCTTY, 0)
	}
	if script != nil {
		if _, err := script.Seek(0, io.SeekStart); err == nil {
			unix.Dup2(int(script.Fd()), 0)
		}
	}
	err := syscall.Exec(argv[0], argv, os.Environ())
	// Only a missing or unrunnable interpreter gets here; say so as the
	// shell would have.
	fmt.Fprintf(os.Stderr, "%s: %v\n", argv[0], err)
	if errors.Is(err, syscall.ENOENT) {
		return 127
	}
	return 126
}

// pyConnect hands the run to a fork server and returns the connection
// once the server has committed to it. *stdin is set to the script read
// from stdin, for a cold run, when the run is pipelined.
func pyConnect(ctx context.Context, o pyRunOptions, stdin **os.File) (int, error) {
	req, err := buildPyRequest(o.Argv)
	if err != nil {
		return -1, err
	}
	if o.Terminal {
		req.Ctty = unix.TIOCSCTTY
	}
	script, err := pyOpenScript(req, o.Argv, stdin)
	if err != nil {
		return -1, err
	}
	if req.Script {
		defer unix.Close(script)
	}
	cwd, err := unix.Open(".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open cwd: %w", err)
	}
	defer unix.Close(cwd)
	hdr, err := json.Marshal(req)
	if err != nil {
		return -1, err
	}
	dir, err := pyRunDir(os.Geteuid())
	if err != nil {
		return -1, err
	}
	key := pyServerKey(o, req)
	sock := filepath.Join(dir, target.ForkServerSocket(key))
	conn, err := pyDial(sock)
	if err != nil {
		conn, err = pyStartServer(ctx, o, dir, sock, key)
		if err != nil {
			return -1, err
		}
	}
	if err := pyCommit(ctx, conn, hdr, unix.UnixRights(0, 1, 2, cwd, script)); err != nil {
		unix.Close(conn)
		return -1, err
	}
	return conn, nil
}

// pyOpenScript returns a descriptor of the script: the file argv names
// (the caller closes it), or for a pipelined run a memfd holding what
// stdin held, which *stdin is also set to (it stays open: a cold run
// reads the script from it).
func pyOpenScript(req *pyRequest, argv []string, stdin **os.File) (int, error) {
	if req.Script {
		fd, err := unix.Open(argv[1], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("open script: %w", err)
		}
		return fd, nil
	}
	// Python reads a piped script to EOF before it runs any of it, so
	// reading it here first changes nothing the script can see.
	if _, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
		return -1, errors.New("stdin is a terminal: an interactive interpreter")
	}
	fd, err := unix.MemfdCreate("gomux-pyrun-script", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "script")
	*stdin = f
	if _, err := io.Copy(f, os.Stdin); err != nil {
		return -1, fmt.Errorf("read script from stdin: %w", err)
	}
	return fd, nil
}

// pyCommit sends the request with its descriptors (rights), waits for
// the server to say it can reproduce the run, and commits it with "go":
// from then on the run is the server's.
func pyCommit(ctx context.Context, conn int, hdr, rights []byte) error {
	if err := unix.Sendmsg(conn, hdr, rights, nil, 0); err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, pyRunReadyTimeout)
	defer cancel()
	r, err := pyRecv(ctx, conn)
	if err != nil {
		return err
	}
	if r.Ready != 1 {
		return fmt.Errorf("fork server: %s", r.Cold)
	}
	if _, err := unix.Write(conn, []byte(`{"go":1}`)); err != nil {
		return fmt.Errorf("send go: %w", err)
	}
	return nil
}

// forwardedSignals reach the run as they would reach the interpreter:
// sudo and the agent signal this process, the run is in another.
var forwardedSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGALRM}

// pyWait forwards signals to the run and ends this process the way the
// run ended. From here on the task is the fork server's: nothing goes cold.
func pyWait(conn int) int {
	sigs := make(chan os.Signal, 16)
	for _, s := range forwardedSignals {
		// An ignored SIGHUP or SIGINT stays ignored, as the interpreter
		// would have inherited it (the run was told so in the request).
		if !signal.Ignored(s) {
			signal.Notify(sigs, s)
		}
	}
	done := make(chan struct{})
	fwdDone := make(chan struct{})
	go func() {
		defer close(fwdDone)
		for {
			select {
			case s := <-sigs:
				msg := fmt.Sprintf(`{"signal":%d}`, s.(syscall.Signal))
				unix.Write(conn, []byte(msg))
			case <-done:
				return
			}
		}
	}()
	stop := func() {
		signal.Stop(sigs)
		close(done)
		<-fwdDone
	}
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(conn, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			stop()
			fmt.Fprintln(os.Stderr, "gomux pyrun: the fork server went away before reporting the task's exit status")
			return 1
		}
		r, derr := decodePyReply(buf[:n])
		if derr != nil {
			continue
		}
		if r.Exit != nil {
			// The run's own report, written just before its _exit:
			// the interpreter would end with this code now. Telling
			// the template first keeps it from taking this client's
			// end for an abandoned task and killing what the run left
			// running in its process group. The template's status,
			// which follows the reap, is not waited for: that wait
			// is a wake-up of the template and of this process on
			// every task's critical path.
			unix.Write(conn, []byte(`{"done":1}`))
			stop()
			return *r.Exit
		}
		if st := r.Status; st != nil {
			stop()
			if st.Signal != 0 {
				dieBySignal(syscall.Signal(st.Signal))
			}
			return st.Code
		}
	}
}

// dieBySignal ends this process with sig, so its parent sees what it
// would have seen of the interpreter. The Go runtime handles some
// signals itself (SIGQUIT dumps goroutines), so the default action is
// restored with the raw system call first.
func dieBySignal(sig syscall.Signal) {
	signal.Reset(sig)
	var act [4]uint64 // handler SIG_DFL, flags, restorer, mask
	unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act[0])), 0, 8, 0, 0)
	var set unix.Sigset_t
	set.Val[(int(sig)-1)/64] |= 1 << ((uint(sig) - 1) % 64)
	unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
	unix.Tgkill(unix.Getpid(), unix.Gettid(), sig)
	unix.Kill(unix.Getpid(), sig)
	time.Sleep(100 * time.Millisecond)
	os.Exit(128 + int(sig))
}

// pyRecv reads one message, waiting at most until ctx ends.
func pyRecv(ctx context.Context, conn int) (pyReply, error) {
	deadline, _ := ctx.Deadline()
	for {
		ms := -1
		if !deadline.IsZero() {
			ms = int(time.Until(deadline) / time.Millisecond)
			if ms <= 0 {
				return pyReply{}, errors.New("fork server did not answer in time")
			}
		}
		fds := []unix.PollFd{{Fd: int32(conn), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return pyReply{}, fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			continue
		}
		buf := make([]byte, 4096)
		m, err := unix.Read(conn, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return pyReply{}, fmt.Errorf("read: %w", err)
		}
		return decodePyReply(buf[:m])
	}
}

// buildPyRequest describes this process as the interpreter would inherit
// it. It fails for anything a forked child could not reproduce exactly:
// then the run is cold.
func buildPyRequest(argv []string) (*pyRequest, error) {
	env := os.Environ()
	for _, kv := range env {
		if strings.HasPrefix(kv, "PYTHON") {
			return nil, errors.New("PYTHON* variables change how the interpreter starts")
		}
		if !utf8.ValidString(kv) {
			return nil, errors.New("environment is not UTF-8")
		}
	}
	for _, a := range argv {
		if !utf8.ValidString(a) {
			return nil, errors.New("arguments are not UTF-8")
		}
	}
	if len(argv) > 1 && strings.HasPrefix(argv[1], "-") {
		return nil, errors.New("interpreter flags")
	}
	groups, err := unix.Getgroups()
	if err != nil {
		return nil, fmt.Errorf("getgroups: %w", err)
	}
	if groups == nil {
		groups = []int{}
	}
	sort.Ints(groups)
	umask := unix.Umask(0)
	unix.Umask(umask)
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return nil, fmt.Errorf("getpriority: %w", err)
	}
	r := &pyRequest{V: Protocol, Argv: argv, Script: len(argv) > 1, Env: env, Umask: umask,
		Nice: 20 - prio, UID: unix.Getuid(), EUID: unix.Geteuid(), GID: unix.Getgid(), EGID: unix.Getegid(),
		Groups: groups, Rlimits: [][3]int64{}, SigIgn: []int{}}
	for res := 0; res < 16; res++ {
		var rl unix.Rlimit
		if err := unix.Getrlimit(res, &rl); err != nil {
			continue
		}
		if res == unix.RLIMIT_NOFILE {
			cur, err := startNofile(rl, unix.Getppid, os.ReadFile)
			if err != nil {
				return nil, err
			}
			rl.Cur = cur
		}
		r.Rlimits = append(r.Rlimits, [3]int64{int64(res), rlim(rl.Cur), rlim(rl.Max)})
	}
	for _, s := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT} {
		if signal.Ignored(s) {
			r.SigIgn = append(r.SigIgn, int(s))
		}
	}
	return r, nil
}

// startNofile is the soft RLIMIT_NOFILE this process was started with,
// given its current limits. Go's runtime raises the soft limit of every
// Go program to hard-1 before main (package syscall) and gives the
// original back only to processes it starts or execs itself; the run is
// forked by the fork server instead, and would have the raised limit
// (a module would see `ulimit -n` at 524287 instead of 1024). When the
// current soft limit is hard-1, the original is the one of the parent,
// the shell that started this process and waits for it (it cannot
// change its own limits meanwhile), read from /proc/PPID/limits and
// trusted only if the parent is still the same process afterwards and
// has the same hard limit. Anything else is an error: the run goes cold.
func startNofile(cur unix.Rlimit, getppid func() int, readFile func(string) ([]byte, error)) (uint64, error) {
	if cur.Max == unix.RLIM_INFINITY || cur.Max == 0 || cur.Cur != cur.Max-1 {
		// Go raised nothing: it only ever sets hard-1.
		return cur.Cur, nil
	}
	ppid := getppid()
	if ppid <= 1 {
		return 0, errors.New("open files limit: no parent to take it from")
	}
	b, err := readFile(fmt.Sprintf("/proc/%d/limits", ppid))
	if err != nil {
		return 0, fmt.Errorf("open files limit: %w", err)
	}
	if getppid() != ppid {
		return 0, errors.New("open files limit: the parent went away")
	}
	soft, hard, err := parseNofile(b)
	if err != nil {
		return 0, err
	}
	if hard != cur.Max || soft > cur.Cur {
		return 0, fmt.Errorf("open files limit: the parent's %d/%d does not fit this process's %d/%d", soft, hard, cur.Cur, cur.Max)
	}
	return soft, nil
}

// parseNofile reads the "Max open files" line of /proc/PID/limits.
func parseNofile(b []byte) (soft, hard uint64, err error) {
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			break
		}
		v := [2]uint64{}
		for i := range v {
			if f[i] == "unlimited" {
				v[i] = unix.RLIM_INFINITY
				continue
			}
			if v[i], err = strconv.ParseUint(f[i], 10, 64); err != nil {
				return 0, 0, fmt.Errorf("open files limit: %w", err)
			}
		}
		return v[0], v[1], nil
	}
	return 0, 0, errors.New("open files limit: no Max open files line")
}

// rlim writes RLIM_INFINITY as Python's resource module does: -1.
func rlim(v uint64) int64 {
	if v == unix.RLIM_INFINITY {
		return -1
	}
	return int64(v)
}

// pyServerKey names the fork server a run may use: one per interpreter,
// credentials, agent, fork server code, and the environment that shapes
// interpreter start-up (locale, home for the user site, time zone).
func pyServerKey(o pyRunOptions, r *pyRequest) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d %d %d %d %v\x00", o.Argv[0], o.Agent, r.UID, r.EUID, r.GID, r.EGID, r.Groups)
	h.Write(forkServerScript)
	// A run confined differently (capabilities, no_new_privs, seccomp,
	// LSM label, namespaces) gets its own server: one started by a client
	// confined otherwise refuses it (forkserver.py, check_peer).
	h.Write(confinementKey())
	var env []string
	for _, kv := range r.Env {
		k, _, _ := strings.Cut(kv, "=")
		if k == "LANG" || k == "HOME" || k == "TZ" || strings.HasPrefix(k, "LC_") {
			env = append(env, kv)
		}
	}
	sort.Strings(env)
	for _, kv := range env {
		h.Write([]byte(kv + "\x00"))
	}
	return hex.EncodeToString(h.Sum(nil))[:20]
}

// confinementKey is what of this process a fork server compares with its
// own before it serves a run (forkserver.py, confinement): the lines of
// /proc/self/status that say ids, groups, capabilities, no_new_privs and
// seccomp, the LSM label, and the namespaces.
func confinementKey() []byte {
	var b bytes.Buffer
	if st, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(st), "\n") {
			k, _, _ := strings.Cut(line, ":")
			switch k {
			case "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters":
				b.WriteString(line + "\n")
			}
		}
	}
	if l, err := os.ReadFile("/proc/self/attr/current"); err == nil {
		b.Write(l)
	}
	for _, ns := range []string{"mnt", "pid_for_children", "user", "net", "ipc", "uts", "cgroup", "time_for_children"} {
		l, _ := os.Readlink("/proc/self/ns/" + ns)
		b.WriteString(l + "\n")
	}
	return b.Bytes()
}

// pyRunDir returns a directory only euid can use: $XDG_RUNTIME_DIR/gomux
// (target.RunDirName) when that is euid's, else /tmp/gomux-<euid>
// (target.FallbackRunDir). Anything else there (a
// symlink, another owner, a wider mode) is refused: the run goes cold.
func pyRunDir(euid int) (string, error) {
	if x := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(x) && privateDir(x, euid, false) == nil {
		d := filepath.Join(x, target.RunDirName)
		unix.Mkdir(d, 0o700)
		if err := privateDir(d, euid, true); err == nil {
			return d, nil
		}
	}
	d := target.FallbackRunDir(euid)
	unix.Mkdir(d, 0o700)
	if err := privateDir(d, euid, true); err != nil {
		return "", err
	}
	return d, nil
}

func privateDir(d string, euid int, strict bool) error {
	var st unix.Stat_t
	if err := unix.Lstat(d, &st); err != nil {
		return fmt.Errorf("lstat %s: %w", d, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || int(st.Uid) != euid {
		return fmt.Errorf("%s is not a directory owned by uid %d", d, euid)
	}
	if st.Mode&0o077 != 0 && (strict || st.Mode&0o002 != 0) {
		return fmt.Errorf("%s is open to others (mode %o)", d, st.Mode&0o777)
	}
	return nil
}

// pyDial connects to a fork server's socket.
func pyDial(sock string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", sock, err)
	}
	return fd, nil
}

// pyStartServer starts the fork server for key, unless another client
// did while this one waited for the lock, and connects to it.
func pyStartServer(ctx context.Context, o pyRunOptions, dir, sock, key string) (int, error) {
	lock, err := unix.Open(filepath.Join(dir, target.ForkServerLock(key)), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return -1, fmt.Errorf("lock: %w", err)
	}
	defer unix.Close(lock)
	if err := unix.Flock(lock, unix.LOCK_EX); err != nil {
		return -1, fmt.Errorf("lock: %w", err)
	}
	if fd, err := pyDial(sock); err == nil {
		return fd, nil
	}
	script, err := installForkServer(dir)
	if err != nil {
		return -1, err
	}
	if err := launchForkServer(ctx, o, dir, script, sock); err != nil {
		return -1, err
	}
	return pyDial(sock)
}

// installForkServer writes forkserver.py into dir under a name of its
// hash, unless that file already holds it, and returns its path.
func installForkServer(dir string) (string, error) {
	sum := sha256.Sum256(forkServerScript)
	script := filepath.Join(dir, "forkserver-"+hex.EncodeToString(sum[:8])+".py")
	if b, err := os.ReadFile(script); err == nil && bytes.Equal(b, forkServerScript) {
		return script, nil
	}
	tmp := fmt.Sprintf("%s.%d", script, os.Getpid())
	if err := os.WriteFile(tmp, forkServerScript, 0o600); err != nil {
		return "", fmt.Errorf("write fork server: %w", err)
	}
	if err := os.Rename(tmp, script); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("install fork server: %w", err)
	}
	return script, nil
}

// launchForkServer starts the interpreter on script, listening on sock,
// in a session of its own, and waits until it says it listens.
func launchForkServer(ctx context.Context, o pyRunOptions, dir, script, sock string) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	agentID := o.Agent
	if agentID == "" {
		agentID = "-"
	}
	idle := strconv.FormatFloat(o.Idle.Seconds(), 'f', -1, 64)
	cmd := exec.Command(o.Argv[0], script, sock, idle, agentID)
	cmd.Dir = dir
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return fmt.Errorf("start fork server: %w", err)
	}
	// The server outlives this client; init reaps it.
	cmd.Process.Release()
	deadline := time.Now().Add(pyRunReadyTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	pr.SetReadDeadline(deadline)
	line, _ := io.ReadAll(io.LimitReader(pr, 4096))
	status := strings.TrimSpace(string(line))
	if status != "ok" {
		if status == "" {
			status = "exited before listening"
		}
		// A server that says "cold" keeps listening, so later runs
		// learn it with one connect instead of a start.
		return fmt.Errorf("fork server: %s", status)
	}
	return nil
}
