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

// execInput is exec with, when input is not nil, the process's whole
// stdin: written once the process runs, then closed.
func (s *Server) execInput(ctx context.Context, st net.Conn, req *ExecRequest, info Info, input []byte) {
	cmd := command(req, info)
	var wmu sync.Mutex
	send := func(typ byte, p []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return writeFrame(st, typ, p)
	}
	fail := func(err error) {
		writeJSON(st, frameError, toRemoteError("exec", cmd.Path, err))
	}

	var stdin io.WriteCloser
	var outputs []io.Reader
	var master *os.File
	if req.Pty != nil {
		m, tty, err := openPty()
		if err != nil {
			fail(err)
			return
		}
		master = m
		defer master.Close()
		applyModes(int(tty.Fd()), req.Pty.Modes)
		setWinsize(master, req.Pty.Cols, req.Pty.Rows, req.Pty.WidthPx, req.Pty.HeightPx)
		cmd.Env = buildEnv(os.Environ(), req.Env, req.Pty, tty.Name())
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		err = cmd.Start()
		tty.Close()
		if err != nil {
			fail(err)
			return
		}
		stdin = master
	} else {
		cmd.Env = buildEnv(os.Environ(), req.Env, nil, "")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		in, err := cmd.StdinPipe()
		if err != nil {
			fail(err)
			return
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			fail(err)
			return
		}
		errp, err := cmd.StderrPipe()
		if err != nil {
			fail(err)
			return
		}
		if err := cmd.Start(); err != nil {
			fail(err)
			return
		}
		stdin, outputs = in, []io.Reader{out, errp}
	}
	pg := cmd.Process.Pid
	s.track(pg, true) // false: the session is ending and pg is killed
	defer s.track(pg, false)
	if err := send(frameOK, []byte("{}")); err != nil {
		killGroup(pg)
		if master != nil {
			master.Close()
		}
		cmd.Wait()
		return
	}
	s.log().Debug("exec", "pid", pg, "pty", req.Pty != nil)

	// Input: stdin data, EOF, window changes, signals. A broken stream
	// means gomux abandoned the process: kill its group, as sshd does
	// when a session's connection drops.
	exited := make(chan struct{})
	var inWG sync.WaitGroup
	if input != nil {
		// The whole input came with the request: write it, then EOF
		// (a terminal has no EOF to send; its input is only written).
		// A process that exits unread fails the write, which ends it.
		inWG.Add(1)
		go func() {
			defer inWG.Done()
			stdin.Write(input)
			if master == nil {
				stdin.Close()
			}
		}()
	}
	inWG.Add(1)
	go func() {
		defer inWG.Done()
		for {
			typ, p, err := readFrame(st)
			if err != nil {
				select {
				case <-exited:
				default:
					killGroup(pg)
				}
				return
			}
			switch typ {
			case frameStdin:
				if _, err := stdin.Write(p); err != nil && master == nil {
					stdin.Close()
				}
			case frameStdinEOF:
				if master == nil {
					stdin.Close()
				}
			case frameResize:
				var w windowSize
				if master != nil && json.Unmarshal(p, &w) == nil {
					setWinsize(master, w.Cols, w.Rows, w.WidthPx, w.HeightPx)
				}
			case frameSignal:
				if sig := unix.SignalNum("SIG" + string(p)); sig != 0 {
					syscall.Kill(-pg, sig)
				} else {
					s.log().Info("unknown signal ignored", "name", string(p), "pid", pg)
				}
			}
		}
	}()

	var err error
	if master != nil {
		procDone := make(chan struct{})
		go func() {
			err = cmd.Wait()
			close(procDone)
		}()
		s.pumpPty(procDone, master, send)
		<-procDone
		// Nothing reads the terminal any more: a stdin write blocked on
		// its full input queue must fail rather than hold up the end.
		master.Close()
	} else {
		var outWG sync.WaitGroup
		for i, r := range outputs {
			data, eof := frameStdout, frameStdoutEOF
			if i == 1 {
				data, eof = frameStderr, frameStderrEOF
			}
			outWG.Add(1)
			go func() {
				defer outWG.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := r.Read(buf)
					if n > 0 && send(data, buf[:n]) != nil {
						killGroup(pg)
						io.Copy(io.Discard, r)
						return
					}
					if err != nil {
						send(eof, nil)
						return
					}
				}
			}()
		}
		outWG.Wait()
		err = cmd.Wait()
	}
	close(exited)
	status := exitStatusOf(cmd, err)
	s.log().Debug("exit", "pid", pg, "code", status.Code, "signal", status.Signal)
	send(frameExit, mustJSON(status))
	// The client closes the stream once it has the exit; that ends inWG.
	st.Close()
	inWG.Wait()
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
	var rd sync.WaitGroup
	rd.Add(1)
	go func() {
		defer rd.Done()
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
	}()
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
