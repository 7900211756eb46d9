package vxlan_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ipn-project/ipn/farend/vxlan"
	"github.com/ipn-project/ipn/internal/frametest"
)

// FuzzParseHeader parses any bytes as a VXLAN header: it is accepted when
// and only when there are 8 bytes and the flags byte is exactly the I
// flag, the VNI is bytes 4-6 big-endian (reserved bytes ignored), and
// PutHeader writes back the same flags and VNI with zero reserved bytes.
// Any VNI PutHeader writes parses back, cut to 24 bits.
func FuzzParseHeader(f *testing.F) {
	hdr := func(vni uint32) []byte {
		b := make([]byte, vxlan.HeaderLen)
		vxlan.PutHeader(b, vni)
		return b
	}
	f.Add(hdr(1), uint32(1))
	f.Add(hdr(vxlan.MaxVNI), uint32(vxlan.MaxVNI))
	f.Add(append(hdr(0x123456), "an ethernet frame"...), uint32(0x123456))
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0, 0, 7, 0xff}, uint32(7)) // reserved bytes set
	f.Add([]byte{0x0c, 0, 0, 0, 0, 0, 1, 0}, uint32(1))             // GPE
	f.Add([]byte{0x88, 0, 0, 0, 0, 0, 1, 0}, uint32(1<<24|1))       // GBP; a VNI past 24 bits
	f.Add([]byte{0x08, 0, 0, 0, 0, 0, 1}, uint32(0))
	f.Add([]byte{}, uint32(0xffffffff))

	f.Fuzz(func(t *testing.T, b []byte, vni uint32) {
		in := bytes.Clone(b)
		got, ok := vxlan.ParseHeader(b)
		if !bytes.Equal(in, b) {
			t.Fatal("ParseHeader modified its input")
		}
		if want := len(b) >= vxlan.HeaderLen && b[0] == vxlan.FlagVNI; ok != want {
			t.Fatalf("%x: ok %v, want %v", b, ok, want)
		}
		if !ok {
			if got != 0 {
				t.Fatalf("refused %x, yet VNI %d", b, got)
			}
		} else {
			if got > vxlan.MaxVNI || got != uint32(b[4])<<16|uint32(b[5])<<8|uint32(b[6]) {
				t.Fatalf("%x: VNI %#x", b, got)
			}
			re := make([]byte, vxlan.HeaderLen)
			vxlan.PutHeader(re, got)
			if want := []byte{vxlan.FlagVNI, 0, 0, 0, b[4], b[5], b[6], 0}; !bytes.Equal(re, want) {
				t.Fatalf("PutHeader(%#x) = %x, want %x", got, re, want)
			}
		}
		h := make([]byte, vxlan.HeaderLen+1)
		h[vxlan.HeaderLen] = 0xee
		vxlan.PutHeader(h, vni)
		if h[vxlan.HeaderLen] != 0xee {
			t.Fatal("PutHeader wrote past the header")
		}
		if v, ok := vxlan.ParseHeader(h); !ok || v != vni&vxlan.MaxVNI || h[1]|h[2]|h[3]|h[7] != 0 {
			t.Fatalf("PutHeader(%#x) = %x parses to %#x, %v", vni, h[:vxlan.HeaderLen], v, ok)
		}
	})
}

// fzVNI is the VNI of the endpoint FuzzDecap feeds: bytes that differ, so
// that a wrong byte order shows.
const fzVNI = 0x123456

// fzEther is an Ethernet frame from MAC 02:00:00:00:00:src with payload.
func fzEther(src byte, payload string) []byte {
	return append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, src, 0x88, 0xb5}, payload...)
}

// fzTunnel is a unicast endpoint on 127.0.0.1:port whose peer is
// 127.0.0.2:port, with a socket that is that peer and one that is a
// stranger (127.0.0.3, same port).
type fzTunnel struct {
	e        *vxlan.Endpoint
	peer     *net.UDPConn
	stranger *net.UDPConn
	to       netip.AddrPort
	seq      uint64
}

func fzOpenTunnel(f *testing.F) *fzTunnel {
	var lastErr error
	for try := 0; try < 20; try++ {
		tu, err := fzTryTunnel()
		if err == nil {
			f.Cleanup(func() {
				tu.e.Close()
				tu.peer.Close()
				tu.stranger.Close()
			})
			return tu
		}
		lastErr = err
	}
	f.Fatalf("no port for a loopback tunnel: %v", lastErr)
	return nil
}

// fzTryTunnel binds the peer's socket on a free port, then the stranger
// and the endpoint on the same port.
func fzTryTunnel() (*fzTunnel, error) {
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		return nil, err
	}
	port := peer.LocalAddr().(*net.UDPAddr).Port
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3), Port: port})
	if err != nil {
		peer.Close()
		return nil, err
	}
	spec := fmt.Sprintf("127.0.0.2:%d/vni=%d/local=127.0.0.1", port, fzVNI)
	ep, err := vxlan.Open(context.Background(), spec)
	if err != nil {
		peer.Close()
		stranger.Close()
		return nil, err
	}
	return &fzTunnel{
		e: ep.(*vxlan.Endpoint), peer: peer, stranger: stranger,
		to: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port)),
	}, nil
}

// FuzzDecap sends up to 8 datagrams of any bytes to a unicast endpoint on
// loopback, from its peer or from a stranger, then a marker frame from the
// peer, and reads with any number and size of buffers until the marker.
// The frames read are exactly, in order, those of the peer's datagrams
// whose flags are the I flag alone, whose VNI is the endpoint's and that
// carry at least an Ethernet header: each the datagram minus its header
// (with an inner checksum that its sender left to finish finished, see
// csum.go; on loopback no frame is long enough to be cut), or, when longer
// than the buffer, its first bytes and the size one past the buffer.
// Nothing from the stranger and nothing after the marker.
func FuzzDecap(f *testing.F) {
	good := frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther(1, "hello"))
	f.Add(frametest.Pack(good), uint8(0), uint16(1514), uint8(16))
	f.Add(frametest.Pack(good, good, good), uint8(0b010), uint16(1514), uint8(2)) // the middle one from the stranger
	f.Add(frametest.Pack(
		frametest.VXLAN(vxlan.FlagVNI, 0x563412, fzEther(2, "byte-swapped vni")),
		frametest.VXLAN(vxlan.FlagVNI, fzVNI+1, fzEther(3, "other vni")),
		frametest.VXLAN(0x0c, fzVNI, fzEther(4, "gpe flags")),
		frametest.VXLAN(0x88, fzVNI, fzEther(5, "gbp flags")),
		append([]byte{vxlan.FlagVNI, 1, 2, 3, 0x12, 0x34, 0x56, 4}, fzEther(6, "reserved bytes set")...),
		frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther(7, "")[:13]), // a runt
		frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther(8, "")),      // a bare header: accepted
	), uint8(0), uint16(1514), uint8(16))
	f.Add(frametest.Pack(good, good[:7], []byte{}, good[:8]), uint8(0), uint16(64), uint8(16)) // short datagrams after a good one
	f.Add(frametest.Pack(frametest.VXLAN(vxlan.FlagVNI, fzVNI, fzEther(9, string(bytes.Repeat([]byte("j"), 8900))))), uint8(0), uint16(1514), uint8(1))
	f.Add(frametest.Pack(good, good, good, good), uint8(0), uint16(14), uint8(3)) // truncated into 14-byte buffers
	f.Add(frametest.Pack(frametest.VXLAN(vxlan.FlagVNI, fzVNI, vxlan.PartialTCPFrame())), uint8(0), uint16(1514), uint8(1))

	tu := fzOpenTunnel(f)
	bufs := make([][]byte, vxlan.BatchSize)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16)
	}

	f.Fuzz(func(t *testing.T, packed []byte, strangers uint8, bufLen uint16, nbufs uint8) {
		ds := frametest.Unpack(packed)
		size := max(int(bufLen), vxlan.EthHeaderLen)
		nb := int(nbufs%vxlan.BatchSize) + 1
		var want []frametest.Frame
		for i, d := range ds {
			from := tu.peer
			if strangers&(1<<i) != 0 {
				from = tu.stranger
			}
			if _, err := from.WriteToUDPAddrPort(d, tu.to); err != nil {
				t.Fatal(err)
			}
			vni, ok := vxlan.ParseHeader(d)
			if from == tu.stranger || !ok || vni != fzVNI || len(d)-vxlan.HeaderLen < vxlan.EthHeaderLen {
				continue
			}
			fr := bytes.Clone(d[vxlan.HeaderLen:])
			vxlan.FinishPartial(fr)
			if len(fr) > size {
				want = append(want, frametest.Frame{Size: size + 1, Data: fr[:size]})
			} else {
				want = append(want, frametest.Frame{Size: len(fr), Data: fr})
			}
		}
		// The marker: 14 bytes that carry a number no input has.
		tu.seq++
		marker := make([]byte, vxlan.EthHeaderLen)
		binary.BigEndian.PutUint64(marker, tu.seq)
		copy(marker[8:], []byte{0xfe, 0xed, 0xfa, 0xce, 0x88, 0xb5})
		if _, err := tu.peer.WriteToUDPAddrPort(frametest.VXLAN(vxlan.FlagVNI, fzVNI, marker), tu.to); err != nil {
			t.Fatal(err)
		}

		watchdog := time.AfterFunc(10*time.Second, func() { tu.e.Close() })
		defer watchdog.Stop()
		rbufs := make([][]byte, nb)
		for i := range rbufs {
			rbufs[i] = bufs[i][:size]
		}
		frametest.Expect(t, frametest.ReadUntil(t, tu.e, rbufs, size, vxlan.EthHeaderLen, marker), want)
	})
}
