package benchpeer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestClock(t *testing.T) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	if d := Now() - ts.Nano(); d < 0 || d > int64(time.Second) {
		t.Fatalf("Now is %d ns from CLOCK_MONOTONIC", d)
	}
}

func TestHist(t *testing.T) {
	for v := int64(0); v < 1<<20; v = v*9/8 + 1 {
		if lo := low(bucket(v)); lo > v || bucket(lo) != bucket(v) {
			t.Fatalf("value %d: bucket %d starts at %d", v, bucket(v), lo)
		}
	}
	var h Hist
	for i := int64(1); i <= 1000; i++ {
		h.Record(i * 1000)
	}
	if p := h.Quantile(0.5); p < 480_000 || p > 520_000 {
		t.Errorf("p50 %d, want about 500000", p)
	}
	if p := h.Quantile(0.99); p < 960_000 || p > 1_020_000 {
		t.Errorf("p99 %d, want about 990000", p)
	}
	var g Hist
	g.AddBuckets(h.Buckets())
	if g.Count() != h.Count() || g.Quantile(0.5) != h.Quantile(0.5) {
		t.Errorf("merged histogram differs")
	}
}

func TestFrame(t *testing.T) {
	b := make([]byte, 64)
	PutHeader(b, MAC(3), 7)
	Stamp(b, 42, 12345)
	id, seq, ts, err := Parse(b)
	if err != nil || id != 7 || seq != 42 || ts != 12345 {
		t.Fatalf("Parse = %d %d %d %v", id, seq, ts, err)
	}
	if b[0] != 2 || b[5] != 4 || b[11] != 8 {
		t.Errorf("MACs % x", b[:12])
	}
	if _, _, _, err := Parse(Hello(1, 64)); err == nil {
		t.Errorf("a hello parses as a load frame")
	}
}

// hub is an in-process network: every message to the others, dropped
// when a queue is full.
type hub struct {
	mu    sync.Mutex
	ports []*hubConn
}

type hubConn struct {
	h    *hub
	q    chan []byte
	done chan struct{}
	once sync.Once
}

func (h *hub) join() *hubConn {
	c := &hubConn{h: h, q: make(chan []byte, 1024), done: make(chan struct{})}
	h.mu.Lock()
	h.ports = append(h.ports, c)
	h.mu.Unlock()
	return c
}

func (c *hubConn) Send(b []byte) error {
	select {
	case <-c.done:
		return net.ErrClosed
	default:
	}
	m := append([]byte(nil), b...)
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	for _, p := range c.h.ports {
		if p != c {
			select {
			case p.q <- m:
			default:
			}
		}
	}
	return nil
}

func (c *hubConn) Recv(b []byte) (int, error) {
	select {
	case m := <-c.q:
		return copy(b, m), nil
	case <-c.done:
		return 0, net.ErrClosed
	}
}

func (c *hubConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

// driven is a peer run by Run with pipes for its input and output.
type driven struct {
	in   *io.PipeWriter
	out  *bufio.Scanner
	errc chan error
}

func drive(conn Conn, cfg Config) *driven {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	d := &driven{in: inW, out: bufio.NewScanner(outR), errc: make(chan error, 1)}
	go func() {
		err := Run(conn, cfg, inR, outW)
		outW.CloseWithError(errors.New("peer returned"))
		d.errc <- err
	}()
	return d
}

func (d *driven) expect(t *testing.T, prefix string) string {
	t.Helper()
	for d.out.Scan() {
		if strings.HasPrefix(d.out.Text(), prefix) {
			return d.out.Text()
		}
	}
	t.Fatalf("no %q: %v", prefix, d.out.Err())
	return ""
}

func (d *driven) say(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(d.in, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

func TestRun(t *testing.T) {
	h := &hub{}
	recv := drive(h.join(), Config{ID: 1, Size: 100, Recv: true, Hello: true})
	send := drive(h.join(), Config{ID: 0, Size: 100, Send: true, Duration: 50 * time.Millisecond, Rate: 2000})
	recv.expect(t, "ready")
	send.expect(t, "ready")
	recv.say(t, "go")
	send.say(t, "go")
	send.expect(t, "done")
	time.Sleep(20 * time.Millisecond)
	recv.say(t, "count")
	if l := recv.expect(t, "count "); l == "count 0" {
		t.Errorf("nothing received")
	}
	var res [2]Result
	for i, d := range []*driven{send, recv} {
		d.say(t, "stop")
		if err := json.Unmarshal([]byte(d.expect(t, "{")), &res[i]); err != nil {
			t.Fatal(err)
		}
		if err := <-d.errc; err != nil {
			t.Fatal(err)
		}
	}
	s, r := res[0], res[1]
	t.Logf("sender %+v", s)
	t.Logf("receiver %+v", r)
	if s.Sent == 0 || s.Sent > 200 || r.Received != s.Sent || r.Lost != 0 || r.Error != "" || s.Error != "" {
		t.Errorf("sent %d, received %d, lost %d (errors %q %q)", s.Sent, r.Received, r.Lost, s.Error, r.Error)
	}
	if r.P50 <= 0 || r.P99 < r.P50 || len(r.Latency) == 0 {
		t.Errorf("latency p50 %d p99 %d", r.P50, r.P99)
	}
}

// limitPair opens both ends of a fresh limit ring in this process.
func limitPair(t *testing.T, size int) (send, recv *Limit) {
	t.Helper()
	files, err := NewLimitFiles(size)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	open := func(send bool) *Limit {
		var fds [3]int
		for i, f := range files {
			fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd
		}
		l, err := OpenLimit(fds, send)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	return open(true), open(false)
}

// The limit ring carries every frame, paced and flat out (the sender held
// when the ring is full), and Close ends a receiver's wait.
func TestLimit(t *testing.T) {
	for _, rate := range []float64{5000, 0} {
		s, r := limitPair(t, 64)
		recv := drive(r, Config{ID: 1, Size: 64, Recv: true})
		send := drive(s, Config{ID: 0, Size: 64, Send: true, Duration: 50 * time.Millisecond, Rate: rate})
		recv.expect(t, "ready")
		send.expect(t, "ready")
		recv.say(t, "go")
		send.say(t, "go")
		send.expect(t, "done")
		send.say(t, "stop")
		var sres, rres Result
		if err := json.Unmarshal([]byte(send.expect(t, "{")), &sres); err != nil {
			t.Fatal(err)
		}
		// Everything sent is in the ring: the receiver gets it all.
		for n := int64(0); n < sres.Sent; {
			recv.say(t, "count")
			fmt.Sscanf(recv.expect(t, "count "), "count %d", &n)
		}
		recv.say(t, "stop")
		if err := json.Unmarshal([]byte(recv.expect(t, "{")), &rres); err != nil {
			t.Fatal(err)
		}
		for _, d := range []*driven{send, recv} {
			if err := <-d.errc; err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("rate %g: sent %d, received %d, p50 %d ns", rate, sres.Sent, rres.Received, rres.P50)
		if sres.Sent == 0 || rres.Received != sres.Sent || rres.Lost != 0 || sres.Error != "" || rres.Error != "" {
			t.Errorf("rate %g: sent %d, received %d, lost %d (errors %q %q)", rate, sres.Sent, rres.Received, rres.Lost, sres.Error, rres.Error)
		}
	}
	// One end cannot do the other's part.
	s, r := limitPair(t, 64)
	defer s.Close()
	defer r.Close()
	if _, err := s.Recv(make([]byte, 64)); err == nil {
		t.Error("the sender received")
	}
	if err := r.Send(make([]byte, 64)); err == nil {
		t.Error("the receiver sent")
	}
	got := make(chan error, 1)
	go func() {
		_, err := r.Recv(make([]byte, 64))
		got <- err
	}()
	r.Close()
	if err := <-got; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Recv after Close: %v", err)
	}
}
