package netif

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestInterfaceMTU(t *testing.T) {
	for netMTU, want := range map[int]int{1514: 1500, 1000: 986, 9014: 9000, 65535: 65521} {
		if got := InterfaceMTU(netMTU); got != want {
			t.Errorf("InterfaceMTU(%d) = %d, want %d", netMTU, got, want)
		}
	}
}

// A network too small for any interface is refused before any change,
// with the numbers.
func TestMatchMTUTooSmall(t *testing.T) {
	mtu, err := MTU("lo")
	if err != nil {
		t.Skipf("no lo: %v", err)
	}
	_, err = MatchMTU("lo", 60)
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "60") || !strings.Contains(err.Error(), "82") {
		t.Fatalf("MatchMTU(lo, 60): %v, want EINVAL naming 60 and 82", err)
	}
	if now, _ := MTU("lo"); now != mtu {
		t.Fatalf("lo's MTU went from %d to %d", mtu, now)
	}
}
