// Package agent is the program gomux runs on each target and the client
// gomux uses to talk to it. One agent serves every session, file operation
// and port forward of one (target, user) over yamux on its stdin/stdout, so
// a task costs a stream, not a new SSH channel and process.
//
// The package knows nothing of Ansible or of gomux's front: it runs on
// targets. Its wire protocol is written down in PROTOCOL.md.
package agent

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

// ProtocolVersion is the newest protocol version this build speaks. It
// changes whenever a frame or request changes meaning. gomux embeds the
// agent it speaks to, so both ends normally match; the check catches a
// stale binary under a reused name.
const ProtocolVersion = 2

// MinProtocolVersion is the oldest protocol version this build still
// speaks, on both sides: the agent serves a client of it and the client
// talks to an agent of it (version 1 sent rename's new name as "path2",
// open's flags as "flag", rename's overwrite as "bool").
const MinProtocolVersion = 1

// Banner starts the agent's output, followed by a space, the oldest
// protocol version the agent serves and a newline (a version 1 client
// accepts only "1" there). Everything before it (login-shell noise) is
// skipped.
const Banner = "GOMUX-AGENT"

// MaxFrame bounds a frame's payload so a corrupt length never makes either
// side allocate more than this.
const MaxFrame = 1 << 20

// Frame types. PROTOCOL.md says which side sends each and when.
const (
	frameRequest   byte = 1  // client → agent: JSON request header
	frameOK        byte = 2  // agent → client: JSON result
	frameError     byte = 3  // agent → client: JSON RemoteError
	frameStdin     byte = 4  // exec: data
	frameStdinEOF  byte = 5  // exec: no payload
	frameResize    byte = 6  // exec: JSON windowSize
	frameSignal    byte = 7  // exec: signal name
	frameStdout    byte = 8  // exec: data
	frameStderr    byte = 9  // exec: data
	frameStdoutEOF byte = 10 // exec
	frameStderrEOF byte = 11 // exec
	frameExit      byte = 12 // exec: JSON ExitStatus
	frameRead      byte = 13 // file: id(4) offset(8) length(4)
	frameData      byte = 14 // file: id(4) eof(1) data
	frameWrite     byte = 15 // file: id(4) offset(8) data
	frameFstat     byte = 16 // file: no payload
	frameClose     byte = 17 // file: no payload
	frameIOError   byte = 18 // file: id(4) JSON RemoteError, for one read or write
	frameBlob      byte = 19 // batch: file content chunk; empty ends the file
)

// writeFrame sends one frame. Callers serialize writes on a stream.
func writeFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(payload), MaxFrame)
	}
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if len(payload) == 0 {
		_, err := w.Write(hdr[:])
		return err
	}
	// One write, so a frame is never interleaved on the stream.
	buf := make([]byte, 5+len(payload))
	copy(buf, hdr[:])
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

// writeJSON sends v, JSON-encoded, as one frame.
func writeJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("agent: encode frame %d: %w", typ, err)
	}
	return writeFrame(w, typ, b)
}

// ErrProtocol is a peer that broke the protocol: a reply that does not
// fit its request. The stream it came on is closed.
var ErrProtocol = errors.New("agent: protocol violation")

// ErrFrameTooLarge is a frame whose length exceeds MaxFrame.
var ErrFrameTooLarge = errors.New("agent: frame too large")

// readFrame reads one frame, checking the length before allocating.
func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	if n == 0 {
		return hdr[0], nil, nil
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], p, nil
}

// request is the header of every stream. Op selects the RPC; the other
// fields are the RPC's arguments, unused ones omitted.
type request struct {
	Op      string       `json:"op"`
	Version int          `json:"version,omitempty"`
	Exec    *ExecRequest `json:"exec,omitempty"`
	Path    string       `json:"path,omitempty"`
	// NewPath is where rename, posix-rename and link put Path.
	NewPath string `json:"new_path,omitempty"`
	// Link is the link symlink makes; Path is its target, stored as given.
	Link string `json:"link,omitempty"`
	// Flags are open's Linux O_* flags.
	Flags int    `json:"flags,omitempty"`
	Mode  uint32 `json:"mode,omitempty"`
	// Overwrite lets rename replace an existing NewPath (POSIX rename);
	// without it an existing NewPath fails with EEXIST, as SFTP's RENAME.
	Overwrite bool      `json:"overwrite,omitempty"`
	Attr      *wireAttr `json:"attr,omitempty"`
	Network   string    `json:"network,omitempty"`
	Address   string    `json:"address,omitempty"`
	Timeout   int64     `json:"timeout_ms,omitempty"`
	Prep      []PrepOp  `json:"prep,omitempty"`

	// V1Path2, V1Flag and V1Bool are version 1's generic fields, which
	// NewPath and Link, Flags and Overwrite replaced in version 2: the
	// agent reads them from a version 1 client (fromV1) and the client
	// writes them for a version 1 agent (toV1).
	V1Path2 string `json:"path2,omitempty"`
	V1Flag  int    `json:"flag,omitempty"`
	V1Bool  bool   `json:"bool,omitempty"`
}

// fromV1 moves a version 1 request's generic fields into the named fields
// its op gives them; a version 2 request, which has none, is unchanged.
func (r *request) fromV1() {
	switch r.Op {
	case "rename", "posix-rename", "link":
		r.NewPath = cmp.Or(r.NewPath, r.V1Path2)
	case "symlink":
		r.Link = cmp.Or(r.Link, r.V1Path2)
	case "open":
		r.Flags = cmp.Or(r.Flags, r.V1Flag)
	}
	if r.Op == "rename" {
		r.Overwrite = r.Overwrite || r.V1Bool
	}
	r.V1Path2, r.V1Flag, r.V1Bool = "", 0, false
}

// toV1 is r as a version 1 agent reads it.
func (r request) toV1() *request {
	r.V1Path2 = cmp.Or(r.NewPath, r.Link)
	r.V1Flag, r.V1Bool = r.Flags, r.Overwrite
	r.NewPath, r.Link, r.Flags, r.Overwrite = "", "", 0, false
	return &r
}

// decodeRequest parses a stream's header frame. It is a fuzz target: it
// must reject garbage without panicking.
func decodeRequest(p []byte) (*request, error) {
	var r request
	if err := json.Unmarshal(p, &r); err != nil {
		return nil, fmt.Errorf("agent: bad request header: %w", err)
	}
	if r.Op == "" {
		return nil, errors.New("agent: request without op")
	}
	r.fromV1()
	return &r, nil
}

// Info describes the agent and the account it runs as; gomux uses it to
// answer questions (home directory, user) without a round trip.
type Info struct {
	ProtocolVersion int    `json:"protocol_version"` // the agent's, checked at hello
	AgentVersion    string `json:"agent_version"`    // its build, for logs
	UID             int    `json:"uid"`              // the account it runs as
	GID             int    `json:"gid"`              // its primary group
	User            string `json:"user"`             // its login name
	Home            string `json:"home"`             // where relative paths start; `echo ~` answers it
	Shell           string `json:"shell"`            // the login shell commands run under
	Arch            string `json:"arch"`             // GOARCH, for logs
	Hostname        string `json:"hostname"`         // the target's own name, for logs
	// RealHome is Home with symlinks resolved, what realpath(".") answers.
	RealHome string `json:"real_home,omitempty"`
	// Executable is the agent binary's path, so gomux can name it in a
	// command: `<Executable> pyrun` runs a module in a warm interpreter.
	Executable string `json:"executable,omitempty"`
	// PID and StartTime (clock ticks after boot, /proc/PID/stat field 22)
	// identify this agent process; fork servers exit once it is gone.
	PID       int    `json:"pid,omitempty"`
	StartTime string `json:"start_time,omitempty"`
}

// ID is "PID:StartTime", what `gomux-agent pyrun -agent` takes; empty
// when the agent did not report them.
func (in Info) ID() string {
	if in.PID == 0 || in.StartTime == "" {
		return ""
	}
	return fmt.Sprintf("%d:%s", in.PID, in.StartTime)
}

// procStartTime reads a process's start time from /proc/PID/stat (field
// 22, after the parenthesized command name, which may hold spaces).
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return ""
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// Pty asks for a terminal, as an SSH pty-req does.
type Pty struct {
	Term                          string // TERM for the command
	Cols, Rows, WidthPx, HeightPx uint32 // the window's size
	// Modes are RFC 4254 encoded terminal modes.
	Modes []byte
	// NotControlling starts the command on the terminal in a process
	// group of its own, in the agent's session, which has no terminal,
	// instead of in a session that takes the terminal: the warm Python
	// run the command ends in takes it (`pyrun -ctty 0`), so the module
	// has it as it would without gomux.
	NotControlling bool `json:",omitempty"`
}

// ExecRequest starts a process. With Command it runs through the login
// shell's -c like sshd; with Argv directly; with neither, an interactive
// login shell.
type ExecRequest struct {
	Command string   // run by the login shell's -c, as sshd does
	Argv    []string // run directly when set (no shell)
	Env     []string // NAME=value over the agent's environment (accepted env requests)
	Pty     *Pty     // a terminal for the command; nil for pipes
	Dir     string   // working directory; default the home directory
	// Stdin, in a batch only, is the process's whole input, given as
	// parts like a write's (cached ones by reference, the rest as blob
	// frames after the prep ops' own): the agent writes it and then
	// closes stdin, and no stdin frames follow. A pipelined AnsiballZ
	// module goes this way, so its archive crosses the network once.
	Stdin []PrepPart `json:",omitempty"`
}

// ExitStatus is how a process ended: a code, or the signal that killed it.
type ExitStatus struct {
	Code       int    // the exit code when no signal killed it
	Signal     string // SSH name, without "SIG"
	CoreDumped bool   // the signal left a core dump
}

type windowSize struct {
	Cols, Rows, WidthPx, HeightPx uint32
}

// readReq asks for up to N bytes at Off; the answer carries ID.
type readReq struct {
	ID  uint32
	Off int64
	N   uint32
}

func (r readReq) encode() []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b, r.ID)
	binary.BigEndian.PutUint64(b[4:], uint64(r.Off))
	binary.BigEndian.PutUint32(b[12:], r.N)
	return b
}

func decodeReadReq(p []byte) (readReq, error) {
	if len(p) != 16 {
		return readReq{}, fmt.Errorf("agent: read request of %d bytes, want 16", len(p))
	}
	r := readReq{
		ID:  binary.BigEndian.Uint32(p),
		Off: int64(binary.BigEndian.Uint64(p[4:])),
		N:   binary.BigEndian.Uint32(p[12:]),
	}
	if r.Off < 0 {
		return readReq{}, fmt.Errorf("agent: negative read offset %d", r.Off)
	}
	return r, nil
}

// ioErrorPayload is an io-error frame's payload: the id of the one
// pipelined read or write that failed, then its error.
func ioErrorPayload(id uint32, re *RemoteError) []byte {
	b, _ := json.Marshal(re)
	out := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(out, id)
	copy(out[4:], b)
	return out
}

func decodeIOError(p []byte) (uint32, *RemoteError, error) {
	if len(p) < 4 {
		return 0, nil, errors.New("agent: short io error frame")
	}
	var re RemoteError
	if err := json.Unmarshal(p[4:], &re); err != nil {
		return 0, nil, fmt.Errorf("agent: bad io error frame: %w", err)
	}
	return binary.BigEndian.Uint32(p), &re, nil
}

// RemoteError is an error that happened on the target. Errno is set for OS
// errors, so errors.Is(err, fs.ErrNotExist) works across the wire.
type RemoteError struct {
	Op    string        `json:"op"`              // the request (or batch:<prep op>, blob)
	Path  string        `json:"path,omitempty"`  // the path it failed on, if any
	Msg   string        `json:"msg"`             // the target's words
	Errno syscall.Errno `json:"errno,omitempty"` // the Linux errno of an OS error
}

// Error reads like an os.PathError, naming the operation and path.
func (e *RemoteError) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("%s %s: %s", e.Op, e.Path, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Op, e.Msg)
}

// Unwrap exposes the errno for errors.Is.
func (e *RemoteError) Unwrap() error {
	if e.Errno != 0 {
		return e.Errno
	}
	return nil
}

// toRemoteError keeps an OS error's errno so errors.Is works on the client.
func toRemoteError(op, path string, err error) *RemoteError {
	re := &RemoteError{Op: op, Path: path, Msg: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		re.Errno = errno
		re.Msg = errno.Error()
	}
	return re
}

// YamuxConfig is shared by both ends. gomux learns of a dead target from
// SSH keepalives on the carrying connection and the agent of a dead gomux
// from its own pings (Server.Liveness), so yamux's keepalive is off; and its
// write timeout is long, because a stream back-pressured by a slow reader
// during bulk data is busy, not dead.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.ConnectionWriteTimeout = 5 * time.Minute
	c.StreamOpenTimeout = 2 * time.Minute
	c.MaxStreamWindowSize = 4 << 20
	c.LogOutput = io.Discard
	c.Logger = nil
	return c
}
