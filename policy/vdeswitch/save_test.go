package vdeswitch

import (
	"testing"
	"time"
)

// A switch restored from another's state forwards as the first did: its
// MAC table (with its entries' ages), VLANs and settings came along.
func TestSaveRestore(t *testing.T) {
	r := newRig(t, 4)
	for _, o := range [][2]string{{"vlan.add", "7"}, {"port.vlan", "2 7"}, {"expire", "90s"}, {"hashsize", "512"}} {
		if err := r.sw.SetOption(o[0], o[1]); err != nil {
			t.Fatalf("%s %s: %v", o[0], o[1], err)
		}
	}
	r.send(0, frame(bcast, mac(0), "learn 0"))
	r.send(1, frame(bcast, mac(1), "learn 1"))
	r.clk.t = r.clk.t.Add(80 * time.Second)
	r.send(1, frame(bcast, mac(1), "1 again")) // 0's entry is 80s old, 1's new
	b, err := r.sw.Save()
	if err != nil {
		t.Fatal(err)
	}

	r2 := newRig(t, 4)
	r2.clk.t = r.clk.t.Add(time.Hour) // another clock altogether
	if err := r2.sw.Restore(b); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"vlans", "expire", "hashsize"} {
		want, _ := r.sw.Option(name)
		if got, _ := r2.sw.Option(name); got != want {
			t.Errorf("%s restored %q, want %q", name, got, want)
		}
	}
	r2.expect(r2.send(3, frame(mac(0), mac(3), "to 0")), 0)
	r2.expect(r2.send(3, frame(mac(1), mac(3), "to 1")), 1)
	// Port 2 is on VLAN 7 alone: it does not hear VLAN 1's flood.
	r2.expect(r2.send(3, frame(bcast, mac(3), "flood")), 0, 1)
	// 0's entry kept its age: it expires 10s later, 1's does not.
	r2.clk.t = r2.clk.t.Add(11 * time.Second)
	r2.expect(r2.send(3, frame(mac(0), mac(3), "to 0, expired")), 0, 1)
	r2.expect(r2.send(3, frame(mac(1), mac(3), "to 1, still")), 1)

	if err := r2.sw.Restore([]byte(`{"Expire":1,"HashSize":512}`)); err == nil {
		t.Error("restored an expire of 1ns")
	}
}
