package ipn_test

import (
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// counter receives from s until it has seen want messages or stop closes,
// checking that sequence numbers arrive in order without gaps.
type counter struct {
	mu   sync.Mutex
	got  int
	err  error
	done chan struct{}
}

func count(t *testing.T, s *ipn.Socket, want int) *counter {
	c := &counter{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		buf := make([]byte, 2048)
		for i := 0; i < want; i++ {
			s.SetReadDeadline(time.Now().Add(20 * time.Second))
			n, _, err := s.Recv(buf)
			if err != nil {
				c.fail(err)
				return
			}
			if seq := binary.BigEndian.Uint32(buf[:n]); seq != uint32(i) {
				c.fail(errors.New("out of order or lost: got " + itoa(int(seq)) + " want " + itoa(i)))
				return
			}
			c.mu.Lock()
			c.got++
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *counter) fail(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

func (c *counter) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got
}

func itoa(i int) string { return strconv.Itoa(i) }

func seqMsg(i int) []byte {
	return binary.BigEndian.AppendUint32(make([]byte, 0, 64), uint32(i))[:4]
}

func TestLossySlowReceiverDoesNotSlowOthers(t *testing.T) {
	path, sender := bindNet(t, func(s *ipn.Socket) {
		s.SetMsgPoolSize(32)
		s.Shutdown(ipn.ShutRead)
	})
	const fast, total, burst = 3, 4000, 16
	var counters []*counter
	for i := 0; i < fast; i++ {
		r := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
		counters = append(counters, count(t, r, total))
	}
	slow := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) }) // never reads
	// Bursts smaller than a receiver's pool; the fast ones catch up in
	// between, the slow one never does. The sender must never block.
	// Messages of 1 KiB: 4 MB in all, more than a hub's shared log holds
	// (1 MiB), which a slow reader of the fast path has for a queue.
	sender.SetWriteDeadline(time.Now().Add(30 * time.Second))
	msg := make([]byte, 1024)
	for i := 0; i < total; i++ {
		if err := sender.Send(append(seqMsg(i), msg[4:]...)); err != nil {
			t.Fatalf("send %d: %v (the sender was slowed)", i, err)
		}
		if (i+1)%burst == 0 {
			for j, c := range counters {
				waitFor(t, 20*time.Second, "fast receiver "+itoa(j), func() bool { return c.n() == i+1 || c.err != nil })
			}
		}
	}
	for i, c := range counters {
		<-c.done
		if c.err != nil || c.got != total {
			t.Fatalf("fast receiver %d got %d of %d: %v", i, c.got, total, c.err)
		}
	}
	nets, err := ipn.List(path)
	if err != nil {
		t.Fatal(err)
	}
	st := portByNum(nets[0], slow.Port())
	if st.Drops == 0 {
		t.Fatalf("the slow receiver dropped nothing: %+v", st)
	}
	// What is neither delivered nor dropped waits in the slow port's queue
	// (at most the pool) or in the batch its blocked writer holds; in the
	// fast path's shared log it counts as delivered.
	if accounted := st.Drops + st.MsgsOut; accounted > total || accounted < total-2*32 {
		t.Fatalf("slow receiver: %d delivered + %d dropped, of %d sent", st.MsgsOut, st.Drops, total)
	}
}

func TestLosslessBlocksSenderNeverDrops(t *testing.T) {
	path, sender := bindNet(t, func(s *ipn.Socket) {
		s.SetFlags(ipn.Lossless)
		s.SetMsgPoolSize(8)
		s.Shutdown(ipn.ShutRead)
	})
	quick := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
	slow := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
	const total = 3000
	qc := count(t, quick, total)

	// While the slow receiver reads nothing, the sender must block: with a
	// short write deadline, a send eventually times out.
	sent := 0
	sender.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	for ; sent < total; sent++ {
		err := sender.Send(seqMsg(sent))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if sent == total {
		t.Fatalf("sender never blocked while a receiver of a lossless network read nothing")
	}
	// Now the slow receiver reads; the sender goes on from where it was.
	sc := count(t, slow, total)
	sender.SetWriteDeadline(time.Now().Add(60 * time.Second))
	for ; sent < total; sent++ {
		if err := sender.Send(seqMsg(sent)); err != nil {
			t.Fatalf("send %d: %v", sent, err)
		}
	}
	for name, c := range map[string]*counter{"quick": qc, "slow": sc} {
		<-c.done
		if c.err != nil || c.got != total {
			t.Fatalf("%s receiver got %d of %d: %v", name, c.got, total, c.err)
		}
	}
	nets, _ := ipn.List(path)
	for _, p := range nets[0].PortsInfo {
		if p.Drops != 0 {
			t.Fatalf("port %d dropped %d in a lossless network", p.Port, p.Drops)
		}
	}
}

func TestLosslessDoesNotStallOtherNetworks(t *testing.T) {
	path, sender := bindNet(t, func(s *ipn.Socket) {
		s.SetFlags(ipn.Lossless)
		s.SetMsgPoolSize(2)
	})
	member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) }) // never reads
	// Fill the stuck network until its sender blocks.
	sender.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	for i := 0; ; i++ {
		if err := sender.Send(seqMsg(i)); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
	}
	// Another network and the management calls still work.
	opath, a := bindNet(t, nil)
	b := member(t, opath, nil)
	a.Send([]byte("elsewhere"))
	if got := recvString(t, b); got != "elsewhere" {
		t.Fatalf("got %q", got)
	}
	if _, err := ipn.List(""); err != nil {
		t.Fatalf("list while a network is stuck: %v", err)
	}
	if err := sender.ChangeNumNodes(80); err != nil {
		t.Fatalf("manage the stuck network: %v", err)
	}
}

// A receiver that stops reading holds a lossless sender; when it dies, the
// sender goes on at once.
func TestLosslessDeadReceiverReleasesSender(t *testing.T) {
	path, sender := bindNet(t, func(s *ipn.Socket) {
		s.SetFlags(ipn.Lossless)
		s.SetMsgPoolSize(4)
		s.Shutdown(ipn.ShutRead)
	})
	idle := helper(t, nil, "idle", path)
	idle.expect("ready", waitProcs)
	sender.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	for i := 0; ; i++ {
		err := sender.Send(seqMsg(i))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 1_000_000 {
			t.Fatal("sender never blocked")
		}
	}
	idle.cmd.Process.Kill()
	sender.SetWriteDeadline(time.Now().Add(15 * time.Second))
	for i := 0; i < 100; i++ {
		if err := sender.Send(seqMsg(i)); err != nil {
			t.Fatalf("sender still blocked after the receiver died: %v", err)
		}
	}
}
