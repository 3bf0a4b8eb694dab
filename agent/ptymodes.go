package agent

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// RFC 4254 section 8 opcodes and the termios fields they set.
type modeBit struct {
	field int // 0 iflag, 1 oflag, 2 cflag, 3 lflag
	bit   uint32
}

const (
	ttyOpEnd    = 0
	ttyOpISpeed = 128
	ttyOpOSpeed = 129
)

var modeChars = map[byte]int{
	1: unix.VINTR, 2: unix.VQUIT, 3: unix.VERASE, 4: unix.VKILL, 5: unix.VEOF,
	6: unix.VEOL, 7: unix.VEOL2, 8: unix.VSTART, 9: unix.VSTOP, 10: unix.VSUSP,
	12: unix.VREPRINT, 13: unix.VWERASE, 14: unix.VLNEXT, 18: unix.VDISCARD,
}

var modeBits = map[byte]modeBit{
	30: {0, unix.IGNPAR}, 31: {0, unix.PARMRK}, 32: {0, unix.INPCK}, 33: {0, unix.ISTRIP},
	34: {0, unix.INLCR}, 35: {0, unix.IGNCR}, 36: {0, unix.ICRNL}, 37: {0, unix.IUCLC},
	38: {0, unix.IXON}, 39: {0, unix.IXANY}, 40: {0, unix.IXOFF}, 41: {0, unix.IMAXBEL},
	42: {0, unix.IUTF8},
	50: {3, unix.ISIG}, 51: {3, unix.ICANON}, 52: {3, unix.XCASE}, 53: {3, unix.ECHO},
	54: {3, unix.ECHOE}, 55: {3, unix.ECHOK}, 56: {3, unix.ECHONL}, 57: {3, unix.NOFLSH},
	58: {3, unix.TOSTOP}, 59: {3, unix.IEXTEN}, 60: {3, unix.ECHOCTL}, 61: {3, unix.ECHOKE},
	62: {3, unix.PENDIN},
	70: {1, unix.OPOST}, 71: {1, unix.OLCUC}, 72: {1, unix.ONLCR}, 73: {1, unix.OCRNL},
	74: {1, unix.ONOCR}, 75: {1, unix.ONLRET},
	90: {2, unix.CS7}, 91: {2, unix.CS8}, 92: {2, unix.PARENB}, 93: {2, unix.PARODD},
}

// applyModes sets the terminal modes the client sent with its pty-req, as
// sshd does, so line editing and echo behave as on a direct login.
// Malformed or unknown entries end or are skipped; they never fail a
// session.
func applyModes(fd int, modes []byte) {
	if len(modes) == 0 {
		return
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return
	}
	parseModes(modes, func(op byte, v uint32) {
		if c, ok := modeChars[op]; ok {
			t.Cc[c] = specialChar(v)
			return
		}
		if b, ok := modeBits[op]; ok {
			flags := []*uint32{&t.Iflag, &t.Oflag, &t.Cflag, &t.Lflag}
			if v != 0 {
				*flags[b.field] |= b.bit
			} else {
				*flags[b.field] &^= b.bit
			}
			return
		}
		switch op {
		case ttyOpISpeed:
			t.Ispeed = v
		case ttyOpOSpeed:
			t.Ospeed = v
		}
	})
	unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// posixVDisable is Linux's _POSIX_VDISABLE: a control character set to
// it is off.
const posixVDisable = 0

// specialChar decodes a control character's value as sshd does
// (special_char_decode): 255 on the wire means disabled, which a client
// sends for a character its own terminal has off (OpenSSH sends VEOL and
// VEOL2 so when it has no terminal); taken literally it would make byte
// 0xFF end a line, and stty show "eol = M-^?" where a direct login shows
// "eol = <undef>".
func specialChar(v uint32) uint8 {
	if v == 255 {
		return posixVDisable
	}
	return uint8(v)
}

// parseModes walks the encoded modes, stopping at TTY_OP_END, at an opcode
// it cannot size (160 and up are undefined), or at a truncated value.
func parseModes(b []byte, fn func(op byte, v uint32)) {
	for len(b) > 0 {
		op := b[0]
		if op == ttyOpEnd || op >= 160 || len(b) < 5 {
			return
		}
		fn(op, binary.BigEndian.Uint32(b[1:5]))
		b = b[5:]
	}
}
