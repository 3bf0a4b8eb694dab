//go:build !linux

package proxy

import (
	"errors"
	"net"
)

// peerCred: only Linux is supported for the admin socket, which refuses
// every caller elsewhere rather than trust one it cannot name.
func peerCred(*net.UnixConn) (peer, error) {
	return peer{}, errors.New("peer credentials are read on Linux only")
}
