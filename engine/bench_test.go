package engine_test

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipn-project/ipn/engine"
)

// BenchmarkEngineParallelNetworks sends 64-byte messages through nets
// independent lossless hubs of one engine at once, each with its own sender
// and receiver: an op is one message delivered, whichever network carried
// it. With no lock shared by networks on the data path, the total grows
// with the networks up to the cores (compare -cpu 1,2).
func BenchmarkEngineParallelNetworks(b *testing.B) {
	for _, nets := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("nets=%d", nets), func(b *testing.B) {
			e := engine.New()
			flows := make([]*flow, nets)
			for i := range flows {
				n, err := e.Create(i, engine.Config{PoolSize: 256, Flags: engine.Lossless})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(n.Release)
				flows[i] = joinFlow(b, n, 1, 32, false)
				flows[i].run(1024) // warm the pools up
			}
			b.ReportAllocs()
			b.SetBytes(64)
			b.ResetTimer()
			cpu0 := cpuTime()
			start := time.Now()
			var wg sync.WaitGroup
			for i, f := range flows {
				// Network i carries its share of the b.N messages.
				k := b.N/nets + btoi(i < b.N%nets)
				if k == 0 {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					f.run(k)
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			// CPU per message, the process's: unlike msgs/s, it hardly
			// moves with other load on the machine, and it would grow
			// with networks spinning on a shared lock.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/msg")
		})
	}
}

// cpuTime returns the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
