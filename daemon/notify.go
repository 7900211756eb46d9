package daemon

import (
	"net"
	"os"
	"strconv"
)

// notifySystemd tells systemd, when it started the daemon (NOTIFY_SOCKET,
// sd_notify(3)), that the daemon serves, and which process it is now: a
// takeover's new daemon becomes the service's main process (the unit
// needs NotifyAccess=all, as a reload by ipn daemon --takeover runs it
// outside the main process). Without systemd it does nothing.
func notifySystemd() error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	os.Unsetenv("NOTIFY_SOCKET") // for this daemon only, not what it starts
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
