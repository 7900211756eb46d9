package ipn

import (
	"bytes"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/wire"
)

// fragSockPair returns a sockPath of a network of MTU 64 MiB on one end of
// a socketpair and the daemon's end.
func fragSockPair(t *testing.T) (*sockPath, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		sockio.SizeFor(fd, wire.FragMTU)
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	p := newSockPath(conn(fds[0]))
	p.useMTU(64 << 20)
	return p, conn(fds[1])
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>10)
	}
	return b
}

// The client trusts the daemon's fragments no more than the daemon trusts
// its: a packet that breaks the rules is dropped, a message left
// unfinished is dropped when the next begins (a daemon that handed the
// port over sends it again whole), and the messages that follow the rules
// arrive whole; a short buffer truncates; an alloc makes a buffer of the
// message's size.
func TestSockPathFragmentsFromTheDaemon(t *testing.T) {
	p, d := fragSockPair(t)
	msg := pattern(3<<20 + 11)
	recv1 := func(buf []byte, alloc func(int) []byte) Message {
		t.Helper()
		ms := []Message{{Buf: buf}}
		if _, err := p.recvAlloc(ms, time.Now().Add(10*time.Second), p.gen(), alloc); err != nil {
			t.Fatalf("recv: %v", err)
		}
		return ms[0]
	}
	// The daemon's side, as a goroutine: the socket holds 4 MiB.
	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			for _, f := range []struct {
				total, off int
				b          []byte
			}{
				{0, -1, []byte{1, 2, 3}},                // shorter than a header
				{65 << 20, 0, msg[:1<<20]},              // over the MTU
				{len(msg), 1 << 20, msg[1<<20 : 2<<20]}, // nothing under way
				{len(msg), 0, msg[:1<<20]},              // unfinished...
				{len(msg), 0, msg[:1<<20]},              // ...begun again
				{len(msg), 2 << 20, msg[2<<20 : 3<<20]}, // out of order: both dropped
				{10, 0, []byte("0123456789")},           // a message of one packet
				{len(msg), 0, msg[:1<<20]},              // then a good one
				{len(msg), 1 << 20, msg[1<<20 : 2<<20]},
				{len(msg), 2 << 20, msg[2<<20 : 3<<20]},
				{len(msg), 3 << 20, msg[3<<20:]},
			} {
				pkt := f.b
				if f.off >= 0 {
					pkt = make([]byte, wire.FragHeaderLen, wire.FragHeaderLen+len(f.b))
					wire.PutFragHeader(pkt, f.total, f.off)
					pkt = append(pkt, f.b...)
				}
				if _, err := d.Write(pkt); err != nil {
					return err
				}
			}
			return nil
		}()
	}()
	buf := make([]byte, 4<<20)
	if m := recv1(buf, nil); string(m.Buf[:m.N]) != "0123456789" || m.Flags != 0 {
		t.Fatalf("first: %q, flags %v; want the message of one packet", m.Buf[:min(m.N, 16)], m.Flags)
	}
	if m := recv1(buf, nil); !bytes.Equal(m.Buf[:m.N], msg) || m.Flags != 0 {
		t.Fatalf("second: %d bytes, flags %v; want the message of four fragments", m.N, m.Flags)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// Truncated by a short buffer; then into a buffer alloc makes.
	go func() {
		w := sockio.NewFragWriter(rawConn(d), wire.MaxFragment)
		w.Write([][]byte{msg, msg})
	}()
	if m := recv1(buf[:1<<20+5], nil); !bytes.Equal(m.Buf[:m.N], msg[:1<<20+5]) || m.Flags != MsgTrunc {
		t.Fatalf("into a short buffer: %d bytes, flags %v; want %d, MsgTrunc", m.N, m.Flags, 1<<20+5)
	}
	var asked int
	m := recv1(nil, func(n int) []byte { asked = n; return make([]byte, n) })
	if asked != len(msg) || len(m.Buf) != len(msg) || !bytes.Equal(m.Buf[:m.N], msg) {
		t.Fatalf("alloc asked for %d bytes, got %d bytes, want %d", asked, m.N, len(msg))
	}
}

func rawConn(c *net.UnixConn) interface {
	Control(func(uintptr)) error
	Read(func(uintptr) bool) error
	Write(func(uintptr) bool) error
} {
	raw, _ := c.SyscallConn()
	return raw
}
