package daemon_test

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/internal/wire"
)

// list reads the whole listing (of the network of fd, if fd >= 0) page by
// page, and returns it with the number of pages.
func (c *client) list(fd int) ([]wire.NetInfo, int, error) {
	c.t.Helper()
	var all []byte
	pages := 0
	for {
		var fds []int
		if fd >= 0 {
			fds = []int{fd}
		}
		res, _, err := c.request(wire.OpList, wire.U32(uint32(len(all))), fds...)
		if err != nil {
			return nil, pages, err
		}
		pages++
		total, err := wire.GetU32(res)
		if err != nil {
			c.t.Fatal(err)
		}
		if len(res)-4 > wire.ListChunk {
			c.t.Fatalf("a page of %d bytes, more than ListChunk", len(res)-4)
		}
		all = append(all, res[4:]...)
		if len(all) >= int(total) {
			break
		}
		if len(res) == 4 {
			c.t.Fatalf("empty page at %d of %d", len(all), total)
		}
	}
	var list []wire.NetInfo
	if err := json.Unmarshal(all, &list); err != nil {
		c.t.Fatalf("listing: %v", err)
	}
	return list, pages, nil
}

// The listing describes each network and its ports, sorted by path; one
// longer than a packet comes in pages that read back whole.
func TestList(t *testing.T) {
	d := serve(t, daemon.Config{})
	c := dial(t, d.Socket).hello(0)
	if list, pages, err := c.list(-1); err != nil || len(list) != 0 || pages != 1 {
		t.Fatalf("empty daemon lists %v in %d pages, %v", list, pages, err)
	}
	dir := netDir(t)
	pathA, fdA := netFile(t, dir, 0, 0, 0o751)
	pathB, fdB := netFile(t, dir, 0, 0, 0o700)
	mgrB := dial(t, d.Socket).hello(0)
	if err := mgrB.bind(fdB); err != nil {
		t.Fatal(err)
	}
	mgrA := dial(t, d.Socket).hello(0)
	for opt, v := range map[uint32]uint32{wire.OptMTU: 9000, wire.OptNumNodes: 300, wire.OptFlags: 1} {
		if err := mgrA.setU32(opt, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := mgrA.bind(fdA); err != nil {
		t.Fatal(err)
	}
	// Enough members with long descriptions for a listing of pages.
	const members = 200
	descr := strings.Repeat("d", 120)
	for i := range members {
		m := dial(t, d.Socket).hello(0)
		if err := m.setOpt(wire.OptDescr, []byte(descr)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			m.must(wire.OpShutdown, wire.U32(wire.ShutWrite))
		}
		if _, _, err := m.connect(fdA); err != nil {
			t.Fatal(err)
		}
	}
	list, pages, err := c.list(-1)
	if err != nil {
		t.Fatal(err)
	}
	if pages < 2 {
		t.Errorf("listing of %d members in %d page, want pages", members, pages)
	}
	if len(list) != 2 || list[0].Path != pathA || list[1].Path != pathB {
		t.Fatalf("listing %d networks, want %s and %s in order", len(list), pathA, pathB)
	}
	a := list[0]
	var st unix.Stat_t
	if err := unix.Stat(pathA, &st); err != nil {
		t.Fatal(err)
	}
	if a.Proto != "hub" || a.Tag != 1 || a.MTU != 9000 || a.NumPorts != 300 || a.Mode != 0o751 ||
		a.Dev != uint64(st.Dev) || a.Ino != st.Ino || len(a.Flags) != 1 || a.Flags[0] != "lossless" {
		t.Errorf("network %+v", a)
	}
	if len(a.PortsInfo) != members || a.Readers != members || a.Writers != members-1 {
		t.Fatalf("%d ports, %d readers, %d writers; want %d, %d, %d", len(a.PortsInfo), a.Readers, a.Writers, members, members, members-1)
	}
	for _, p := range a.PortsInfo {
		if p.Descr != descr || !p.Read || !strings.HasPrefix(p.Peer, "pid ") {
			t.Fatalf("port %+v", p)
		}
	}
	// One network, by its file.
	one, _, err := c.list(fdB)
	if err != nil || len(one) != 1 || one[0].Path != pathB || len(one[0].PortsInfo) != 0 {
		t.Fatalf("listing of %s: %+v %v", pathB, one, err)
	}
	_, none := netFile(t, dir, 0, 0, 0o777)
	_, _, err = c.list(none)
	wantErr(t, "listing of a file without a network", err, syscall.ENOENT, "no network on this file")
	// An offset is read in the listing made at offset 0, only.
	_, _, err = dial(t, d.Socket).hello(0).request(wire.OpList, wire.U32(10))
	wantErr(t, "offset without a listing", err, syscall.EINVAL, "offset 10 past the end")
	_, _, err = c.request(wire.OpList, []byte{1})
	wantErr(t, "short list request", err, syscall.EINVAL, "malformed")
	// A removed network file is listed as having no path here.
	if err := os.Remove(pathB); err != nil {
		t.Fatal(err)
	}
	list, _, err = c.list(-1)
	if err != nil || len(list) != 2 || !strings.HasPrefix(list[0].Path, "(no path here) ") {
		t.Errorf("after removing %s: %v, %v", pathB, list, err)
	}
}

// Another user sees only the networks whose file it can reach, and not the
// peers of a network it does not manage.
func TestListAsAnotherUser(t *testing.T) {
	d := serve(t, daemon.Config{})
	dir := netDir(t)
	hidden := netDir(t)
	if err := os.Chmod(hidden, 0o700); err != nil {
		t.Fatal(err)
	}
	pathR, fdR := netFile(t, dir, 0, 0, 0o644)
	_, fdH := netFile(t, hidden, 0, 0, 0o777)
	for _, fd := range []int{fdR, fdH} {
		if err := dial(t, d.Socket).hello(0).bind(fd); err != nil {
			t.Fatal(err)
		}
		member(t, d.Socket, fd)
	}
	u := dialAs(t, d.Socket, 2201, 2201).hello(0)
	list, _, err := u.list(-1)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Path != pathR {
		t.Fatalf("uid 2201 lists %+v, want only %s", list, pathR)
	}
	if p := list[0].PortsInfo[0]; p.Peer != "" {
		t.Errorf("a user without x sees peer %q", p.Peer)
	}
	// By its descriptor, a network is listed even if its path is hidden.
	one, _, err := u.list(fdH)
	if err != nil || len(one) != 1 {
		t.Errorf("listing by descriptor: %v %v", one, err)
	}
}

// Policy options: read with r, set with x, an unknown one named with its
// policy, and a value the policy refuses is refused with its text.
func TestPolicyOptions(t *testing.T) {
	d := serve(t, daemon.Config{})
	_, fd := rootNet(t)
	c := dial(t, d.Socket).hello(0)
	_, _, err := c.request(wire.OpPolicy, wire.EncodePolicy(false, "loop.interval", ""), fd)
	wantErr(t, "policy option with no network", err, syscall.ECONNREFUSED, "no network on this file")
	if err := c.bind(fd); err != nil {
		t.Fatal(err)
	}
	get := func(name string) (string, error) {
		res, _, err := c.request(wire.OpPolicy, wire.EncodePolicy(false, name, ""), fd)
		if err != nil {
			return "", err
		}
		n, err := wire.GetU32(res)
		if err != nil || int(n) != len(res)-4 {
			t.Fatalf("policy answer %q: %v", res, err)
		}
		return string(res[4:]), nil
	}
	if v, err := get("loop.interval"); err != nil || v != "2s" {
		t.Errorf("loop.interval %q %v, want 2s", v, err)
	}
	if _, _, err := c.request(wire.OpPolicy, wire.EncodePolicy(true, "loop.interval", "250ms"), fd); err != nil {
		t.Fatal(err)
	}
	if v, err := get("loop.interval"); err != nil || v != "250ms" {
		t.Errorf("loop.interval %q %v after set, want 250ms", v, err)
	}
	if v, err := get("loop.blocked"); err != nil || v != "[]" {
		t.Errorf("loop.blocked %q %v", v, err)
	}
	_, err = get("nonesuch")
	wantErr(t, "unknown option", err, syscall.ENOPROTOOPT, "hub option", "nonesuch")
	_, _, err = c.request(wire.OpPolicy, wire.EncodePolicy(true, "loop.interval", "1ns"), fd)
	wantErr(t, "interval out of range", err, syscall.EINVAL, "hub option")
	_, _, err = c.request(wire.OpPolicy, []byte{0, 0}, fd)
	wantErr(t, "empty name", err, syscall.EINVAL, "malformed")
	_, _, err = c.request(wire.OpPolicy, wire.EncodePolicy(false, "loop.interval", ""))
	wantErr(t, "no descriptor", err, syscall.EINVAL, "want 1 descriptor")
	_, _, err = c.request(wire.OpPolicy, wire.EncodePolicy(false, "loop.interval", "ab"), fd)
	wantErr(t, "bad offset", err, syscall.EINVAL)

	// Another user with r but not x reads and may not set.
	if err := os.Chmod(netPath(t, fd), 0o774); err != nil {
		t.Fatal(err)
	}
	u := dialAs(t, d.Socket, 2202, 2202).hello(0)
	if _, _, err := u.request(wire.OpPolicy, wire.EncodePolicy(false, "loop.interval", ""), fd); err != nil {
		t.Errorf("read with r: %v", err)
	}
	_, _, err = u.request(wire.OpPolicy, wire.EncodePolicy(true, "loop.interval", "1s"), fd)
	wantErr(t, "set without x", err, syscall.EACCES, "managing needs x", "r--")
}

// netPath returns the path of the file of descriptor fd.
func netPath(t testing.TB, fd int) string {
	t.Helper()
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
