package cable_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/daemon"
	"github.com/ipn-project/ipn/farend/udp"
	"github.com/ipn-project/ipn/internal/daemontest"
	"github.com/ipn-project/ipn/policy/loop"
)

// A cable's UDP far end sends the frames of a TCP segment cut at the
// daemon, some 44 of one size, queued for it, in runs with UDP
// segmentation, and takes such runs coalesced: every frame crosses in
// order, each whole.
func TestCableRuns(t *testing.T) {
	daemontest.Start(t, daemon.Config{})
	path := filepath.Join(t.TempDir(), "net")
	mgr, err := ipn.NewSocket(ipn.Hub)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mgr.Close() })
	if err := mgr.SetMsgPoolSize(256); err != nil { // the cable's queue holds a segment
		t.Fatal(err)
	}
	if err := mgr.Bind(path); err != nil {
		t.Fatal(err)
	}
	member := join(t, path, false)

	var ports []int
	for range 2 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, c.LocalAddr().(*net.UDPAddr).Port)
		c.Close()
	}
	ctx := context.Background()
	far, err := udp.Open(ctx, fmt.Sprintf("127.0.0.1:%d/127.0.0.1:%d", ports[0], ports[1]))
	if err != nil {
		t.Fatal(err)
	}
	other, err := udp.Open(ctx, fmt.Sprintf("127.0.0.1:%d/127.0.0.1:%d", ports[1], ports[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	cableEnd := far.(*udp.Endpoint)
	if s := cableEnd.Stats(); !s.GSO || !s.GRO {
		t.Skipf("the kernel has no UDP GSO or GRO: %+v", s)
	}
	near := join(t, path, true)

	segment := func(tag byte) [][]byte {
		var fs [][]byte
		for i := 0; i < 44; i++ {
			n := 1514
			if i == 43 {
				n = 600
			}
			f := bytes.Repeat([]byte{tag, byte(i)}, n/2)
			copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, tag, 0x88, 0xb5})
			fs = append(fs, f)
		}
		return fs
	}

	// The network to the far end: the frames wait in the cable's queue for
	// it to start.
	out := segment(1)
	if n, err := member.SendBatch(out); n != len(out) || err != nil {
		t.Fatalf("SendBatch: %d, %v", n, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := run(t, ctx, near, far)
	bufs, sizes := make([][]byte, udp.BatchSize), make([]int, udp.BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	for i := 0; i < len(out); {
		n, err := other.Read(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j < n; j++ {
			f := bufs[j][:sizes[j]]
			if loop.IsProbe(f) {
				continue
			}
			if !bytes.Equal(f, out[i]) {
				t.Fatalf("far end: frame %d of %d bytes, want %d bytes", i, len(f), len(out[i]))
			}
			i++
		}
	}

	// The far end to the network.
	in := segment(2)
	if n, err := other.Write(in); n != len(in) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	for i := range in {
		if got := recv(t, member); !bytes.Equal(got, in[i]) {
			t.Fatalf("member: frame %d of %d bytes, want %d bytes", i, len(got), len(in[i]))
		}
	}
	cancel()
	result(t, done) // the counts are final
	if s := cableEnd.Stats(); s.SendGSO == 0 || s.RecvGRO == 0 {
		t.Errorf("the cable's far end %+v: want runs sent and received coalesced", s)
	}
	t.Logf("the cable's far end: %+v", cableEnd.Stats())
}
