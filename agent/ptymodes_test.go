package agent

import (
	"encoding/binary"
	"testing"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// TestApplyModesDisabledChar: a control character the client sends as 255
// is disabled on the pty, as sshd decodes it, not set to byte 0xFF. The
// OpenSSH client without a terminal of its own (Ansible's ssh -tt) sends
// VEOL and VEOL2 so; through gomux `stty -a` showed "eol = M-^?" where a
// direct login shows "eol = <undef>".
func TestApplyModesDisabledChar(t *testing.T) {
	m, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer m.Close()
	defer tty.Close()
	var modes []byte
	add := func(op byte, v uint32) {
		modes = append(modes, op)
		modes = binary.BigEndian.AppendUint32(modes, v)
	}
	add(1, 3)   // VINTR ^C
	add(6, 255) // VEOL disabled
	add(7, 255) // VEOL2 disabled
	add(5, 4)   // VEOF ^D
	modes = append(modes, ttyOpEnd)
	applyModes(int(tty.Fd()), modes)
	got, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if got.Cc[unix.VEOL] != posixVDisable || got.Cc[unix.VEOL2] != posixVDisable {
		t.Errorf("VEOL %#x, VEOL2 %#x: want disabled (%#x)", got.Cc[unix.VEOL], got.Cc[unix.VEOL2], posixVDisable)
	}
	if got.Cc[unix.VINTR] != 3 || got.Cc[unix.VEOF] != 4 {
		t.Errorf("VINTR %#x, VEOF %#x: want 0x3, 0x4", got.Cc[unix.VINTR], got.Cc[unix.VEOF])
	}
}
