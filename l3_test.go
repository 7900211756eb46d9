package ipn_test

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/ipn-project/ipn"
)

// l3Net binds and connects a layer-3 switch network at a fresh path.
func l3Net(t *testing.T) (string, *ipn.Socket) {
	t.Helper()
	path := filepath.Join(tempDir(t), "l3")
	return path, bindAt(t, ipn.VDESwitchL3, path, nil, true)
}

// l3Host is a member with its addresses: MAC 02:00:00:00:01:i, 10.1.0.i,
// fd01::i.
type l3Host struct {
	s   *ipn.Socket
	mac []byte
	ip4 []byte
	ip6 []byte
}

func l3NewHost(s *ipn.Socket, i byte) l3Host {
	ip6 := make([]byte, 16)
	ip6[0], ip6[1], ip6[15] = 0xfd, 0x01, i
	return l3Host{s, []byte{2, 0, 0, 0, 1, i}, []byte{10, 1, 0, i}, ip6}
}

var l3Broadcast = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func l3Eth(dst, src []byte, typ uint16, payload []byte) []byte {
	f := append(append([]byte(nil), dst...), src...)
	f = binary.BigEndian.AppendUint16(f, typ)
	return append(f, payload...)
}

func l3IPv4(dst []byte, from, to l3Host, payload string) []byte {
	h := make([]byte, 20)
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:4], uint16(20+len(payload)))
	h[8], h[9] = 64, 17
	copy(h[12:16], from.ip4)
	copy(h[16:20], to.ip4)
	return l3Eth(dst, from.mac, 0x0800, append(h, payload...))
}

func l3IPv6(dst []byte, from, to l3Host, payload string) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(len(payload)))
	h[6], h[7] = 17, 64
	copy(h[8:24], from.ip6)
	copy(h[24:40], to.ip6)
	return l3Eth(dst, from.mac, 0x86dd, append(h, payload...))
}

func l3ARP(dst []byte, op uint16, sha, spa, tha, tpa []byte) []byte {
	a := []byte{0, 1, 8, 0, 6, 4, byte(op >> 8), byte(op)}
	a = append(append(append(append(a, sha...), spa...), tha...), tpa...)
	return l3Eth(dst, sha, 0x0806, a)
}

func l3Send(t *testing.T, h l3Host, f []byte) {
	t.Helper()
	if err := h.s.Send(f); err != nil {
		t.Fatal(err)
	}
}

func l3Expect(t *testing.T, h l3Host, want []byte) {
	t.Helper()
	if got := recvString(t, h.s); got != string(want) {
		t.Fatalf("host %x got\n%x\nwant\n%x", h.mac, got, want)
	}
}

func l3WithDst(f, dst []byte) []byte {
	g := append([]byte(nil), f...)
	copy(g, dst)
	return g
}

func TestL3SwitchForwardsByIPAndAnswersARP(t *testing.T) {
	path, s := l3Net(t)
	obs := l3NewHost(s, 3) // the binder, a member that only watches
	a := l3NewHost(member(t, path, nil), 1)
	b := l3NewHost(member(t, path, nil), 2)

	// B announces itself: a gratuitous ARP, flooded.
	g := l3ARP(l3Broadcast, 1, b.mac, b.ip4, make([]byte, 6), b.ip4)
	l3Send(t, b, g)
	l3Expect(t, a, g)
	l3Expect(t, obs, g)

	// IPv4 to B's address, sent to the broadcast MAC: B alone gets it,
	// addressed to its MAC.
	p := l3IPv4(l3Broadcast, a, b, "hello b")
	l3Send(t, a, p)
	l3Expect(t, b, l3WithDst(p, b.mac))
	// B answers A, now learnt.
	q := l3IPv4(a.mac, b, a, "hello a")
	l3Send(t, b, q)
	l3Expect(t, a, q)

	// IPv6: B's address is not known yet, its MAC is: to B only. Then B
	// answers to the broadcast MAC and A, learnt by the first packet, alone
	// gets it with its own MAC.
	p6 := l3IPv6(b.mac, a, b, "hello b over v6")
	l3Send(t, a, p6)
	l3Expect(t, b, p6)
	q6 := l3IPv6(l3Broadcast, b, a, "hello a over v6")
	l3Send(t, b, q6)
	l3Expect(t, a, l3WithDst(q6, a.mac))

	// A asks for B's IPv4 address: the switch answers for B.
	l3Send(t, a, l3ARP(l3Broadcast, 1, a.mac, a.ip4, make([]byte, 6), b.ip4))
	reply := make([]byte, 60)
	copy(reply, l3ARP(a.mac, 2, b.mac, b.ip4, a.mac, a.ip4))
	l3Expect(t, a, reply)

	// Nobody saw what was not theirs, nor their own frames.
	expectNothing(t, obs.s)
	expectNothing(t, a.s)
	expectNothing(t, b.s)
}
