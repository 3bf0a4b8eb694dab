// Command fakeagent is a hostile gomux agent for the end-to-end tests: a
// target's sshd runs it (ForceCommand) in place of the launcher. It
// greets gomux as the real agent does and answers hello truthfully, then
// misbehaves on every other request in the way its argument names:
//
//	garbage   a frame of an unknown type with random bytes
//	oversize  a frame header claiming 4 GiB
//	stall     nothing at all, the stream left open
//	flood     megabytes of stdout frames, then a bogus exit
//
// It exits when gomux closes its stdin.
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"

	"github.com/hashicorp/yamux"

	"github.com/gomux/gomux/agent"
)

type stdio struct {
	io.Reader
	io.Writer
}

func (stdio) Close() error { return os.Stdin.Close() }

func frame(w io.Writer, typ byte, payload []byte) error {
	hdr := make([]byte, 5, 5+len(payload))
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	_, err := w.Write(append(hdr, payload...))
	return err
}

func main() {
	mode := "garbage"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	fmt.Printf("%s %d\n", agent.Banner, agent.ProtocolVersion)
	sess, err := yamux.Server(stdio{os.Stdin, os.Stdout}, agent.YamuxConfig())
	if err != nil {
		os.Exit(1)
	}
	u, _ := user.Current()
	home, _ := os.UserHomeDir()
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			var hdr [5]byte
			if _, err := io.ReadFull(st, hdr[:]); err != nil {
				return
			}
			body := make([]byte, min(binary.BigEndian.Uint32(hdr[1:]), agent.MaxFrame))
			if _, err := io.ReadFull(st, body); err != nil {
				return
			}
			var req struct{ Op string }
			json.Unmarshal(body, &req)
			if req.Op == "hello" {
				info, _ := json.Marshal(agent.Info{ProtocolVersion: agent.ProtocolVersion, AgentVersion: "fake-" + mode,
					UID: os.Getuid(), GID: os.Getgid(), User: u.Username, Home: home, RealHome: home, Shell: "/bin/sh", Arch: "amd64"})
				frame(st, 2, info)
				st.Close()
				return
			}
			switch mode {
			case "garbage":
				frame(st, 0xee, []byte("\x00\xffnot a frame gomux knows\x7f"))
			case "oversize":
				st.Write([]byte{2, 0xff, 0xff, 0xff, 0xff})
			case "stall":
				io.Copy(io.Discard, st) // holds the stream open, answers nothing
				return
			case "flood":
				chunk := make([]byte, 32<<10)
				for i := 0; i < 64; i++ {
					if frame(st, 8, chunk) != nil {
						return
					}
				}
				frame(st, 12, []byte(`{"code": -7, "signal": 12345}`))
			}
			st.Close()
		}()
	}
}
