package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// seqPair returns both ends of a SOCK_SEQPACKET socketpair.
func seqPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "seq")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// A packet and its descriptors cross a connection whole; a packet longer
// than the buffer is an error, and an empty one (the peer's close) is EOF.
func TestSendRecv(t *testing.T) {
	a, b := seqPair(t)
	if Poll(b, unix.POLLIN)&unix.POLLIN != 0 {
		t.Fatal("readable before anything was sent")
	}
	p := make([]int, 2)
	if err := unix.Pipe2(p, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	pkt := Packet(OpConnect, []byte("ab"), []byte("cd"))
	if err := Send(a, pkt, p[0], p[1]); err != nil {
		t.Fatal(err)
	}
	if Poll(b, unix.POLLIN)&unix.POLLIN == 0 {
		t.Fatal("not readable after a send")
	}
	got, fds, err := Recv(b, make([]byte, 64))
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 2 {
		t.Fatalf("%d descriptors, want 2", len(fds))
	}
	// The descriptors are the pipe's: what goes in one end comes out of
	// the other.
	unix.Write(fds[1], []byte("z"))
	buf := make([]byte, 1)
	if n, _ := unix.Read(p[0], buf); n != 1 || buf[0] != 'z' {
		t.Errorf("passed descriptor is not the pipe's")
	}
	closeAll(fds)
	op, body, err := Split(got)
	if err != nil || op != OpConnect || string(body) != "abcd" {
		t.Fatalf("Split: %d %q %v", op, body, err)
	}

	if err := Send(a, Packet(OpList, make([]byte, 100))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Recv(b, make([]byte, 16)); !errors.Is(err, ErrMalformed) {
		t.Errorf("long packet: %v, want ErrMalformed", err)
	}
	a.Close()
	if _, _, err := Recv(b, make([]byte, 16)); !IsEOF(err) {
		t.Errorf("after close: %v, want EOF", err)
	}
	if !IsEOF(errEOF) || IsEOF(errors.New("x")) {
		t.Error("IsEOF")
	}
}

// A reply carries the errno and the text of a failure, cut to
// maxErrorText, and a success's body.
func TestReply(t *testing.T) {
	_, body, _ := Split(Reply(OpBind, nil, []byte("ok")))
	res, err := SplitReply(body)
	if err != nil || string(res) != "ok" {
		t.Fatalf("success: %q %v", res, err)
	}
	long := make([]byte, 3000)
	for i := range long {
		long[i] = 'x'
	}
	pkt := Reply(OpBind, fmt.Errorf("%s: %w", long, syscall.EACCES))
	op, body, _ := Split(pkt)
	if op != OpBind|ReplyBit {
		t.Errorf("op %#x", op)
	}
	_, err = SplitReply(body)
	var we *Error
	if !errors.As(err, &we) || we.Errno != syscall.EACCES || len(we.Text) != maxErrorText || !errors.Is(err, syscall.EACCES) {
		t.Fatalf("failure: %v", err)
	}
	if (&Error{Errno: syscall.ENOENT}).Error() != syscall.ENOENT.Error() {
		t.Error("an Error without text reads as its errno")
	}
	// A failure is never sent as success.
	if Errno(errors.New("plain")) != syscall.EINVAL || Errno(nil) != 0 || Errno(syscall.Errno(0)) != syscall.EINVAL {
		t.Error("Errno")
	}
	if _, err := SplitReply([]byte{1}); !errors.Is(err, ErrMalformed) {
		t.Errorf("short reply: %v", err)
	}
}

// ConnectReply round-trips every side combination.
func TestConnectReplyRoundTrip(t *testing.T) {
	for _, r := range []ConnectReply{
		{Port: 1, MTU: 1514, Proto: 1, CanRead: true, CanWrite: true},
		{Port: 65535, MTU: 9000, Proto: 2, CanRead: true},
		{Port: 0, MTU: 1, Proto: 3, CanWrite: true},
		{},
	} {
		got, err := DecodeConnectReply(r.Encode())
		if err != nil || got != r {
			t.Errorf("%+v round-trips to %+v %v", r, got, err)
		}
	}
}

// A listing's JSON reads back as it was, and its optional fields are
// left out when empty, as docs/protocol.md shows.
func TestNetInfoJSON(t *testing.T) {
	in := []NetInfo{{Path: "/tmp/n", Proto: "hub", Tag: 1, UID: 5, Mode: 0o750, Dev: 3, Ino: 4, MTU: 1514, NumPorts: 8,
		Flags: []string{"lossless"}, Readers: 1, Writers: 1,
		PortsInfo: []PortInfo{{Port: 2, Descr: "d", Read: true, MsgsIn: 9, Persist: true, Monitor: true, Link: true}, {Port: 3}}}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out []NetInfo
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].PortsInfo[0] != in[0].PortsInfo[0] || out[0].PortsInfo[1] != in[0].PortsInfo[1] || out[0].Path != "/tmp/n" {
		t.Fatalf("round trip: %+v", out)
	}
	var raw []map[string]any
	json.Unmarshal(b, &raw)
	ports := raw[0]["port_list"].([]any)
	if _, ok := ports[1].(map[string]any)["descr"]; ok {
		t.Error("an empty description is written")
	}
	for _, k := range []string{"path", "proto", "tag", "mode", "dev", "ino", "mtu", "ports", "pool", "flags", "readers", "writers"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
}
