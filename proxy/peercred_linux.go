package proxy

import (
	"fmt"
	"net"
	"syscall"
)

// peerCred asks the kernel who connected to the admin socket
// (SO_PEERCRED): the caller's uid and pid as of its connect, which it
// cannot forge.
func peerCred(c *net.UnixConn) (peer, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return peer{}, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return peer{}, fmt.Errorf("peer credentials: %w", cerr)
	}
	return peer{UID: cred.Uid, PID: cred.Pid}, nil
}
