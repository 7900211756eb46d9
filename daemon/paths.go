package daemon

import "github.com/ipn-project/ipn/internal/spec"

// SocketEnv names the environment variable that sets the daemon's control
// socket, for the library and the daemon alike.
const SocketEnv = spec.SocketEnv

// SystemSocket is the control socket of a daemon run by root for all users.
const SystemSocket = spec.SystemSocket

// UserSocket returns the control socket of a daemon serving the calling
// user alone: in $XDG_RUNTIME_DIR, else in /tmp/ipn-UID.
func UserSocket() string { return spec.UserSocket() }

// DefaultSocket returns the control socket a daemon started by this process
// uses: $IPN_SOCKET, else SystemSocket for root, else UserSocket.
func DefaultSocket() string { return spec.DefaultSocket() }
