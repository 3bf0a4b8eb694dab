package proxy

import (
	"bytes"
	"io"
	"io/fs"
	"testing"

	"github.com/gomux/gomux/internal/sftptest"
)

type nopRWC struct{ io.Reader }

func (nopRWC) Write(p []byte) (int, error) { return len(p), nil }
func (nopRWC) Close() error                { return nil }

// oneByte reads one byte at a time, so every packet is split.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(1, len(p))]) }

// TestOpenSnifferModes feeds what OpenSSH's sftp sends for `put` (OPEN
// with the local file's permissions, then data) and `mkdir`, split at
// every byte, and checks each handler would see the mode the client sent
// and that every byte still reaches pkg/sftp.
func TestOpenSnifferModes(t *testing.T) {
	const (
		write, creat, trunc = 0x02, 0x08, 0x10
	)
	var in bytes.Buffer
	in.Write(sftptest.Packet(1, uint32(3))) // INIT, version 3
	// put: permissions only.
	in.Write(sftptest.Packet(sshFxpOpen, uint32(1), "/t/ansible-tmp-1-2-3/AnsiballZ_ping.py", uint32(write|creat|trunc), uint32(sshFileXferAttrPem), uint32(0o100600)))
	// A large WRITE that must be skipped, not buffered or parsed.
	in.Write(sftptest.Packet(6, uint32(2), "handle", uint64(0), string(bytes.Repeat([]byte{sshFxpOpen}, 200_000))))
	// put -p style: size, uid/gid, permissions and times, relative path.
	in.Write(sftptest.Packet(sshFxpOpen, uint32(3), "rel/file", uint32(write|creat), uint32(sshFileXferAttrSz|sshFileXferAttrUID|sshFileXferAttrPem|0x8),
		uint64(12), uint32(1000), uint32(1000), uint32(0o104750), uint32(1), uint32(2)))
	// An OPEN with no attributes.
	in.Write(sftptest.Packet(sshFxpOpen, uint32(4), "/plain", uint32(write|creat), uint32(0)))
	in.Write(sftptest.Packet(sshFxpMkdir, uint32(5), "/t/dir", uint32(sshFileXferAttrPem), uint32(0o700)))
	want := append([]byte(nil), in.Bytes()...)

	modes := newOpenModes("/home/u")
	s := &openSniffer{ReadWriteCloser: nopRWC{oneByte{&in}}, modes: modes}
	got, err := io.ReadAll(s)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("bytes through the sniffer changed (err %v)", err)
	}
	for _, c := range []struct {
		path string
		mode fs.FileMode
		ok   bool
	}{
		{"/t/ansible-tmp-1-2-3/AnsiballZ_ping.py", 0o600, true},
		{"/home/u/rel/file", 0o750 | fs.ModeSetuid, true},
		{"/plain", 0, false},
		{"/t/dir/", 0o700, true},
		{"/t/dir", 0, false}, // taken once
	} {
		m, ok := modes.take(c.path)
		if m != c.mode || ok != c.ok {
			t.Errorf("%s: mode %v %v, want %v %v", c.path, m, ok, c.mode, c.ok)
		}
	}
	if len(s.body) > maxSniffedPacket {
		t.Errorf("buffered %d bytes of a WRITE", len(s.body))
	}
}

// TestOpenSnifferNewerOpenWithoutMode: an OPEN without permissions after
// one with them must not inherit the older request's mode.
func TestOpenSnifferNewerOpenWithoutMode(t *testing.T) {
	var in bytes.Buffer
	in.Write(sftptest.Packet(sshFxpOpen, uint32(1), "/f", uint32(0x1a), uint32(sshFileXferAttrPem), uint32(0o600)))
	in.Write(sftptest.Packet(sshFxpOpen, uint32(2), "/f", uint32(0x1a), uint32(0)))
	modes := newOpenModes("/")
	io.ReadAll(&openSniffer{ReadWriteCloser: nopRWC{&in}, modes: modes})
	if m, ok := modes.take("/f"); ok {
		t.Errorf("took %v, want nothing", m)
	}
}
