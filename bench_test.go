package ipn_test

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
)

// benchHub measures messages of size bytes from one sender to receivers
// members of a lossless hub, through the daemon over real sockets. It
// reports deliveries per second (all receivers).
func benchHub(b *testing.B, receivers, size int) {
	path := filepath.Join(tempDir(b), "bench")
	s, err := ipn.NewSocket(ipn.Hub)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.SetFlags(ipn.Lossless)
	s.SetMsgPoolSize(256)
	s.Shutdown(ipn.ShutRead)
	if err := s.Bind(path); err != nil {
		b.Fatal(err)
	}
	if err := s.Connect(""); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < receivers; i++ {
		r, err := ipn.NewSocket(ipn.Any)
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		r.Shutdown(ipn.ShutWrite)
		if err := r.Connect(path); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for j := 0; j < b.N; j++ {
				r.SetReadDeadline(time.Now().Add(30 * time.Second))
				if _, _, err := r.Recv(buf); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	msg := make([]byte, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if err := s.Send(msg); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.ReportMetric(float64(b.N*receivers)/time.Since(start).Seconds(), "deliveries/s")
}

func BenchmarkSocketHub1to1_64B(b *testing.B)   { benchHub(b, 1, 64) }
func BenchmarkSocketHub1to4_64B(b *testing.B)   { benchHub(b, 4, 64) }
func BenchmarkSocketHub1to1_1500B(b *testing.B) { benchHub(b, 1, 1500) }

// benchPlug measures frames of size bytes sent on one lossless hub and
// received on another through ipn plug A ipn://B, the cable a process
// runs between two networks. It reports frames per second end to end.
func benchPlug(b *testing.B, size int) {
	dir := tempDir(b)
	a, bb := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	lossless := func(s *ipn.Socket) { s.SetFlags(ipn.Lossless); s.SetMsgPoolSize(256) }
	bindAt(b, ipn.Hub, a, lossless, false)
	bindAt(b, ipn.Hub, bb, lossless, false)
	r := member(b, bb, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
	start(b, nil, nil, ipnCommand(b), "plug", a, "ipn://"+bb)
	waitFor(b, 15*time.Second, "the cable", func() bool { n, _ := readersOf(bb); return n == 2 })
	s := member(b, a, func(s *ipn.Socket) { s.Shutdown(ipn.ShutRead) })
	msgs := make([][]byte, 64)
	for i := range msgs {
		msgs[i] = make([]byte, size)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	t0 := time.Now()
	done := make(chan error, 1)
	go func() {
		ms := make([]ipn.Message, 64)
		for i := range ms {
			ms[i].Buf = make([]byte, 2048)
		}
		for got := 0; got < b.N; {
			r.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := r.RecvBatch(ms)
			if err != nil {
				done <- err
				return
			}
			got += n
		}
		done <- nil
	}()
	for sent := 0; sent < b.N; {
		n, err := s.SendBatch(msgs[:min(len(msgs), b.N-sent)])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "frames/s")
}

func BenchmarkPlugCable64B(b *testing.B)   { benchPlug(b, 64) }
func BenchmarkPlugCable1500B(b *testing.B) { benchPlug(b, 1500) }
