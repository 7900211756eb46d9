package vxvde_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/ipn-project/ipn/farend/vxlan"
	"github.com/ipn-project/ipn/farend/vxvde"
	"github.com/ipn-project/ipn/internal/frametest"
)

// fzVNI is the VNI of the member FuzzReceive feeds: bytes that differ, so
// that a wrong byte order shows.
const fzVNI = 0x123456

// fzGroup is the member's group, joined on lo.
var fzGroup = netip.MustParseAddr("239.255.86.1")

// fzEther is a broadcast Ethernet frame from src with payload.
func fzEther(src []byte, payload string) []byte {
	return append(append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, src...), append([]byte{0x88, 0xb5}, payload...)...)
}

// fzMarkerMAC is learnt behind the sender before each input: a leave
// must make the member forget it.
var fzMarkerMAC = []byte{2, 0, 0x5e, 0, 0, 1}

// fzSwitch is a member on lo and a socket that plays another member.
type fzSwitch struct {
	e     *vxvde.Endpoint
	other *net.UDPConn
	src   netip.AddrPort // other's address
	group netip.AddrPort
	uni   netip.AddrPort // the member's unicast socket
	seq   uint64
}

func fzOpenSwitch(f *testing.F) *fzSwitch {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		f.Skipf("no loopback interface: %v", err)
	}
	var e *vxvde.Endpoint
	var port int
	var lastErr error
	for try := 0; try < 20 && e == nil; try++ {
		// A port free a moment ago, for the group.
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			f.Fatal(err)
		}
		port = c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
		ep, err := vxvde.Open(context.Background(), fmt.Sprintf("%v:%d/vni=%d/if=lo", fzGroup, port, fzVNI))
		if err != nil {
			lastErr = err
			continue
		}
		e = ep.(*vxvde.Endpoint)
	}
	if e == nil {
		f.Fatalf("open a member on lo: %v", lastErr)
	}
	f.Cleanup(func() { e.Close() })
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { other.Close() })
	if err := ipv4.NewPacketConn(other).SetMulticastInterface(lo); err != nil {
		f.Fatal(err)
	}
	src := other.LocalAddr().(*net.UDPAddr).AddrPort()
	return &fzSwitch{
		e: e, other: other,
		src:   netip.AddrPortFrom(src.Addr().Unmap(), src.Port()),
		group: netip.AddrPortFrom(fzGroup, uint16(port)),
		uni:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), e.UnicastAddr().AddrPort().Port()),
	}
}

// FuzzReceive sends up to 8 datagrams of any bytes to a member, to its
// group or to its unicast socket, from another member, then a marker
// frame, and reads with any number and size of buffers until the marker.
// The frames read are exactly, in order, those of datagrams whose flags
// are the I flag alone, whose VNI is the member's and that carry at least
// an Ethernet header: each the datagram minus its header, or, when longer
// than the buffer, its first bytes and the size one past the buffer. A
// header alone with the member's VNI (a leave) delivers nothing and makes
// the member forget the MACs behind the sender; one with another VNI or
// flags does not. A delivered frame's source MAC, unless a group MAC, is
// learnt behind the sender.
func FuzzReceive(f *testing.F) {
	good := frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther([]byte{2, 0, 0, 0, 0, 7}, "hello"))
	leave := frametest.VXLAN(vxlan.FlagVNI, fzVNI, nil)
	f.Add(frametest.Pack(good), false, uint16(1514), uint8(16))
	f.Add(frametest.Pack(good), true, uint16(1514), uint8(16))
	f.Add(frametest.Pack(good, leave, good), true, uint16(1514), uint8(1))
	f.Add(frametest.Pack(leave), false, uint16(1514), uint8(16))
	f.Add(frametest.Pack(frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther(fzMarkerMAC, "relearn")), leave, frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther(fzMarkerMAC, "again"))), false, uint16(100), uint8(2))
	f.Add(frametest.Pack(
		frametest.VXLAN(vxlan.FlagVNI, fzVNI+1, nil), // another VNI's leave
		frametest.VXLAN(0x0c, fzVNI, nil),            // a leave with other flags
		frametest.VXLAN(vxlan.FlagVNI, 0x563412, fzEther([]byte{2, 0, 0, 0, 0, 8}, "byte-swapped vni")),
		frametest.VXLAN(0x88, fzVNI, fzEther([]byte{2, 0, 0, 0, 0, 9}, "gbp flags")),
		append([]byte{vxlan.FlagVNI, 1, 2, 3, 0x12, 0x34, 0x56, 4}, fzEther([]byte{2, 0, 0, 0, 0, 10}, "reserved bytes")...),
		frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther([]byte{2, 0, 0, 0, 0, 11}, "")[:13]), // a runt
		frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther([]byte{3, 0, 0, 0, 0, 12}, "")),      // from a group MAC
		leave[:7],
	), true, uint16(1514), uint8(16))
	f.Add(frametest.Pack(good, good, good), false, uint16(14), uint8(2)) // truncated
	f.Add(frametest.Pack(frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther([]byte{2, 0, 0, 0, 0, 13}, string(bytes.Repeat([]byte("j"), 8900))))), true, uint16(9000), uint8(1))

	sw := fzOpenSwitch(f)
	bufs := make([][]byte, vxvde.BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16)
	}

	f.Fuzz(func(t *testing.T, packed []byte, toGroup bool, bufLen uint16, nbufs uint8) {
		fdb := sw.e.FDB()
		defer fdb.Forget(sw.src) // the next input starts with nothing learnt
		fdb.Learn(fzMarkerMAC, sw.src)
		to := sw.uni
		if toGroup {
			to = sw.group
		}
		ds := frametest.Unpack(packed)
		size := max(int(bufLen), vxlan.EthHeaderLen)
		nb := int(nbufs%vxvde.BatchSize) + 1

		var want []frametest.Frame
		learnt := map[[6]byte]bool{[6]byte(fzMarkerMAC): true}
		for _, d := range ds {
			if _, err := sw.other.WriteToUDPAddrPort(d, to); err != nil {
				t.Fatal(err)
			}
			vni, ok := vxlan.ParseHeader(d)
			switch {
			case !ok || vni != fzVNI:
			case len(d) == vxlan.HeaderLen:
				for m := range learnt {
					learnt[m] = false
				}
			case len(d)-vxlan.HeaderLen >= vxlan.EthHeaderLen:
				fr := d[vxlan.HeaderLen:]
				if fr[6]&1 == 0 {
					learnt[[6]byte(fr[6:12])] = true
				}
				if len(fr) > size {
					want = append(want, frametest.Frame{Size: size + 1, Data: fr[:size]})
				} else {
					want = append(want, frametest.Frame{Size: len(fr), Data: fr})
				}
			}
		}
		// The marker: 14 bytes that carry a number no input has, from a
		// group MAC, which is never learnt.
		sw.seq++
		marker := make([]byte, vxlan.EthHeaderLen)
		binary.BigEndian.PutUint64(marker, sw.seq)
		copy(marker[6:], []byte{3, 0xfe, 0xed, 0xfa, 0xce, 1, 0x88, 0xb5})
		if _, err := sw.other.WriteToUDPAddrPort(frametest.VXLAN(vxlan.FlagVNI, fzVNI, marker), to); err != nil {
			t.Fatal(err)
		}

		watchdog := time.AfterFunc(10*time.Second, func() { sw.e.Close() })
		defer watchdog.Stop()
		rbufs := make([][]byte, nb)
		for i := range rbufs {
			rbufs[i] = bufs[i][:size]
		}
		frametest.Expect(t, frametest.ReadUntil(t, sw.e, rbufs, size, vxlan.EthHeaderLen, marker), want)
		// The marker was queued after every datagram before it on the same
		// socket: what they taught the member is in its table now.
		for m, l := range learnt {
			a := fdb.Lookup(m[:])
			if !l {
				if a != nil {
					t.Fatalf("MAC %x still at %v after a leave", m, a)
				}
				continue
			}
			if a == nil || a.AddrPort() != sw.src {
				t.Fatalf("MAC %x learnt at %v, want %v", m, a, sw.src)
			}
		}
	})
}
