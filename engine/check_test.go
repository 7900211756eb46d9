package engine_test

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/endpoint/endpointtest"
	"github.com/ipn-project/ipn/engine"
)

// Each parameter has one check, which the engine applies wherever the
// value comes in: a caller that checks first (the daemon) gets the error
// the engine would give.
func TestChecksAreTheEngines(t *testing.T) {
	same := func(what string, got, want error) {
		t.Helper()
		if want == nil || !errors.Is(want, syscall.EINVAL) {
			t.Fatalf("%s: the check gives %v, want EINVAL", what, want)
		}
		if got == nil || got.Error() != want.Error() {
			t.Errorf("%s: %v, want the check's %v", what, got, want)
		}
	}
	for _, tc := range []struct {
		what  string
		cfg   engine.Config
		check error
	}{
		{"mtu", engine.Config{MTU: engine.MaxMTU + 1}, engine.CheckMTU(engine.MaxMTU + 1)},
		{"ports", engine.Config{NumPorts: -1}, engine.CheckNumPorts(-1)},
		{"pool", engine.Config{PoolSize: engine.MaxPoolSize + 1}, engine.CheckPoolSize(engine.MaxPoolSize + 1)},
		{"flags", engine.Config{Flags: 0x100}, engine.CheckFlags(0x100)},
	} {
		_, err := tc.cfg.WithDefaults()
		same(tc.what, err, tc.check)
	}
	if !strings.Contains(engine.CheckMTU(0).Error(), "mtu 0: want 1..67108864 bytes") {
		t.Errorf("CheckMTU(0): %v", engine.CheckMTU(0))
	}
	for _, v := range []int{-1, 0, 1, engine.MaxPorts - 1} {
		if err := engine.CheckWant(v); err != nil {
			t.Errorf("CheckWant(%d): %v", v, err)
		}
	}
	for _, v := range []int{-2, engine.MaxPorts} {
		if err := engine.CheckWant(v); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "-1 for any free port") {
			t.Errorf("CheckWant(%d): %v, want EINVAL", v, err)
		}
	}

	n, err := engine.New().Create("k", engine.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Release()
	same("resize", n.ChangeNumPorts(0), engine.CheckNumPorts(0))
	long := strings.Repeat("d", engine.MaxDescription+1)
	ep := endpointtest.New(1)
	defer ep.Close()
	_, err = n.Join(ep, engine.PortOptions{Want: -1, Description: long})
	same("description", err, engine.CheckDescription(len(long)))
	if err := engine.CheckDescription(engine.MaxDescription); err != nil {
		t.Errorf("CheckDescription(%d): %v", engine.MaxDescription, err)
	}
}
