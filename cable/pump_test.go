package cable_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/cable"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/internal/daemontest"
)

// A cable into a lossless network whose member never reads fills the
// network and waits for room; cancelling the cable still ends it at once,
// and the near socket can carry a cable again.
func TestPumpStopsWhileWaitingForRoom(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	path := filepath.Join(t.TempDir(), "full")
	mgr, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	mgr.SetFlags(ipn.Lossless)
	mgr.SetMsgPoolSize(4)
	if err := mgr.Bind(path); err != nil {
		t.Fatal(err)
	}
	stuck := join(t, path, false) // receives, never reads
	_ = stuck
	near := join(t, path, true)
	far := endpointtest.New(64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cable.Pump(ctx, near.Endpoint(), far) }()
	// Feed the far end until the pump stops taking frames: it waits in
	// the network for room.
	feed := make(chan struct{})
	go func() {
		defer close(feed)
		frame := make([]byte, 1400)
		for i := 0; i < 100000; i++ {
			fctx, fcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := far.Inject(fctx, frame)
			fcancel()
			if err != nil {
				return
			}
		}
	}()
	select {
	case <-feed:
	case <-time.After(wait):
		t.Fatal("the far end took 100000 frames into a network of pool 4 whose member never reads")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Pump returned nil")
		}
	case <-time.After(wait):
		t.Fatal("Pump did not stop while it waited for room in a lossless network")
	}
	// The near socket is still joined, for another far end.
	if _, err := near.MTU(); err != nil {
		t.Fatalf("the near socket after the pump: %v", err)
	}
}
