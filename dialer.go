package ipn

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/ipn-project/ipn/internal/ctlsock"
)

// A Dialer reaches the daemon that serves networks, and may start one.
type Dialer struct {
	// Socket is the daemon's control socket. Empty: $IPN_SOCKET if set,
	// else the system daemon's (/run/ipn/ipn.sock) if it answers, else
	// the user's own ($XDG_RUNTIME_DIR/ipn/ipn.sock or /tmp/ipn-UID).
	Socket string
	// Start, if not nil, starts a daemon on the socket when none answers
	// there (unless $IPN_NO_AUTOSTART is 1), and returns once it serves.
	// Importing github.com/ipn-project/ipn/daemon/autostart sets
	// DefaultDialer's to one that starts this program as the daemon.
	Start func(socket string) error
	// RequestTimeout bounds how long a control call (an option, Bind,
	// Connect, a listing) waits for the daemon's answer; past it the call
	// fails with ETIMEDOUT and the socket is given up (a daemon stopped
	// with SIGSTOP, or hung). Zero: DefaultRequestTimeout.
	RequestTimeout time.Duration
}

// DefaultRequestTimeout is how long a control call waits for the daemon
// when the Dialer does not say.
const DefaultRequestTimeout = 30 * time.Second

// DefaultDialer is the Dialer of NewSocket, Join, List and the policy
// calls. With no Start (nothing imported daemon/autostart) it starts no
// daemon: NewSocket then fails with ErrNoDaemon when none runs.
var DefaultDialer = &Dialer{}

// NewSocket makes a socket for protocol proto (Any to take the network's)
// on a connection to the daemon d reaches, starting one if d may.
func (d *Dialer) NewSocket(proto Protocol) (*Socket, error) {
	return newSocket(proto, func() (*net.UnixConn, error) {
		c, err := ctlsock.Connect(d.Socket, d.Start)
		if errors.Is(err, ErrNoDaemon) && d.Start == nil {
			err = fmt.Errorf("%w: start one (ipn daemon), or import github.com/ipn-project/ipn/daemon/autostart for this program to start its own", err)
		}
		return c, err
	}, d.RequestTimeout)
}

// dialRunning connects to the daemon d reaches without starting one: for
// a request that only reads what a daemon serves.
func (d *Dialer) dialRunning() (*net.UnixConn, error) {
	return ctlsock.Connect(d.Socket, nil)
}
