package engine_test

import (
	"testing"
	"time"

	"github.com/ipn-project/ipn/engine"
)

// Messages flow while the engine's and the networks' locks are held: the
// data path takes no lock shared by networks (nor a network's own), only
// each port's queue lock.
func TestDataPathTakesNoEngineOrNetworkLock(t *testing.T) {
	for _, cfg := range []engine.Config{
		{PoolSize: 64},
		{PoolSize: 8, Flags: engine.Lossless},
	} {
		e, n := create(t, cfg)
		other, err := e.Create("other", cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(other.Release)
		flows := []*flow{joinFlow(t, n, 4, 32, false), joinFlow(t, other, 1, 32, false)}
		release := engine.HoldLocks(e, n, other)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 10 {
				for _, f := range flows {
					f.run(64)
				}
			}
		}()
		select {
		case <-done:
			release()
		case <-time.After(10 * time.Second):
			release()
			<-done
			t.Fatalf("flags %d: messages waited for the engine's or a network's lock", cfg.Flags)
		}
	}
}
