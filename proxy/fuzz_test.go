package proxy

import (
	"bytes"
	"io"
	"math"
	"testing"

	"github.com/pkg/sftp"
	"github.com/rs/zerolog"

	"github.com/gomux/gomux/internal/sftptest"
	"github.com/gomux/gomux/shim"
)

// FuzzOpenSniffer feeds a client's bytes through the sniffer that reads
// OPEN and MKDIR packets on their way to pkg/sftp: every byte must pass
// unchanged, and what it keeps must stay bounded.
func FuzzOpenSniffer(f *testing.F) {
	f.Add(sftptest.Packet(sshFxpOpen, uint32(1), "/t/f", uint32(0x1a), uint32(sshFileXferAttrPem), uint32(0o600)))
	f.Add(sftptest.Packet(sshFxpMkdir, uint32(5), "d", uint32(sshFileXferAttrPem), uint32(0o700)))
	f.Add(sftptest.Packet(6, uint32(2), "h", uint64(math.MaxUint64), "data"))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, sshFxpOpen})
	f.Fuzz(func(t *testing.T, in []byte) {
		modes := newOpenModes("/home/u")
		s := &openSniffer{ReadWriteCloser: nopRWC{oneByte{bytes.NewReader(in)}}, modes: modes}
		got, err := io.ReadAll(s)
		if err != nil || !bytes.Equal(got, in) {
			t.Fatalf("bytes through the sniffer changed (err %v)", err)
		}
		if len(s.body) > maxSniffedPacket {
			t.Fatalf("buffered %d bytes", len(s.body))
		}
		if len(modes.modes) > maxOpenModes {
			t.Fatalf("%d paths remembered", len(modes.modes))
		}
	})
}

// FuzzSFTPWrite sends a client's WRITE offsets and lengths, as pkg/sftp
// hands them over (the wire's uint64 as an int64), to the handlers of an
// upload that is staged and of one that goes to the target: a write is
// refused exactly when it is out of range, and nothing panics.
func FuzzSFTPWrite(f *testing.F) {
	a := hostileAgent(f, okFiles)
	for _, off := range []uint64{0, 1 << 63, math.MaxUint64, shim.MaxStagedFile - 1, math.MaxInt64} {
		f.Add(off, uint16(5), true)
		f.Add(off, uint16(5), false)
	}
	f.Fuzz(func(t *testing.T, off uint64, n uint16, staged bool) {
		budget := shim.NewBudget(16 << 20)
		host := shim.NewHostLimits("u", "/home/u", "", shim.HostLimits{Budget: budget})
		planTempDir(t, host)
		var log bytes.Buffer
		fr := &sftpFront{ctx: t.Context(), a: a, host: host, opens: newOpenModes("/home/u"), lim: sftpLimits{handles: 4, budget: budget}, log: zerolog.New(&log)}
		p := "/home/u/other"
		if staged {
			p = "/home/u/.ansible/tmp/ansible-tmp-1-2-3/AnsiballZ_x.py"
		}
		r := sftp.NewRequest("Put", p)
		r.Flags = 0x02 | 0x08 | 0x10 // WRITE|CREAT|TRUNC
		w, err := fr.Filewrite(r)
		if err != nil {
			t.Fatal(err)
		}
		data := make([]byte, n)
		_, err = w.WriteAt(data, int64(off))
		bad := off > math.MaxInt64-uint64(n)
		if bad != (err != nil) { // the fake agent accepts every write in range
			t.Fatalf("WriteAt(%d bytes at %d) = %v", n, off, err)
		}
		w.(io.Closer).Close()
		host.Drop()
		if u := budget.Used(); u != 0 {
			t.Fatalf("budget holds %d after close", u)
		}
	})
}
