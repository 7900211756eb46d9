package engine_test

import (
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/engine"
)

// replayEP is a node that sends a fixed frame, as many times as it is told
// through credit, in batches. It allocates nothing per message.
type replayEP struct {
	frame  []byte
	batch  int
	credit chan int // messages to send
	left   int      // owned by the port's reader
	stop   chan struct{}
	once   sync.Once
}

func newReplay(frame []byte, batch int) *replayEP {
	return &replayEP{frame: frame, batch: batch, credit: make(chan int, 1), stop: make(chan struct{})}
}

func (r *replayEP) Read(bufs [][]byte, sizes []int) (int, error) {
	for r.left == 0 {
		select {
		case k := <-r.credit:
			r.left = k
		case <-r.stop:
			return 0, net.ErrClosed
		}
	}
	n := min(len(bufs), r.left)
	for i := range n {
		sizes[i] = copy(bufs[i], r.frame)
	}
	r.left -= n
	return n, nil
}

func (r *replayEP) Write(m [][]byte) (int, error) { return len(m), nil }
func (r *replayEP) BatchSize() int                { return r.batch }
func (r *replayEP) Close() error                  { r.once.Do(func() { close(r.stop) }); return nil }

// sinkEP is a node that counts what it receives and signals reached when
// the count hits target. It allocates nothing per message.
type sinkEP struct {
	batch   int
	got     atomic.Int64
	target  atomic.Int64
	reached chan struct{}
	stop    chan struct{}
	once    sync.Once
}

func newSink(batch int) *sinkEP {
	return &sinkEP{batch: batch, reached: make(chan struct{}, 1), stop: make(chan struct{})}
}

func (s *sinkEP) Read([][]byte, []int) (int, error) { <-s.stop; return 0, net.ErrClosed }
func (s *sinkEP) Write(m [][]byte) (int, error) {
	s.count(len(m))
	return len(m), nil
}
func (s *sinkEP) count(n int) {
	if s.got.Add(int64(n)) == s.target.Load() {
		s.reached <- struct{}{}
	}
}
func (s *sinkEP) BatchSize() int { return s.batch }
func (s *sinkEP) Close() error   { s.once.Do(func() { close(s.stop) }); return nil }

// expect arms the sink for k more messages.
func (s *sinkEP) expect(k int) { s.target.Store(s.got.Load() + int64(k)) }

// directSinkEP is a sinkEP the engine writes to inline, as it does a VDE
// port.
type directSinkEP struct{ *sinkEP }

func (d directSinkEP) WriteDirect([]byte) bool { d.count(1); return true }

var (
	_ endpoint.Endpoint     = (*replayEP)(nil)
	_ endpoint.Endpoint     = (*sinkEP)(nil)
	_ endpoint.DirectWriter = directSinkEP{}
)

// flow is one sender and its receivers joined to a network.
type flow struct {
	src   *replayEP
	sinks []*sinkEP
	ports []*engine.Port
}

// joinFlow joins a sender and receivers sinks to n.
func joinFlow(t testing.TB, n *engine.Network, receivers, batch int, direct bool) *flow {
	t.Helper()
	f := &flow{src: newReplay(make([]byte, 64), batch)}
	sp, err := n.Join(f.src, engine.PortOptions{Want: -1, NoRead: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sp.Close)
	for range receivers {
		s := newSink(batch)
		var ep endpoint.Endpoint = s
		if direct {
			ep = directSinkEP{s}
		}
		p, err := n.Join(ep, engine.PortOptions{Want: -1, NoWrite: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		f.sinks = append(f.sinks, s)
		f.ports = append(f.ports, p)
	}
	return f
}

// run sends k messages and waits until every receiver has them all.
func (f *flow) run(k int) {
	for _, s := range f.sinks {
		s.expect(k)
	}
	f.src.credit <- k
	for _, s := range f.sinks {
		<-s.reached
	}
}

// TestNoAllocsPerMessage drives messages through the engine between nodes
// that allocate nothing themselves: in steady state, the engine must not
// allocate either (pooled messages, reused batches and port sets).
func TestNoAllocsPerMessage(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop messages at random")
	}
	cases := []struct {
		receivers int
		cfg       engine.Config
		direct    bool
	}{
		{1, engine.Config{PoolSize: 256}, false},
		{4, engine.Config{PoolSize: 256}, false},
		{1, engine.Config{PoolSize: 8, Flags: engine.Lossless}, false},
		{4, engine.Config{PoolSize: 8, Flags: engine.Lossless}, false},
		{1, engine.Config{MTU: 9000, PoolSize: 8, Flags: engine.Lossless | engine.FlexMTU}, false},
		{4, engine.Config{PoolSize: 256}, true},
	}
	for _, c := range cases {
		name := fmt.Sprintf("hub1to%d/flags%d/pool%d/direct=%v", c.receivers, c.cfg.Flags, c.cfg.PoolSize, c.direct)
		t.Run(name, func(t *testing.T) {
			_, n := create(t, c.cfg)
			f := joinFlow(t, n, c.receivers, 32, c.direct)
			// Lossy: no more in flight than a queue holds, so that none
			// is dropped and every receiver gets them all.
			const perRun, runs = 256, 40
			for range 20 {
				f.run(perRun) // warm the pools up
			}
			allocs := testing.AllocsPerRun(runs, func() { f.run(perRun) })
			// AllocsPerRun divides whole mallocs by runs: 0 means fewer
			// than runs allocations for runs*perRun messages sent.
			if allocs != 0 {
				t.Errorf("%v allocations per %d messages", allocs, perRun)
			}
			// AllocsPerRun runs on one P. On all of them, the writers
			// free messages to their own P's pool and the reader takes
			// them from another's: the pools settle after a few extra
			// messages, and the runtime allocates a little on its own
			// (sudogs, pool chains). Anything per message or per batch
			// is far over 1%.
			for range 20 {
				f.run(perRun)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range 4 * runs {
				f.run(perRun)
			}
			runtime.ReadMemStats(&after)
			if sent, m := 4*runs*perRun, after.Mallocs-before.Mallocs; m > uint64(sent/100) {
				t.Errorf("GOMAXPROCS=%d: %d allocations for %d messages sent", runtime.GOMAXPROCS(0), m, sent)
			} else {
				t.Logf("GOMAXPROCS=%d: %d allocations for %d messages sent", runtime.GOMAXPROCS(0), m, sent)
			}
			for i, p := range f.ports {
				if d := p.Stats().Drops; d != 0 {
					t.Errorf("receiver %d dropped %d", i, d)
				}
			}
		})
	}
}
