package shm

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/shmring"
)

// member maps the endpoint's rings as the member would, with its wakers.
type member struct {
	r                                *shmring.Region
	tx                               *shmring.Producer
	rx                               *shmring.Consumer
	txData, txSpace, rxData, rxSpace *shmring.Waker
}

func newMember(t *testing.T, e *Endpoint) *member {
	t.Helper()
	fds, err := e.DupFDs()
	if err != nil {
		t.Fatal(err)
	}
	m := &member{}
	for i, w := range []**shmring.Waker{&m.txData, &m.txSpace, &m.rxData, &m.rxSpace} {
		if *w, err = shmring.WakerFromFD(fds[1+i]); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { (*w).Close() })
	}
	if m.r, err = shmring.Map(fds[0]); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.r.Close() })
	m.tx, m.rx = m.r.Producer(shmring.ToDaemon), m.r.Consumer(shmring.ToMember)
	return m
}

// send pushes msg and wakes the daemon if it sleeps.
func (m *member) send(t *testing.T, msg string) {
	t.Helper()
	if ok, err := m.tx.Push([]byte(msg)); !ok || err != nil {
		t.Fatalf("push %q: %v %v", msg, ok, err)
	}
	if m.tx.ConsumerWaiting() {
		m.txData.Wake()
	}
}

// read runs e.Read in a goroutine and returns what it got.
func read(e *Endpoint) <-chan []string {
	c := make(chan []string, 1)
	go func() {
		bufs := [][]byte{make([]byte, 2048), make([]byte, 2048), make([]byte, 2048)}
		sizes := make([]int, len(bufs))
		n, err := e.Read(bufs, sizes)
		var got []string
		for i := range n {
			got = append(got, string(bufs[i][:sizes[i]]))
		}
		if err != nil {
			got = append(got, "error: "+err.Error())
		}
		c <- got
	}()
	return c
}

func wait[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
		panic("unreachable")
	}
}

// What the member sends, the endpoint reads, in order, waking from sleep;
// once the member is gone the rest is read, then io.EOF.
func TestReadAndPeerGone(t *testing.T) {
	e, err := New(1514, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	m := newMember(t, e)
	got := read(e) // sleeps: nothing sent yet
	m.send(t, "one")
	if g := wait(t, got); len(g) != 1 || g[0] != "one" {
		t.Fatalf("got %q", g)
	}
	m.send(t, "two")
	m.send(t, "three")
	e.PeerGone()
	if g := wait(t, read(e)); len(g) != 2 || g[0] != "two" || g[1] != "three" {
		t.Fatalf("got %q", g)
	}
	if g := wait(t, read(e)); len(g) != 1 || g[0] != "error: "+io.EOF.Error() {
		t.Fatalf("after the member went: %q", g)
	}
}

// A lossy ring drops what does not fit; a lossless one makes the writer
// wait until the member reads, or until Close.
func TestWriteDirect(t *testing.T) {
	lossy, err := New(1514, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lossy.Close()
	newMember(t, lossy)
	written := 0
	for i := 0; i < 600; i++ {
		if lossy.WriteDirect([]byte("m")) {
			written++
		}
	}
	if written != 512 {
		t.Fatalf("lossy: %d of 600 written into 512 slots", written)
	}

	lossless, err := New(1514, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := newMember(t, lossless)
	for i := 0; i < 512; i++ {
		lossless.WriteDirect([]byte("m"))
	}
	done := make(chan bool, 1)
	go func() { done <- lossless.WriteDirect([]byte("waits")) }()
	select {
	case <-done:
		t.Fatal("a lossless write into a full ring did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	buf := make([]byte, 100)
	m.rx.Pop(buf)
	m.rx.Release()
	if m.rx.ProducerWaiting() {
		m.rxSpace.Wake()
	}
	if !wait(t, done) {
		t.Fatal("the waiting write was dropped")
	}
	go func() { done <- lossless.WriteDirect([]byte("waits again")) }()
	lossless.Close()
	if wait(t, done) {
		t.Fatal("a write into a closed endpoint succeeded")
	}
	if !m.r.Closed() {
		t.Fatal("the member was not told the port is gone")
	}
}

// A member that publishes an impossible tail makes Read fail with
// ErrCorrupt; Close unblocks a Read that sleeps.
func TestCorruptAndClose(t *testing.T) {
	e, err := New(1514, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := newMember(t, e)
	var st unix.Stat_t
	unix.Fstat(m.r.FD(), &st)
	mem, err := unix.Mmap(m.r.FD(), 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	got := read(e)
	mem[64+7] = 0x80 // ring 0's tail, far ahead
	m.txData.Wake()
	if g := wait(t, got); len(g) != 1 || g[0] != "error: member's rings: "+shmring.ErrCorrupt.Error() {
		t.Fatalf("got %q", g)
	}
	e.Close()

	e2, err := New(1514, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	newMember(t, e2)
	errc := make(chan error, 1)
	go func() {
		_, err := e2.Read([][]byte{make([]byte, 10)}, []int{0})
		errc <- err
	}()
	e2.Close() // whether Read sleeps yet or not

	if err := wait(t, errc); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}
