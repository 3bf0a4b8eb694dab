// Package sftptest builds raw SFTP v3 packets, for tests that must send
// what a well-behaved client never would: hostile offsets, packets split
// at every byte. It is shared by the proxy's unit tests and the
// end-to-end tests so the wire encoding is written once.
package sftptest

import (
	"encoding/binary"
	"fmt"
)

// Packet builds one SFTP packet: its uint32 length, the type byte, then
// the fields in order. A uint32 or uint64 is written big-endian, a string
// as a uint32 length and its bytes, a []byte as is. Any other type
// panics, so a field written as an untyped constant (an int) cannot
// silently drop out of the packet.
func Packet(typ byte, fields ...any) []byte {
	body := []byte{typ}
	for _, f := range fields {
		switch f := f.(type) {
		case uint32:
			body = binary.BigEndian.AppendUint32(body, f)
		case uint64:
			body = binary.BigEndian.AppendUint64(body, f)
		case string:
			body = binary.BigEndian.AppendUint32(body, uint32(len(f)))
			body = append(body, f...)
		case []byte:
			body = append(body, f...)
		default:
			panic(fmt.Sprintf("sftptest.Packet: field of type %T (use uint32, uint64, string or []byte)", f))
		}
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}
