// Package autostart lets a program that joins networks start its own
// daemon when none runs: imported (for its effect alone), it makes
// ipn.DefaultDialer start the program itself, re-executed, as the daemon,
// serving the policies linked into it, which lives until it has had no
// clients for 30 s (a service, ipn daemon, serves until stopped); ps shows
// it as ipn daemon, whatever the program. The ipn command imports it; so
// may any program that must work on a machine where nothing was set up.
//
//	import _ "github.com/ipn-project/ipn/daemon/autostart"
//
// Without it a program needs a daemon already running (ipn daemon, or a
// system service) and ipn.NewSocket fails with ipn.ErrNoDaemon otherwise.
//
// The re-executed program becomes the daemon in this package's init, so
// it serves the policies registered by then (the built-in ones, and those
// of packages initialised before this one), not ones registered in main.
package autostart

import (
	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
)

func init() {
	// A daemon this package started is this very program, re-executed:
	// it serves, and never returns from here.
	daemon.RunIfChild()
	ipn.DefaultDialer.Start = daemon.Start
}
