package vdeswitch_test

import (
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
	_ "github.com/ipn-project/ipn/policy/vdeswitch"
)

// replay is an endpoint that sends the same frame total times, in batches.
type replay struct {
	frame []byte
	left  atomic.Int64
	stop  chan struct{}
	once  sync.Once
}

func (r *replay) Read(bufs [][]byte, sizes []int) (int, error) {
	n := 0
	for n < len(bufs) && r.left.Add(-1) >= 0 {
		sizes[n] = copy(bufs[n], r.frame)
		n++
	}
	if n == 0 {
		<-r.stop
		return 0, net.ErrClosed
	}
	return n, nil
}
func (r *replay) Write(m [][]byte) (int, error) { return len(m), nil }
func (r *replay) BatchSize() int                { return 32 }
func (r *replay) Close() error                  { r.once.Do(func() { close(r.stop) }); return nil }

// sink is an endpoint that counts the frames delivered to it.
type sink struct {
	got  atomic.Int64
	want int64
	done chan struct{}
	stop chan struct{}
	once sync.Once
}

func (s *sink) Read([][]byte, []int) (int, error) { <-s.stop; return 0, net.ErrClosed }
func (s *sink) Write(m [][]byte) (int, error) {
	if s.got.Add(int64(len(m))) == s.want {
		close(s.done)
	}
	return len(m), nil
}
func (s *sink) BatchSize() int { return 32 }
func (s *sink) Close() error   { s.once.Do(func() { close(s.stop) }); return nil }

var (
	_ endpoint.Endpoint = (*replay)(nil)
	_ endpoint.Endpoint = (*sink)(nil)
)

// BenchmarkEngineSwitchUnicast forwards 64-byte frames to a learnt MAC
// through the engine and the switch: frames/s per core, allocs per frame.
func BenchmarkEngineSwitchUnicast(b *testing.B) {
	e := engine.New()
	n, err := e.Create("bench", engine.Config{Proto: policy.VDESwitch, PoolSize: 1024, Flags: engine.Lossless})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Release()
	n.SetPolicyOption("loop.interval", "0")
	dstMAC := []byte{2, 0, 0, 0, 0, 2}
	// The receiver's MAC is learnt from one frame it sends.
	learn := &replay{frame: append(append(append([]byte{}, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), dstMAC...), make([]byte, 52)...), stop: make(chan struct{})}
	learn.left.Store(1)
	rcv := &sink{want: int64(b.N), done: make(chan struct{}), stop: make(chan struct{})}
	rp, err := n.Join(&dualEP{learn, rcv}, engine.PortOptions{Want: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer rp.Close()
	bystander := &sink{want: -1, done: make(chan struct{}), stop: make(chan struct{})}
	bp, _ := n.Join(bystander, engine.PortOptions{Want: -1})
	defer bp.Close()
	for learn.left.Load() >= 0 && bystander.got.Load() == 0 {
		// wait for the learning frame to be flooded (and so learnt)
		runtime.Gosched()
	}
	frame := append(append(append([]byte{}, dstMAC...), 2, 0, 0, 0, 0, 1), make([]byte, 52)...)
	snd := &replay{frame: frame, stop: make(chan struct{})}
	snd.left.Store(int64(b.N))
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	sp, err := n.Join(snd, engine.PortOptions{Want: -1, NoRead: true})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	<-rcv.done
	b.StopTimer()
	if bystander.got.Load() != 1 {
		b.Fatalf("a bystander got %d frames: unicast was flooded", bystander.got.Load())
	}
}

// dualEP reads from one endpoint and writes to another.
type dualEP struct {
	r *replay
	w *sink
}

func (d *dualEP) Read(b [][]byte, s []int) (int, error) { return d.r.Read(b, s) }
func (d *dualEP) Write(m [][]byte) (int, error)         { return d.w.Write(m) }
func (d *dualEP) BatchSize() int                        { return 32 }
func (d *dualEP) Close() error                          { d.r.Close(); return d.w.Close() }
