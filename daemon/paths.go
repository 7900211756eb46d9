package daemon

import (
	"fmt"
	"os"
	"path/filepath"
)

// SocketEnv names the environment variable that sets the daemon's control
// socket, for the library and the daemon alike.
const SocketEnv = "IPN_SOCKET"

// SystemSocket is the control socket of a daemon run by root for all users.
const SystemSocket = "/run/ipn/ipn.sock"

// UserSocket returns the control socket of a daemon serving the calling
// user alone: in $XDG_RUNTIME_DIR, else in /tmp/ipn-UID.
func UserSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "ipn", "ipn.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("ipn-%d", os.Geteuid()), "ipn.sock")
}

// DefaultSocket returns the control socket a daemon started by this process
// uses: $IPN_SOCKET, else SystemSocket for root, else UserSocket.
func DefaultSocket() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	if os.Geteuid() == 0 {
		return SystemSocket
	}
	return UserSocket()
}
