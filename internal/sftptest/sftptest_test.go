package sftptest

import (
	"bytes"
	"testing"
)

func TestPacket(t *testing.T) {
	got := Packet(6, uint32(2), "h", uint64(1<<40), []byte{0xff})
	// Built by hand: type, id, string "h", offset, one raw byte.
	body := []byte{6, 0, 0, 0, 2, 0, 0, 0, 1, 'h', 0, 0, 1, 0, 0, 0, 0, 0, 0xff}
	want := append([]byte{0, 0, 0, byte(len(body))}, body...)
	if !bytes.Equal(got, want) {
		t.Errorf("Packet = %x, want %x", got, want)
	}
	defer func() {
		if recover() == nil {
			t.Error("an int field did not panic")
		}
	}()
	Packet(1, 3)
}
