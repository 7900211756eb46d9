package engine_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
	_ "github.com/ipn-project/ipn/policy/hub"
)

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

type node struct {
	ep   *endpointtest.Endpoint
	port *engine.Port
}

func join(t testing.TB, n *engine.Network, opts engine.PortOptions) node {
	t.Helper()
	ep := endpointtest.New(64)
	if opts.Want == 0 {
		opts.Want = -1
	}
	p, err := n.Join(ep, opts)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	t.Cleanup(p.Close)
	return node{ep, p}
}

// leakCheck fails the test if goroutines started during it outlive it. It
// runs after the test's other cleanups (registered later, run earlier).
func leakCheck(t testing.TB) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				t.Fatalf("%d goroutines leaked:\n%s", runtime.NumGoroutine()-before, buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(time.Millisecond)
		}
	})
}

func create(t testing.TB, cfg engine.Config) (*engine.Engine, *engine.Network) {
	t.Helper()
	leakCheck(t)
	e := engine.New()
	n, err := e.Create("net", cfg)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(n.Release)
	return e, n
}

func TestHubDeliversToAllButSender(t *testing.T) {
	_, n := create(t, engine.Config{})
	nodes := []node{join(t, n, engine.PortOptions{}), join(t, n, engine.PortOptions{}), join(t, n, engine.PortOptions{})}
	c := ctx(t)
	for i, nd := range nodes {
		if err := nd.ep.Inject(c, []byte(fmt.Sprintf("from %d", i))); err != nil {
			t.Fatal(err)
		}
		for j, other := range nodes {
			if j == i {
				continue
			}
			got, err := other.ep.Recv(c)
			if err != nil {
				t.Fatalf("node %d waiting for message of %d: %v", j, i, err)
			}
			if string(got) != fmt.Sprintf("from %d", i) {
				t.Fatalf("node %d got %q", j, got)
			}
		}
	}
	// Nothing came back to a sender: each node's channel is empty.
	for i, nd := range nodes {
		select {
		case m := <-nd.ep.C():
			t.Errorf("node %d got extra message %q", i, m)
		default:
		}
	}
}

func TestPortNumbersAndExhaustion(t *testing.T) {
	_, n := create(t, engine.Config{NumPorts: 2})
	a := join(t, n, engine.PortOptions{Want: 1})
	if a.port.Num() != 1 {
		t.Fatalf("wanted port 1, got %d", a.port.Num())
	}
	b := join(t, n, engine.PortOptions{})
	if b.port.Num() != 0 {
		t.Fatalf("got port %d, want 0", b.port.Num())
	}
	_, err := n.Join(endpointtest.New(1), engine.PortOptions{Want: -1})
	if !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("third join: %v, want EADDRNOTAVAIL", err)
	}
	b.port.Close()
	c := join(t, n, engine.PortOptions{})
	if c.port.Num() != 0 {
		t.Fatalf("freed port not reused: got %d", c.port.Num())
	}
}

func TestChangeNumPorts(t *testing.T) {
	_, n := create(t, engine.Config{NumPorts: 4})
	join(t, n, engine.PortOptions{Want: 3})
	if err := n.ChangeNumPorts(2); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("shrink over used port: %v, want EADDRINUSE", err)
	}
	if err := n.ChangeNumPorts(8); err != nil {
		t.Fatal(err)
	}
	join(t, n, engine.PortOptions{Want: 7})
	if got := n.Config().NumPorts; got != 8 {
		t.Fatalf("NumPorts = %d, want 8", got)
	}
}

func TestLossyDropsForSlowReceiverOnly(t *testing.T) {
	_, n := create(t, engine.Config{PoolSize: 4})
	sender := join(t, n, engine.PortOptions{NoRead: true})
	fast := join(t, n, engine.PortOptions{NoWrite: true})
	slowEP := endpointtest.New(1) // holds one message; its writer then blocks
	slow, err := n.Join(slowEP, engine.PortOptions{Want: -1, NoWrite: true})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	c := ctx(t)
	const total = 200
	for i := 0; i < total; i++ {
		if err := sender.ep.Inject(c, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := fast.ep.Recv(c); err != nil {
			t.Fatalf("fast receiver missed message %d: %v", i, err)
		}
	}
	st := slow.Stats()
	if st.Drops == 0 {
		t.Fatalf("slow receiver dropped nothing: %+v", st)
	}
	if st.Drops+st.MsgsOut > total {
		t.Fatalf("accounting: %+v", st)
	}
}

func TestLosslessNeverDrops(t *testing.T) {
	_, n := create(t, engine.Config{PoolSize: 2, Flags: engine.Lossless})
	sender := join(t, n, engine.PortOptions{NoRead: true})
	recv := join(t, n, engine.PortOptions{NoWrite: true})
	c := ctx(t)
	const total = 500
	go func() {
		for i := 0; i < total; i++ {
			b := make([]byte, 4)
			binary.BigEndian.PutUint32(b, uint32(i))
			if sender.ep.Inject(c, b) != nil {
				return
			}
		}
	}()
	for i := 0; i < total; i++ {
		got, err := recv.ep.Recv(c)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if v := binary.BigEndian.Uint32(got); v != uint32(i) {
			t.Fatalf("got message %d, want %d", v, i)
		}
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // a slow reader
		}
	}
	if d := recv.port.Stats().Drops; d != 0 {
		t.Fatalf("lossless dropped %d", d)
	}
}

func TestLosslessDeadReceiverUnblocksSender(t *testing.T) {
	_, n := create(t, engine.Config{PoolSize: 2, Flags: engine.Lossless})
	sender := join(t, n, engine.PortOptions{NoRead: true})
	stuckEP := endpointtest.New(1)
	stuck, err := n.Join(stuckEP, engine.PortOptions{Want: -1, NoWrite: true})
	if err != nil {
		t.Fatal(err)
	}
	c := ctx(t)
	for i := 0; i < 10; i++ { // more than channel + pool: the sender blocks
		if err := sender.ep.Inject(c, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	stuck.Close()
	alive := join(t, n, engine.PortOptions{NoWrite: true})
	if err := sender.ep.Inject(c, []byte("after")); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := alive.ep.Recv(c)
		if err != nil {
			t.Fatalf("sender still blocked after the receiver left: %v", err)
		}
		if string(m) == "after" {
			return
		}
	}
}

func TestNumNodesNotices(t *testing.T) {
	_, n := create(t, engine.Config{})
	watcher := join(t, n, engine.PortOptions{WantNumNodes: true})
	c := ctx(t)
	expect := func(readers, writers int) {
		t.Helper()
		select {
		case m := <-watcher.ep.OOB():
			r, w := binary.LittleEndian.Uint32(m[8:]), binary.LittleEndian.Uint32(m[12:])
			if int(r) != readers || int(w) != writers {
				t.Fatalf("notice readers=%d writers=%d, want %d %d", r, w, readers, writers)
			}
		case <-c.Done():
			t.Fatalf("no notice for readers=%d writers=%d", readers, writers)
		}
	}
	expect(1, 1)
	other := join(t, n, engine.PortOptions{NoWrite: true})
	expect(2, 1)
	other.port.Shutdown(true, false)
	expect(1, 1)
	other.port.Close()
	expect(1, 1)
}

func TestNetworkDeletedAfterLastRelease(t *testing.T) {
	leakCheck(t)
	e := engine.New()
	deleted := make(chan struct{})
	n, err := e.Create("k", engine.Config{OnDelete: func() { close(deleted) }})
	if err != nil {
		t.Fatal(err)
	}
	ep := endpointtest.New(1)
	p, err := n.Join(ep, engine.PortOptions{Want: -1})
	if err != nil {
		t.Fatal(err)
	}
	n.Release() // the creator leaves; the port holds the network
	if _, err := e.Acquire("k"); err != nil {
		t.Fatalf("network gone while a port is connected: %v", err)
	} else {
		n.Release()
	}
	ep.Hangup() // the node sends no more but stays
	<-p.ReadDone()
	select {
	case <-deleted:
		t.Fatal("network deleted while a receiving port is connected")
	default:
	}
	p.Close()
	select {
	case <-deleted:
	case <-ctx(t).Done():
		t.Fatal("network not deleted after its last port left")
	}
	if _, err := e.Acquire("k"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("acquire after delete: %v", err)
	}
	if _, err := e.Create("k", engine.Config{}); err != nil {
		t.Fatalf("recreate: %v", err)
	}
}

func BenchmarkHub1to1(b *testing.B) {
	_, n := create(b, engine.Config{NumPorts: 4, PoolSize: 256, Flags: engine.Lossless})
	sender := join(b, n, engine.PortOptions{NoRead: true})
	recv := join(b, n, engine.PortOptions{NoWrite: true})
	c := ctx(b)
	msg := make([]byte, 64)
	b.SetBytes(64)
	b.ReportAllocs()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < b.N; i++ {
			<-recv.ep.C()
		}
	}()
	for i := 0; i < b.N; i++ {
		if err := sender.ep.Inject(c, msg); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}

func TestFlexMTUDeliversIntact(t *testing.T) {
	_, n := create(t, engine.Config{MTU: 60000, Flags: engine.FlexMTU | engine.Lossless})
	a := join(t, n, engine.PortOptions{})
	b := join(t, n, engine.PortOptions{})
	c := ctx(t)
	for _, size := range []int{1, 100, 3000, 60000} {
		msg := make([]byte, size)
		msg[0], msg[size-1] = byte(size), byte(size>>8)
		if err := a.ep.Inject(c, msg); err != nil {
			t.Fatal(err)
		}
		got, err := b.ep.Recv(c)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != size || got[0] != msg[0] || got[size-1] != msg[size-1] {
			t.Fatalf("size %d: got %d bytes", size, len(got))
		}
	}
}

// altOnly is a test policy that sends every message, rewritten, to the
// other ports only in its second form.
type altOnly struct{ policy.Base }

func (altOnly) Route(src int, msgs [][]byte, members *policy.PortSet, out []policy.Delivery) {
	for i, m := range msgs {
		buf := out[i].Buffer(len(m))
		copy(buf, m)
		buf[0] ^= 0xff
		out[i].Alt = buf
		out[i].AltPorts.CopyFrom(*members)
		out[i].AltPorts.Remove(src)
	}
}

func init() {
	policy.MustRegister(201, "test-alt-only", func(policy.Network) (policy.Policy, error) { return altOnly{}, nil })
}

// In a lossless network, messages delivered only in a second form still
// hold their slot: a slow receiver loses none.
func TestLosslessSecondFormsAreNotDropped(t *testing.T) {
	_, n := create(t, engine.Config{Proto: 201, PoolSize: 2, Flags: engine.Lossless})
	sender := join(t, n, engine.PortOptions{NoRead: true})
	recv := join(t, n, engine.PortOptions{NoWrite: true})
	c := ctx(t)
	const total = 300
	go func() {
		for i := 0; i < total; i++ {
			if sender.ep.Inject(c, []byte{byte(i), byte(i >> 8)}) != nil {
				return
			}
		}
	}()
	for i := 0; i < total; i++ {
		got, err := recv.ep.Recv(c)
		if err != nil {
			t.Fatalf("message %d: %v (drops %d)", i, err, recv.port.Stats().Drops)
		}
		if got[0] != byte(i)^0xff || got[1] != byte(i>>8) {
			t.Fatalf("message %d: got %x", i, got)
		}
		if i%50 == 0 {
			time.Sleep(time.Millisecond) // a slow reader
		}
	}
}
