package vxvde

import (
	"bytes"
	"testing"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/internal/netnstest"
)

// runs returns n frames from src to dst, equal in size but the last.
func runs(dst, src []byte, n int) [][]byte {
	var fs [][]byte
	for i := 0; i < n; i++ {
		size := 1400
		if i == n-1 {
			size = 100
		}
		fs = append(fs, frame(dst, src, string(bytes.Repeat([]byte{byte(i)}, size))))
	}
	return fs
}

func expectAll(t *testing.T, who string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d frames, want %d", who, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: frame %d of %d bytes, want %d bytes", who, i, len(got[i]), len(want[i]))
		}
	}
}

// Two members: a's broadcasts to the group and its frames to b's learnt
// MAC go in runs with UDP segmentation, one system call for each Write,
// and b reads them coalesced (UDP GRO), every frame in order.
func TestRunsBetweenMembers(t *testing.T) {
	ns := testNetns(t)
	var a, b *Endpoint
	netnstest.In(t, ns, func() { a, b = open(t, ""), open(t, "") })
	if s, _ := a.Stats(); !s.GSO || !s.GRO {
		t.Skipf("the kernel has no UDP GSO or GRO: %+v", s)
	}
	hello := frame(bcast, mac(2), "b")
	b.Write([][]byte{hello})
	expectAll(t, "a", endpointtest.ReadN(t, a, 1, 2048), [][]byte{hello})

	toAll := runs(bcast, mac(1), 30)
	if n, err := a.Write(toAll); n != len(toAll) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	expectAll(t, "b, from the group", endpointtest.ReadN(t, b, len(toAll), 2048), toAll)
	toB := runs(mac(2), mac(1), 40)
	if n, err := a.Write(toB); n != len(toB) || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	expectAll(t, "b, unicast", endpointtest.ReadN(t, b, len(toB), 2048), toB)
	if s, _ := a.Stats(); s.SendCalls != 2 || s.SendGSO != 2 || s.SendDatagrams != 70 {
		t.Fatalf("a's stats %+v: want 2 calls, a run each", s)
	}
	uni, multi := b.Stats()
	if uni.RecvGRO != 1 || uni.RecvDatagrams != 40 || multi.RecvGRO != 1 || multi.RecvDatagrams < 31 {
		t.Fatalf("b's stats %+v (unicast), %+v (group): want each run coalesced", uni, multi)
	}
}
