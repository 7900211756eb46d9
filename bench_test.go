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
