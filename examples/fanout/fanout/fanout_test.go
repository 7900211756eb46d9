package fanout

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/policy"
)

// fakeNet is a policy.Network that records what is emitted.
type fakeNet struct {
	mu      sync.Mutex
	emitted map[int][]string
}

func (n *fakeNet) NumPorts() int { return 64 }

func (n *fakeNet) Emit(port int, msg []byte) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.emitted == nil {
		n.emitted = make(map[int][]string)
	}
	n.emitted[port] = append(n.emitted[port], string(msg))
	return nil
}

// take returns and forgets what was emitted to port.
func (n *fakeNet) take(port int) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.emitted[port]
	delete(n.emitted, port)
	return e
}

type fixture struct {
	t       *testing.T
	net     *fakeNet
	p       *Policy
	members policy.PortSet
}

// newFixture makes a policy with ports 0..n-1 connected, as the engine
// would have them.
func newFixture(t *testing.T, n int) *fixture {
	f := &fixture{t: t, net: &fakeNet{}}
	pol, err := New(f.net)
	if err != nil {
		t.Fatal(err)
	}
	f.p = pol.(*Policy)
	for i := 0; i < n; i++ {
		f.join(i)
	}
	return f
}

func (f *fixture) join(port int) {
	f.p.PostNewPort(port)
	f.members.Add(port)
}

func (f *fixture) leave(port int) {
	f.p.PreDeletePort(port)
	f.members.Remove(port)
	f.p.DeletePort(port)
}

// route sends msgs from src and returns, per message, the destination
// ports, or nil and true if it is invalid.
func (f *fixture) route(src int, msgs ...string) (dst [][]int, invalid []bool) {
	f.t.Helper()
	bs := make([][]byte, len(msgs))
	for i, m := range msgs {
		bs[i] = []byte(m)
	}
	out := make([]policy.Delivery, len(msgs))
	f.p.Route(src, bs, &f.members, out)
	for i := range out {
		var ps []int
		for p := out[i].Ports.Next(0); p >= 0; p = out[i].Ports.Next(p + 1) {
			ps = append(ps, p)
		}
		dst = append(dst, ps)
		invalid = append(invalid, out[i].Invalid)
		if out[i].Alt != nil || out[i].AltPorts.Len() != 0 {
			f.t.Fatalf("message %q has a second form", msgs[i])
		}
	}
	return dst, invalid
}

// expect checks where one message from src goes.
func (f *fixture) expect(src int, msg string, want ...int) {
	f.t.Helper()
	dst, invalid := f.route(src, msg)
	if invalid[0] {
		f.t.Fatalf("%d sends %q: invalid, want to %v", src, msg, want)
	}
	if !slices.Equal(dst[0], want) {
		f.t.Fatalf("%d sends %q: to %v, want %v", src, msg, dst[0], want)
	}
}

func (f *fixture) expectAck(port int, names ...string) {
	f.t.Helper()
	var want []string
	for _, n := range names {
		want = append(want, "subscribed "+n)
	}
	if got := f.net.take(port); !slices.Equal(got, want) {
		f.t.Fatalf("port %d was emitted %q, want %q", port, got, want)
	}
}

func TestRouteToSubscribers(t *testing.T) {
	f := newFixture(t, 5)
	f.expect(1, "+audio")
	f.expectAck(1, "audio")
	f.expect(2, "+video")
	f.expect(2, "+audio")
	f.expectAck(2, "video", "audio")
	f.expectAck(3) // port 3 subscribes to nothing

	f.expect(0, "audio:a1", 1, 2)
	f.expect(0, "video:v1", 2)
	f.expect(0, "video:", 2) // an empty payload is a frame too
	f.expect(0, "subtitles:s1")
	f.expect(3, "audio:x:y", 1, 2) // a payload may hold ':'
	// Never back to the sender, even when it subscribed.
	f.expect(2, "audio:from 2", 1)
	// Batches route each message on its own.
	dst, invalid := f.route(0, "video:v2", "+audio", "audio:a2", "bad")
	if want := [][]int{{2}, nil, {1, 2}, nil}; !slices.EqualFunc(dst, want, slices.Equal) ||
		!slices.Equal(invalid, []bool{false, false, false, true}) {
		t.Fatalf("batch: %v %v", dst, invalid)
	}
	f.expectAck(0, "audio")
	if got, _ := f.p.Option("streams"); got != "audio 3\nvideo 1\n" {
		t.Fatalf("streams option: %q", got)
	}
	if got := f.p.DescribePort(2); got != "streams audio,video" {
		t.Fatalf("DescribePort(2) = %q", got)
	}
	if _, err := f.p.Option("nope"); !errors.Is(err, syscall.ENOPROTOOPT) {
		t.Fatalf("unknown option: %v", err)
	}
}

func TestSubscribeUnsubscribe(t *testing.T) {
	f := newFixture(t, 3)
	f.expect(1, "+news")
	f.expect(1, "+news") // again: still one subscription, acknowledged again
	f.expectAck(1, "news", "news")
	f.expect(0, "news:n1", 1)
	f.expect(1, "-news")
	f.expect(0, "news:n2")
	if got := f.p.Subscriptions(1); len(got) != 0 {
		t.Fatalf("after -news: %v", got)
	}
	if got, _ := f.p.Option("streams"); got != "" {
		t.Fatalf("an unsubscribed stream is kept: %q", got)
	}
	f.expect(1, "-news")  // not subscribed: nothing to do, not an error
	f.expect(2, "-other") // never seen
	f.expectAck(1)        // no acknowledgment of unsubscribing
	f.expect(1, "+a")
	f.expect(2, "+a")
	f.expect(2, "-a")
	f.expect(0, "a:1", 1)
}

func TestInvalid(t *testing.T) {
	f := newFixture(t, 2)
	f.expect(1, "+ok")
	long := strings.Repeat("n", MaxName)
	f.expect(1, "+"+long)
	f.expectAck(1, "ok", long)
	f.expect(0, long+":frame", 1)
	f.expect(0, "A-Z_a.z-09:frame") // every allowed character
	for _, m := range []string{
		"", "+", "-", ":x", "no colon", "ok", "bad name:x", "ok/x:y", "é:x",
		long + "n:too long", "+" + long + "n", "-" + long + "n", "+a:b", "+ok ",
		"\x00:x", "ok\n:x",
	} {
		dst, invalid := f.route(0, m)
		if !invalid[0] || dst[0] != nil {
			t.Errorf("%q: invalid %v, to %v; want invalid, to nobody", m, invalid[0], dst[0])
		}
	}
	f.expectAck(1)
	if got := f.p.Subscriptions(1); !slices.Equal(got, []string{long, "ok"}) {
		t.Fatalf("subscriptions changed by invalid messages: %v", got)
	}
}

func TestDeletePortDropsSubscriptions(t *testing.T) {
	f := newFixture(t, 3)
	f.expect(1, "+audio")
	f.expect(1, "+video")
	f.expect(2, "+audio")
	f.leave(1)
	if got := f.p.Subscriptions(1); len(got) != 0 {
		t.Fatalf("port 1 left but keeps %v", got)
	}
	if got, _ := f.p.Option("streams"); got != "audio 1\n" {
		t.Fatalf("streams after port 1 left: %q", got)
	}
	f.expect(0, "audio:a", 2)
	f.expect(0, "video:v")
	// A subscription routed after the port left (its last messages) is
	// dropped: it must not pass to the next port given that number.
	f.route(1, "+late")
	if got := f.p.Subscriptions(1); len(got) != 0 {
		t.Fatalf("a port that left subscribed: %v", got)
	}
	f.join(1)
	f.expect(0, "late:x")
	f.expect(0, "audio:a", 2)
	f.p.Close()
	if got, _ := f.p.Option("streams"); got != "" {
		t.Fatalf("after Close: %q", got)
	}
}

// A frame costs no allocation once the Delivery's set has grown.
func TestRouteDoesNotAllocate(t *testing.T) {
	f := newFixture(t, 64)
	for p := 1; p < 64; p += 2 {
		f.route(p, "+video")
	}
	msgs := [][]byte{[]byte("video:frame"), []byte("audio:frame"), []byte("video:" + strings.Repeat("x", 1000))}
	out := make([]policy.Delivery, len(msgs))
	allocs := testing.AllocsPerRun(100, func() {
		for i := range out {
			out[i].Reset()
		}
		f.p.Route(0, msgs, &f.members, out)
	})
	if allocs != 0 {
		t.Fatalf("Route allocates %v times per call", allocs)
	}
	if out[0].Ports.Len() != 32 || out[1].Ports.Len() != 0 || out[2].Ports.Len() != 32 {
		t.Fatalf("routed to %d, %d, %d ports", out[0].Ports.Len(), out[1].Ports.Len(), out[2].Ports.Len())
	}
}

// Route runs concurrently for several ports and with the membership hooks
// (run with -race).
func TestConcurrentRoute(t *testing.T) {
	f := newFixture(t, 8)
	var wg sync.WaitGroup
	for src := 0; src < 8; src++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream := fmt.Sprintf("s%d", src%3)
			msgs := [][]byte{[]byte("+" + stream), []byte(stream + ":x"), []byte("-" + stream), []byte("s0:y")}
			out := make([]policy.Delivery, len(msgs))
			for i := 0; i < 500; i++ {
				for j := range out {
					out[j].Reset()
				}
				f.p.Route(src, msgs, &f.members, out)
				if out[1].Ports.Has(src) || out[3].Ports.Has(src) {
					t.Errorf("port %d got its own frame", src)
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // membership hooks, one at a time as the engine calls them
		defer wg.Done()
		for i := 0; i < 500; i++ {
			f.p.DeletePort(8 + i%4)
			f.p.PostNewPort(8 + i%4)
			f.p.Option("streams")
			f.p.DescribePort(i % 8)
		}
	}()
	wg.Wait()
}

func TestRegister(t *testing.T) {
	if err := Register(); err != nil {
		t.Fatal(err)
	}
	if tag, ok := policy.TagOf(Name); !ok || tag != Tag {
		t.Fatalf("TagOf(%q) = %v %v", Name, tag, ok)
	}
	if _, name, ok := policy.Lookup(Tag); !ok || name != Name {
		t.Fatalf("Lookup(%d) = %q %v", Tag, name, ok)
	}
	if err := Register(); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("second Register: %v, want EEXIST", err)
	}
}
