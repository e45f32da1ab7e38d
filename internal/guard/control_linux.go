package guard

import (
	"net"
	"os"
	"strconv"
	"syscall"
)

// controlPeer names the user at the other end of a control socket
// connection and says whether it may use the socket: the broker's own
// user or root. The socket file's mode already keeps others out; this is
// the second wall, should the data directory's permissions be loose.
func controlPeer(c net.Conn) (string, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "local", false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "local", false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return "local", false
	}
	peer := "uid " + strconv.Itoa(int(cred.Uid))
	return peer, int(cred.Uid) == os.Geteuid() || cred.Uid == 0
}
