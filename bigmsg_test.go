package ipn_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// bigNet binds a hub of MTU mtu (and flags) and returns its path, the
// binder, and a member that declined the fast path.
func bigNet(t *testing.T, mtu int, flags ipn.Flags) (string, *ipn.Socket, *ipn.Socket) {
	t.Helper()
	path, a := bindNet(t, func(s *ipn.Socket) {
		if err := s.SetMTU(mtu); err != nil {
			t.Fatal(err)
		}
		if flags != 0 {
			s.SetFlags(flags)
		}
	})
	b := member(t, path, func(s *ipn.Socket) { s.SetFastPath(false) })
	return path, a, b
}

// bigPayload returns n random bytes with seq in the first 4.
func bigPayload(r *rand.Rand, n int, seq uint32) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	if n >= 4 {
		binary.BigEndian.PutUint32(b, seq)
	}
	return b
}

// recvBig receives one ordinary message into buf, failing the test on
// error or truncation.
func recvBig(t *testing.T, s *ipn.Socket, buf []byte) []byte {
	t.Helper()
	s.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, flags, err := s.Recv(buf)
	if err != nil || flags != 0 {
		t.Fatalf("recv: %d bytes, flags %v, %v", n, flags, err)
	}
	return buf[:n]
}

// packetMTU is the largest MTU whose messages go in one packet of the
// data socket each (wire.FragMTU); a larger one's go in fragments.
const packetMTU = 4 << 20

// A network of MTU 4 MiB, the most one packet of the data socket carries,
// carries a message of the MTU between a member that asked for the fast
// path (a big network gives it the socket) and one on the socket path,
// both ways, intact.
func TestBigMTUMessageCrossesPaths(t *testing.T) {
	_, fast, slow := bigNet(t, packetMTU, 0)
	if mtu, err := fast.MTU(); err != nil || mtu != packetMTU {
		t.Fatalf("MTU %d, %v: want %d", mtu, err, packetMTU)
	}
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, packetMTU)
	for _, size := range []int{1 << 20, packetMTU} {
		for _, dir := range []struct {
			name     string
			from, to *ipn.Socket
		}{{"fast to socket", fast, slow}, {"socket to fast", slow, fast}} {
			msg := bigPayload(r, size, 7)
			start := time.Now()
			if err := dir.from.Send(msg); err != nil {
				t.Fatalf("%s: send %d bytes: %v", dir.name, size, err)
			}
			got := recvBig(t, dir.to, buf)
			took := time.Since(start)
			if !bytes.Equal(got, msg) {
				t.Fatalf("%s: got %d bytes, want %d, not the same", dir.name, len(got), size)
			}
			t.Logf("%s, %d MiB: %v one way, %.0f MB/s", dir.name, size>>20, took,
				float64(size)/took.Seconds()/1e6)
		}
	}
}

// Small and big messages from one sender, interleaved, arrive in order;
// in a lossless network none is lost.
func TestBigMTUOrderLossless(t *testing.T) {
	_, a, b := bigNet(t, packetMTU, ipn.Lossless)
	r := rand.New(rand.NewPCG(3, 4))
	sizes := []int{10, 2 << 20, 100, 70000, packetMTU, 1, 65536, 65537, 3 << 20, 1514}
	const rounds = 4
	var want [][]byte
	for i := 0; i < rounds*len(sizes); i++ {
		want = append(want, bigPayload(r, max(sizes[i%len(sizes)], 4), uint32(i)))
	}
	errc := make(chan error, 1)
	go func() {
		for _, m := range want {
			if err := a.Send(m); err != nil {
				errc <- err
				b.SetReadDeadline(time.Unix(1, 0)) // fail the reader now
				return
			}
		}
		errc <- nil
	}()
	buf := make([]byte, packetMTU)
	for i, w := range want {
		got := recvBig(t, b, buf)
		if len(got) < 4 || binary.BigEndian.Uint32(got) != uint32(i) {
			t.Fatalf("message %d: got %d bytes, seq %x: out of order or lost", i, len(got), got[:min(4, len(got))])
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("message %d: %d bytes, want %d, not the same", i, len(got), len(w))
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	expectNothing(t, b)
}

// A message over the MTU is refused with EMSGSIZE (EOVERFLOW, as IPN has
// it) and an error that says so; the socket goes on.
func TestBigMTUOverMTURefused(t *testing.T) {
	_, a, b := bigNet(t, 1<<20, 0)
	err := a.Send(make([]byte, 1<<20+1))
	if !errors.Is(err, syscall.EMSGSIZE) || !errors.Is(err, syscall.EOVERFLOW) || !strings.Contains(err.Error(), "MTU") {
		t.Fatalf("send over the MTU: %v, want EMSGSIZE saying the MTU", err)
	}
	msg := bytes.Repeat([]byte{9}, 1<<20)
	if err := a.Send(msg); err != nil {
		t.Fatal(err)
	}
	if got := recvBig(t, b, make([]byte, 2<<20)); !bytes.Equal(got, msg) {
		t.Fatalf("after a refusal: got %d bytes", len(got))
	}
	s, err := ipn.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetMTU(ipn.MaxMTU + 1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("MTU over MaxMTU: %v, want EINVAL", err)
	}
}

// sum is the SHA-256 of b, to compare messages of many MiB.
func sum(b []byte) [32]byte { return sha256.Sum256(b) }

// A network's MTU goes to MaxMTU (64 MiB), over what one packet of the data
// socket carries: messages of 32 MiB and of the MTU cross the socket path
// in fragments, both ways, intact, between a member that asked for the
// fast path (a big network gives it the socket) and one that did not.
func TestHugeMTUMessageCrossesSocketPath(t *testing.T) {
	_, fast, slow := bigNet(t, ipn.MaxMTU, ipn.Lossless)
	if mtu, err := fast.MTU(); err != nil || mtu != ipn.MaxMTU {
		t.Fatalf("MTU %d, %v: want %d", mtu, err, ipn.MaxMTU)
	}
	r := rand.New(rand.NewPCG(5, 6))
	buf := make([]byte, ipn.MaxMTU)
	for _, size := range []int{32 << 20, ipn.MaxMTU} {
		msg := bigPayload(r, size, 7)
		want := sum(msg)
		for _, dir := range []struct {
			name     string
			from, to *ipn.Socket
		}{{"to the member on the socket path", fast, slow}, {"from it", slow, fast}} {
			start := time.Now()
			errc := make(chan error, 1)
			go func() { errc <- dir.from.Send(msg) }()
			got := recvBig(t, dir.to, buf)
			took := time.Since(start)
			if err := <-errc; err != nil {
				t.Fatalf("%s: send %d MiB: %v", dir.name, size>>20, err)
			}
			if len(got) != size || sum(got) != want {
				t.Fatalf("%s: got %d bytes, want %d, not the same", dir.name, len(got), size)
			}
			t.Logf("%d MiB %s: %v, %.0f MB/s", size>>20, dir.name, took, float64(size)/took.Seconds()/1e6)
		}
	}
	expectNothing(t, slow)
}

// On a network of MTU 64 MiB, small messages and messages of several
// fragments from one sender, interleaved, arrive in order and whole; the
// network is lossless: none is lost. A buffer shorter than a message of
// several fragments truncates it, and the next arrives whole.
func TestHugeMTUOrderLossless(t *testing.T) {
	_, a, b := bigNet(t, ipn.MaxMTU, ipn.Lossless)
	r := rand.New(rand.NewPCG(7, 8))
	sizes := []int{10, 32 << 20, 100, 70000, 1 << 20, 1, 1<<20 + 1, 65536, packetMTU + 1, 1514, 5<<20 + 3, 7}
	var want [][]byte
	for i, size := range sizes {
		want = append(want, bigPayload(r, max(size, 4), uint32(i)))
	}
	errc := make(chan error, 1)
	go func() {
		for _, m := range want {
			if err := a.Send(m); err != nil {
				errc <- err
				b.SetReadDeadline(time.Unix(1, 0)) // fail the reader now
				return
			}
		}
		errc <- nil
	}()
	buf := make([]byte, 32<<20)
	for i, w := range want {
		got := recvBig(t, b, buf)
		if len(got) < 4 || binary.BigEndian.Uint32(got) != uint32(i) {
			t.Fatalf("message %d: got %d bytes, seq %x: out of order or lost", i, len(got), got[:min(4, len(got))])
		}
		if !bytes.Equal(got, w) {
			t.Fatalf("message %d: %d bytes, want %d, not the same", i, len(got), len(w))
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// Truncated: a 3 MiB message into 1 MiB, then the next whole.
	long, next := bigPayload(r, 3<<20, 100), bigPayload(r, 2<<20, 101)
	go func() {
		if err := a.Send(long); err == nil {
			a.Send(next)
		}
	}()
	b.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, flags, err := b.Recv(buf[:1<<20])
	if err != nil || flags != ipn.MsgTrunc || !bytes.Equal(buf[:n], long[:1<<20]) {
		t.Fatalf("a 3 MiB message into 1 MiB: %d bytes, flags %v, %v: want its first MiB, MsgTrunc", n, flags, err)
	}
	if got := recvBig(t, b, buf); !bytes.Equal(got, next) {
		t.Fatalf("after a truncated message: %d bytes, not the next message", len(got))
	}
	expectNothing(t, b)
}

// A Recv of a message of many fragments that its read deadline (or an
// interruption: a new deadline) stops in the middle keeps what it has:
// the next Recv returns the whole message.
func TestHugeMTURecvInterrupted(t *testing.T) {
	_, a, b := bigNet(t, ipn.MaxMTU, ipn.Lossless)
	msg := bigPayload(rand.New(rand.NewPCG(9, 10)), 48<<20, 1)
	errc := make(chan error, 1)
	go func() { errc <- a.Send(msg) }()
	buf := make([]byte, ipn.MaxMTU)
	// Interrupt the Recv again and again while the message comes in.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				b.SetReadDeadline(time.Now().Add(time.Millisecond))
			}
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for stops := 0; time.Now().Before(deadline); {
		n, flags, err := b.Recv(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			stops++
			continue
		}
		t.Logf("%d MiB after %d Recvs stopped by their deadline", n>>20, stops)
		if err != nil || flags != 0 || n != len(msg) || sum(buf[:n]) != sum(msg) {
			t.Fatalf("Recv: %d bytes, flags %v, %v: want the whole message, %d bytes", n, flags, err, len(msg))
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("no message in 30s")
}
