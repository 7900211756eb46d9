package daemon_test

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/wire"
)

// Two daemons served by one process share nothing: each has its own
// networks (on the same file), its own device ports and its own accounts,
// and one's stopping leaves the other's alone.
func TestTwoDaemonsShareNothing(t *testing.T) {
	needRoot(t)
	// A user (root is not limited) may have one network and one port: were
	// the accounts shared, B's network or device would be over the limit.
	const uid = 2401
	lim := daemon.Limits{Networks: 1, Ports: 1}
	a, b := serve(t, daemon.Config{Limits: lim}), serve(t, daemon.Config{Limits: lim})
	_, netFD := netFile(t, netDir(t), uid, uid, 0o700)
	bound := func(sock string) *client {
		c := dialAs(t, sock, uid, uid).hello(0)
		if err := c.bind(netFD); err != nil {
			t.Fatalf("bind as uid %d: %v", uid, err)
		}
		return c
	}

	// The same file is a network of each daemon, made by the user.
	ca, cb := bound(a.Socket), bound(b.Socket)

	// A persistent device port of A, by a name B's network knows nothing of.
	const name = "ipnstate0"
	if _, _, err := ca.request(wire.OpAttachDevice, wire.EncodeDevice(wire.DevTap, wire.DevPersist, name), newTap(t, name)); err != nil {
		t.Fatalf("attach to A: %v", err)
	}
	join := wire.EncodeDevice(0, wire.DevJoin, name)
	if _, _, err := cb.request(wire.OpAttachDevice, join); !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "no device "+name) {
		t.Fatalf("B joins A's device: %v, want ENOENT (no device %s)", err, name)
	}
	if _, _, err := bound(a.Socket).request(wire.OpAttachDevice, join); err != nil {
		t.Fatalf("A joins its device: %v", err)
	}

	// B has a device of that name too (another tap, in another namespace).
	if _, _, err := cb.request(wire.OpAttachDevice, wire.EncodeDevice(wire.DevTap, 0, name), newTap(t, name)); err != nil {
		t.Fatalf("attach to B: %v", err)
	}

	// B's end closes B's ports and sessions only.
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := bound(a.Socket).request(wire.OpAttachDevice, join); err != nil {
		t.Fatalf("A's device once B ended: %v", err)
	}
}
