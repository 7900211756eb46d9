package daemon

import (
	"net"
	"os"
	"strconv"
)

// notifySystemd tells systemd (path is NOTIFY_SOCKET's, sd_notify(3); ""
// without systemd: nothing to do) that the daemon serves, and which
// process it is now: a takeover's new daemon becomes the service's main
// process (the unit needs NotifyAccess=all, as a reload by ipn daemon
// --takeover runs it outside the main process).
func notifySystemd(path string) error {
	if path == "" {
		return nil
	}
	// An abstract socket.
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid()) + "\n"))
	return err
}
