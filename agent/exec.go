package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/gomux/gomux/internal/gogroup"
)

const (
	errIsDir  = syscall.EISDIR
	errNotDir = syscall.ENOTDIR
)

// killGroup ends a process group the agent started.
func killGroup(pg int) { syscall.Kill(-pg, syscall.SIGKILL) }

// buildEnv is what sshd would give the command: the agent's own
// environment (sshd gave it that, for this user) without gomux's variables,
// then the accepted env requests, then the terminal's.
func buildEnv(base, extra []string, p *Pty, ttyName string) []string {
	vals := map[string]string{}
	var order []string
	set := func(kv string) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return
		}
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = v
	}
	for _, kv := range base {
		if strings.HasPrefix(kv, "GOMUX_") {
			continue
		}
		set(kv)
	}
	for _, kv := range extra {
		set(kv)
	}
	if p != nil {
		if p.Term != "" {
			set("TERM=" + p.Term)
		}
		set("SSH_TTY=" + ttyName)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vals[k])
	}
	return out
}

// command builds the process the way sshd does: the login shell with -c,
// argv[0] the shell's base name; a login shell (argv[0] "-sh") with no
// command.
func command(req *ExecRequest, info Info) *exec.Cmd {
	shell := info.Shell
	base := filepath.Base(shell)
	var cmd *exec.Cmd
	switch {
	case len(req.Argv) > 0:
		cmd = exec.Command(req.Argv[0], req.Argv[1:]...)
	case req.Command != "":
		cmd = &exec.Cmd{Path: shell, Args: []string{base, "-c", req.Command}}
	default:
		cmd = &exec.Cmd{Path: shell, Args: []string{"-" + base}}
	}
	cmd.Dir = req.Dir
	if cmd.Dir == "" {
		cmd.Dir = info.Home
	} else if !filepath.IsAbs(cmd.Dir) {
		cmd.Dir = filepath.Join(info.Home, cmd.Dir)
	}
	return cmd
}

// exec runs one process for a stream and reports its exit on it.
func (s *Server) exec(ctx context.Context, st net.Conn, req *ExecRequest, info Info) {
	if len(req.Stdin) > 0 {
		writeJSON(st, frameError, toRemoteError("exec", "", errors.New("stdin parts need a batch")))
		return
	}
	s.execInput(ctx, st, req, info, nil)
}

// execJob is one process the agent runs for a stream: how it was started
// (on a terminal or on pipes), its stdin, its output, and the stream that
// carries them. Its steps are execInput's: start, input loop, output
// pumps, exit report.
type execJob struct {
	s   *Server
	st  net.Conn
	cmd *exec.Cmd
	wmu sync.Mutex // serializes frames sent on st

	stdin   io.WriteCloser
	master  *os.File    // the terminal's master side; nil on pipes
	outputs []io.Reader // stdout and stderr pipes; nil on a terminal
	pg      int         // the process group, led by the process
	exited  chan struct{}
}

// execInput is exec with, when input is not nil, the process's whole
// stdin: written once the process runs, then closed.
func (s *Server) execInput(_ context.Context, st net.Conn, req *ExecRequest, info Info, input []byte) {
	j := &execJob{s: s, st: st, cmd: command(req, info), exited: make(chan struct{})}
	var err error
	if req.Pty != nil {
		err = j.startPty(req)
	} else {
		err = j.startPipes(req)
	}
	if err != nil {
		writeJSON(st, frameError, toRemoteError("exec", j.cmd.Path, err))
		return
	}
	if j.master != nil {
		defer j.master.Close()
	}
	j.pg = j.cmd.Process.Pid
	s.track(j.pg, true) // false: the session is ending and pg is killed
	defer s.track(j.pg, false)
	if err := j.send(frameOK, []byte("{}")); err != nil {
		j.abandon()
		return
	}
	s.log().Debug("exec", "pid", j.pg, "pty", req.Pty != nil)

	// The input side ends when the stream does; the client closes it
	// once it has the exit, so inputs is waited for after the report.
	var inputs gogroup.Group
	if input != nil {
		inputs.Go(func() { j.writeInput(input) })
	}
	inputs.Go(j.inputLoop)
	if j.master != nil {
		err = j.pumpTerminal()
	} else {
		err = j.pumpPipes()
	}
	close(j.exited)
	j.reportExit(err)
	st.Close()
	inputs.Wait()
}

// send writes one frame; the output pumps and the exit report share st.
func (j *execJob) send(typ byte, p []byte) error {
	j.wmu.Lock()
	defer j.wmu.Unlock()
	return writeFrame(j.st, typ, p)
}

// startPty starts the process on a new terminal that becomes its
// controlling terminal, as sshd does for a pty-req (unless
// Pty.NotControlling: a warm run at the end of the command takes it).
func (j *execJob) startPty(req *ExecRequest) error {
	m, tty, err := openPty()
	if err != nil {
		return err
	}
	defer tty.Close() // the child holds its own copy once started
	applyModes(int(tty.Fd()), req.Pty.Modes)
	setWinsize(m, req.Pty.Cols, req.Pty.Rows, req.Pty.WidthPx, req.Pty.HeightPx)
	cmd := j.cmd
	cmd.Env = buildEnv(os.Environ(), req.Env, req.Pty, tty.Name())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if req.Pty.NotControlling {
		// A process group of its own, in the agent's session (which has
		// no terminal): a session leader would take the terminal as soon
		// as it opened it (bash opens ttyname(0) at start), and then the
		// run could not.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		m.Close()
		return err
	}
	j.master, j.stdin = m, m
	return nil
}

// startPipes starts the process on three pipes, in a session of its own.
func (j *execJob) startPipes(req *ExecRequest) error {
	cmd := j.cmd
	cmd.Env = buildEnv(os.Environ(), req.Env, nil, "")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	errp, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	j.stdin, j.outputs = in, []io.Reader{out, errp}
	return nil
}

// abandon ends a process whose start could not be reported: nobody
// will read its output.
func (j *execJob) abandon() {
	killGroup(j.pg)
	if j.master != nil {
		j.master.Close()
	}
	j.cmd.Wait()
}

// writeInput writes the whole input that came with the request, then
// EOF (a terminal has no EOF to send; its input is only written). A
// process that exits unread fails the write, which ends it.
func (j *execJob) writeInput(input []byte) {
	j.stdin.Write(input)
	j.closeStdin()
}

// inputLoop reads the client's frames: stdin data, EOF, window changes,
// signals. A broken stream means gomux abandoned the process: kill its
// group, as sshd does when a session's connection drops.
func (j *execJob) inputLoop() {
	for {
		typ, p, err := readFrame(j.st)
		if err != nil {
			select {
			case <-j.exited:
			default:
				killGroup(j.pg)
			}
			return
		}
		switch typ {
		case frameStdin:
			j.onStdin(p)
		case frameStdinEOF:
			j.closeStdin()
		case frameResize:
			j.onResize(p)
		case frameSignal:
			j.onSignal(string(p))
		}
	}
}

// onStdin writes data to the process; on pipes a failed write closes
// them, so the process sees EOF rather than a stall.
func (j *execJob) onStdin(p []byte) {
	if _, err := j.stdin.Write(p); err != nil {
		j.closeStdin()
	}
}

// closeStdin sends EOF; a terminal has none to send and stays open.
func (j *execJob) closeStdin() {
	if j.master == nil {
		j.stdin.Close()
	}
}

// onResize applies a window change to the terminal, if there is one.
func (j *execJob) onResize(p []byte) {
	var w windowSize
	if j.master != nil && json.Unmarshal(p, &w) == nil {
		setWinsize(j.master, w.Cols, w.Rows, w.WidthPx, w.HeightPx)
	}
}

// onSignal delivers a signal, by its SSH name, to the process group.
func (j *execJob) onSignal(name string) {
	if sig := unix.SignalNum("SIG" + name); sig != 0 {
		syscall.Kill(-j.pg, sig)
	} else {
		j.s.log().Info("unknown signal ignored", "name", name, "pid", j.pg)
	}
}

// pumpTerminal sends the terminal's output until the process has
// exited and the terminal has drained, and returns the wait result.
func (j *execJob) pumpTerminal() error {
	var err error
	procDone := make(chan struct{})
	go func() {
		err = j.cmd.Wait()
		close(procDone)
	}()
	j.s.pumpPty(procDone, j.master, j.send)
	<-procDone
	// Nothing reads the terminal any more: a stdin write blocked on
	// its full input queue must fail rather than hold up the end.
	j.master.Close()
	return err
}

// pumpPipes sends stdout and stderr, each until its EOF, then waits for
// the process and returns the wait result.
func (j *execJob) pumpPipes() error {
	var outputs gogroup.Group
	for i, r := range j.outputs {
		data, eof := frameStdout, frameStdoutEOF
		if i == 1 {
			data, eof = frameStderr, frameStderrEOF
		}
		outputs.Go(func() { j.pumpPipe(r, data, eof) })
	}
	outputs.Wait()
	return j.cmd.Wait()
}

// pumpPipe copies one output pipe into data frames and ends it with an
// eof frame. A stream that cannot take the output kills the group: the
// client is gone.
func (j *execJob) pumpPipe(r io.Reader, data, eof byte) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 && j.send(data, buf[:n]) != nil {
			killGroup(j.pg)
			io.Copy(io.Discard, r)
			return
		}
		if err != nil {
			j.send(eof, nil)
			return
		}
	}
}

// reportExit sends the one exit frame, the last of the stream.
func (j *execJob) reportExit(waitErr error) {
	status := exitStatusOf(j.cmd, waitErr)
	j.s.log().Debug("exit", "pid", j.pg, "code", status.Code, "signal", status.Signal)
	j.send(frameExit, mustJSON(status))
}

// openPty opens a terminal pair. The master is re-wrapped non-blocking so
// the runtime poller serves it: creack/pty's ioctls leave it blocking, and
// only a pollable master can be given a read deadline when a background
// job keeps the slave open after the command has exited.
func openPty() (master, tty *os.File, err error) {
	m, t, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	defer m.Close()
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Close()
		return nil, nil, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		t.Close()
		return nil, nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), t, nil
}

// setWinsize sets the terminal size through the poller's raw conn, since
// File.Fd would switch the master back to blocking mode.
func setWinsize(master *os.File, cols, rows, wpx, hpx uint32) {
	rc, err := master.SyscallConn()
	if err != nil {
		return
	}
	ws := &unix.Winsize{Col: uint16(cols), Row: uint16(rows), Xpixel: uint16(wpx), Ypixel: uint16(hpx)}
	rc.Control(func(fd uintptr) { unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) })
}

// pumpPty copies the terminal's output until the process has exited and
// the terminal has drained: EIO once no one holds the slave, or a quiet
// quarter second when a background job still does.
func (s *Server) pumpPty(procDone <-chan struct{}, master *os.File, send func(byte, []byte) error) {
	chunks := make(chan []byte, 16)
	var rd gogroup.Group
	rd.Go(func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := master.Read(buf)
			if n > 0 {
				chunks <- buf[:n]
			}
			if err != nil {
				return
			}
		}
	})
	var quiet <-chan time.Time
	for {
		select {
		case c, ok := <-chunks:
			if !ok {
				send(frameStdoutEOF, nil)
				send(frameStderrEOF, nil)
				rd.Wait()
				return
			}
			send(frameStdout, c)
			if quiet != nil {
				quiet = time.After(250 * time.Millisecond)
			}
		case <-procDone:
			procDone = nil
			quiet = time.After(250 * time.Millisecond)
		case <-quiet:
			master.SetReadDeadline(time.Now())
			for c := range chunks {
				send(frameStdout, c)
			}
			rd.Wait()
			send(frameStdoutEOF, nil)
			send(frameStderrEOF, nil)
			return
		}
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// exitStatusOf turns a wait result into what SSH reports.
func exitStatusOf(cmd *exec.Cmd, err error) ExitStatus {
	ps := cmd.ProcessState
	if ps == nil {
		return ExitStatus{Code: 255}
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok {
		return ExitStatus{Code: ps.ExitCode()}
	}
	if ws.Signaled() {
		name := strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
		return ExitStatus{Signal: name, CoreDumped: ws.CoreDump()}
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return ExitStatus{Code: 255}
	}
	return ExitStatus{Code: ws.ExitStatus()}
}
