package main

import (
	"fmt"
	"io"
	"sync"

	"github.com/ipn-project/ipn"
)

var oldDaemonOnce sync.Once

// noticeOldDaemon says, once, on stderr, that s's daemon is of an older
// build than this program, and how to replace it.
func noticeOldDaemon(s *ipn.Socket, stderr io.Writer) {
	v, build := s.DaemonVersion()
	if v >= ipn.ProtocolVersion {
		return
	}
	oldDaemonOnce.Do(func() {
		how := "ipn daemon --takeover replaces it without loss"
		if v <= 1 {
			how = "it predates takeovers: stop it and start this one (ipn daemon) to replace it; its networks end"
		}
		if build != "" {
			build = ", " + build
		}
		fmt.Fprintf(stderr, "ipn: the ipn daemon is an older build (protocol %d%s) than this program (protocol %d): it works, with less; %s\n",
			v, build, ipn.ProtocolVersion, how)
	})
}
