package engine_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/policy"
	_ "github.com/ipn-project/ipn/policy/vdeswitch"
)

// joinEP joins ep to n, until the test ends.
func joinEP(t *testing.T, n *engine.Network, ep endpoint.Endpoint) *engine.Port {
	t.Helper()
	p, err := n.Join(ep, engine.PortOptions{Want: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// vframe is a frame with its virtio-net header.
type vframe struct {
	b []byte
	h vnet.Hdr
}

// offEP is a node with offloads (as a tap with IFF_VNET_HDR): frames
// move with their headers, through its writer only.
type offEP struct {
	in, out chan vframe
	stop    chan struct{}
}

func newOffEP() *offEP {
	return &offEP{in: make(chan vframe, 64), out: make(chan vframe, 256), stop: make(chan struct{})}
}

func (e *offEP) Offloads() bool { return true }

func (e *offEP) ReadOffload(bufs [][]byte, sizes []int, hdrs []vnet.Hdr) (int, error) {
	select {
	case f := <-e.in:
		sizes[0] = copy(bufs[0], f.b)
		if len(f.b) > len(bufs[0]) {
			sizes[0] = len(f.b)
		}
		hdrs[0] = f.h
		return 1, nil
	case <-e.stop:
		return 0, io.EOF
	}
}

func (e *offEP) WriteOffload(msgs [][]byte, hdrs []vnet.Hdr) (int, error) {
	for i, m := range msgs {
		select {
		case e.out <- vframe{append([]byte(nil), m...), hdrs[i]}:
		case <-e.stop:
			return i, io.EOF
		}
	}
	return len(msgs), nil
}

func (e *offEP) Read(bufs [][]byte, sizes []int) (int, error) {
	panic("the engine reads an endpoint with offloads with ReadOffload")
}

func (e *offEP) Write(msgs [][]byte) (int, error) {
	panic("the engine writes an endpoint with offloads with WriteOffload")
}

func (e *offEP) BatchSize() int { return 8 }

func (e *offEP) Close() error {
	select {
	case <-e.stop:
	default:
		close(e.stop)
	}
	return nil
}

// offDirectEP is an offEP that takes messages inline, as a tap does.
type offDirectEP struct{ *offEP }

var (
	_ endpoint.Offloader         = (*offEP)(nil)
	_ endpoint.DirectOffloader   = offDirectEP{}
	_ endpoint.DirectBatchWriter = offDirectEP{}
)

func (e offDirectEP) WriteDirect(m []byte) bool { return e.WriteDirectOffload(m, vnet.Hdr{}) }

func (e offDirectEP) WriteDirectOffload(m []byte, h vnet.Hdr) bool {
	select {
	case e.out <- vframe{append([]byte(nil), m...), h}:
		return true
	default:
		return false
	}
}

func (e offDirectEP) WriteDirectBatch(msgs [][]byte, hdrs []vnet.Hdr) int {
	n := 0
	for i, m := range msgs {
		if e.WriteDirectOffload(m, hdrs[i]) {
			n++
		}
	}
	return n
}

// superFrame returns a TCP over IPv4 super-frame of payload bytes from
// MAC src to MAC dst, to be cut at mss, as a tap with TSO hands it over:
// the TCP checksum field holds the pseudo-header's sum.
func superFrame(src, dst byte, payload, mss int) vframe {
	b := make([]byte, 14+20+20+payload)
	copy(b[0:6], []byte{2, 0, 0, 0, 0, dst})
	copy(b[6:12], []byte{2, 0, 0, 0, 0, src})
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+payload))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	copy(ip[12:16], []byte{10, 0, 0, src})
	copy(ip[16:20], []byte{10, 0, 0, dst})
	binary.BigEndian.PutUint16(ip[10:], ^fold(sum(ip[:20])))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5001)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	binary.BigEndian.PutUint32(tcp[8:], 77)
	tcp[12], tcp[13] = 5<<4, 0x18 // ACK|PSH
	binary.BigEndian.PutUint16(tcp[14:], 512)
	for i := range payload {
		tcp[20+i] = byte(i * 7)
	}
	binary.BigEndian.PutUint16(tcp[16:], fold(pseudo(ip, 20+payload)))
	h := vnet.Hdr{Flags: vnet.FlagNeedsCsum, CsumStart: 34, CsumOffset: 16, HdrLen: 54}
	if payload > mss {
		h.GSOType, h.GSOSize = vnet.GSOTCPv4, uint16(mss)
	}
	return vframe{b, h}
}

func sum(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func pseudo(ip []byte, l4len int) uint32 {
	return sum(ip[12:20]) + 6 + uint32(l4len)
}

// checkSegment checks that f is an ordinary TCP/IPv4 frame of at most mtu
// bytes whose IP and TCP checksums verify, and returns its payload.
func checkSegment(t *testing.T, f []byte, mtu int) []byte {
	t.Helper()
	if len(f) > mtu {
		t.Fatalf("segment of %d bytes, more than the MTU %d", len(f), mtu)
	}
	ip := f[14:]
	if fold(sum(ip[:20])) != 0xffff {
		t.Fatalf("IPv4 header checksum does not verify")
	}
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total != len(ip) {
		t.Fatalf("IPv4 total length %d, frame holds %d", total, len(ip))
	}
	if fold(sum(ip[20:total])+pseudo(ip, total-20)) != 0xffff {
		t.Fatalf("TCP checksum does not verify")
	}
	return ip[40:total]
}

func recvV(t *testing.T, c <-chan vframe) vframe {
	t.Helper()
	select {
	case f := <-c:
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("no frame")
		return vframe{}
	}
}

// A super-frame from a port with offloads reaches another such port whole,
// with its header, inline or through its writer, and every port without
// offloads as ordinary segments of at most the MTU whose checksums
// verify, holding the same bytes; a frame whose checksum was left to
// finish arrives finished.
func TestOffloadSuperFrames(t *testing.T) {
	for _, lossless := range []bool{false, true} {
		name := "lossy"
		var flags engine.Flags
		if lossless {
			name, flags = "lossless", engine.Lossless
		}
		t.Run(name, func(t *testing.T) {
			_, n := create(t, engine.Config{Flags: flags})
			src := newOffEP()
			joinEP(t, n, src)
			off, direct := newOffEP(), offDirectEP{newOffEP()}
			joinEP(t, n, off)
			joinEP(t, n, direct)
			plain := join(t, n, engine.PortOptions{})

			for _, size := range []int{10000, 700, 65000} {
				f := superFrame(1, 2, size, 1448)
				src.in <- f
				for _, got := range []vframe{recvV(t, off.out), recvV(t, direct.out)} {
					if !bytes.Equal(got.b, f.b) || got.h != f.h {
						t.Fatalf("%d bytes: a port with offloads got %d bytes, header %+v; want the frame whole, header %+v", size, len(got.b), got.h, f.h)
					}
				}
				var payload []byte
				for len(payload) < size {
					seg, err := plain.ep.Recv(ctx(t))
					if err != nil {
						t.Fatalf("%d bytes: after %d: %v", size, len(payload), err)
					}
					payload = append(payload, checkSegment(t, seg, 1514)...)
				}
				if !bytes.Equal(payload, f.b[54:]) {
					t.Fatalf("%d bytes: the segments' payload differs from the super-frame's", size)
				}
			}
		})
	}
}

// A plain frame from a port without offloads reaches a port with them with
// an ordinary frame's header.
func TestOffloadPlainToOffload(t *testing.T) {
	_, n := create(t, engine.Config{})
	plain := join(t, n, engine.PortOptions{})
	off := newOffEP()
	joinEP(t, n, off)
	f := []byte("an ordinary frame, from a port without offloads")
	if err := plain.ep.Inject(ctx(t), f); err != nil {
		t.Fatal(err)
	}
	got := recvV(t, off.out)
	if !bytes.Equal(got.b, f) || got.h != (vnet.Hdr{}) {
		t.Fatalf("got %q with header %+v, want %q with none", got.b, got.h, f)
	}
}

// A port with offloads may send frames longer than the MTU only as
// super-frames: another is refused, and counted.
func TestOffloadLongFrameRefused(t *testing.T) {
	_, n := create(t, engine.Config{})
	src := newOffEP()
	sp := joinEP(t, n, src)
	plain := join(t, n, engine.PortOptions{})
	long := superFrame(1, 2, 3000, 1448)
	long.h = vnet.Hdr{}
	src.in <- long
	src.in <- superFrame(1, 2, 100, 1448) // then a short one, which passes
	seg, err := plain.ep.Recv(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(seg) != 14+40+100 {
		t.Fatalf("got a frame of %d bytes, want the short one (154)", len(seg))
	}
	if st := sp.Stats(); st.Errors != 1 {
		t.Fatalf("errors %d, want 1 (the long frame)", st.Errors)
	}
}

// A super-frame with a header its frame belies is refused at the ports
// that would cut it, counted, and harms nothing after it.
func TestOffloadBadHeader(t *testing.T) {
	_, n := create(t, engine.Config{})
	src := newOffEP()
	joinEP(t, n, src)
	plain := join(t, n, engine.PortOptions{})
	bad := superFrame(1, 2, 5000, 1448)
	bad.h.CsumStart = 60000
	src.in <- bad
	good := superFrame(1, 2, 3000, 1448)
	src.in <- good
	var payload []byte
	for len(payload) < 3000 {
		seg, err := plain.ep.Recv(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		payload = append(payload, checkSegment(t, seg, 1514)...)
	}
	if !bytes.Equal(payload, good.b[54:]) {
		t.Fatal("the good super-frame's segments differ")
	}
	waitCond(t, func() bool { return plainErrs(n) == 1 })
}

func plainErrs(n *engine.Network) uint64 {
	var errs uint64
	for _, p := range n.Ports() {
		errs += p.Stats().Errors
	}
	return errs
}

func waitCond(t *testing.T, cond func() bool) {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-c.Done():
			t.Fatal("condition not met in 5 s")
		case <-time.After(time.Millisecond):
		}
	}
}

// On a switch, a super-frame to a trunk port gets a VLAN tag, and its
// header the 4 bytes more: it still cuts into valid segments.
func TestOffloadVLANForm(t *testing.T) {
	e := engine.New()
	n, err := e.Create("sw", engine.Config{Proto: policy.VDESwitch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Release)
	src := newOffEP()
	sp := joinEP(t, n, src)
	trunk := join(t, n, engine.PortOptions{})
	for _, o := range [][2]string{{"vlan.add", "10"}, {"port.vlan", fmt.Sprintf("%d 10", sp.Num())}, {"port.trunk", fmt.Sprintf("%d 10", trunk.port.Num())}} {
		if err := n.SetPolicyOption(o[0], o[1]); err != nil {
			t.Fatalf("%s %s: %v", o[0], o[1], err)
		}
	}
	f := superFrame(1, 2, 5000, 1448)
	src.in <- f
	var payload []byte
	for len(payload) < 5000 {
		seg, err := trunk.ep.Recv(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint16(seg[12:]) != 0x8100 || binary.BigEndian.Uint16(seg[14:])&0xfff != 10 {
			t.Fatalf("a segment to the trunk without the tag of VLAN 10: % x", seg[:18])
		}
		untagged := append(append([]byte(nil), seg[:12]...), seg[16:]...)
		payload = append(payload, checkSegment(t, untagged, 1514)...)
	}
	if !bytes.Equal(payload, f.b[54:]) {
		t.Fatal("the tagged segments' payload differs from the super-frame's")
	}
}

// What a hostile tap could hand over is refused at its port, counted, and
// harms nothing: a super-frame whose segments are over the MTU, one cut
// into thousands of segments, one without its checksum to finish; and a
// port with offloads on a network of big messages reads without fault.
func TestOffloadRefusesWhatTheMTUForbids(t *testing.T) {
	for _, mtu := range []int{1514, 1 << 20} {
		_, n := create(t, engine.Config{MTU: mtu})
		src := newOffEP()
		sp := joinEP(t, n, src)
		plain := join(t, n, engine.PortOptions{})
		wide := superFrame(1, 2, 30000, 9000) // segments of 9054 bytes
		tiny := superFrame(1, 2, 30000, 1)    // 30000 segments
		bare := superFrame(1, 2, 30000, 1448)
		bare.h.Flags = 0
		bad := []vframe{wide, tiny, bare}
		if mtu > 9054 {
			bad = bad[1:] // the wide one's segments fit
		}
		for _, f := range bad {
			src.in <- f
		}
		good := superFrame(1, 2, 3000, 1448)
		src.in <- good
		var payload []byte
		for len(payload) < 3000 {
			seg, err := plain.ep.Recv(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(seg) > 14+40+1448 && mtu == 1514 {
				t.Fatalf("MTU %d: a segment of %d bytes", mtu, len(seg))
			}
			payload = append(payload, checkSegment(t, seg, mtu)...)
		}
		if !bytes.Equal(payload, good.b[54:]) {
			t.Fatalf("MTU %d: the good super-frame's segments differ", mtu)
		}
		waitCond(t, func() bool { return sp.Stats().Errors == uint64(len(bad)) })
	}
}

// A port with offloads has at most engine.MaxSuperFrames of its
// super-frames alive: while a receiver holds them, more are dropped at the
// port, counted; once it reads, they flow again.
func TestOffloadSuperFramesBounded(t *testing.T) {
	_, n := create(t, engine.Config{PoolSize: 64})
	src := newOffEP()
	sp := joinEP(t, n, src)
	slow := newOffEP() // its writer takes nothing until the test reads
	slow.out = make(chan vframe)
	joinEP(t, n, slow)
	for range engine.MaxSuperFrames + 4 {
		src.in <- superFrame(1, 2, 10000, 1448)
	}
	waitCond(t, func() bool { return sp.Stats().Drops >= 3 })
	for range engine.MaxSuperFrames {
		recvV(t, slow.out)
	}
	src.in <- superFrame(1, 2, 10000, 1448)
	recvV(t, slow.out)
}
