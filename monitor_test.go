package ipn_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/ipn-project/ipn"
)

// icmpFrame is an ICMP echo request (or reply) from src to dst, between
// 10.0.0.1 (macA) and 10.0.0.2 (macB).
func icmpFrame(t *testing.T, reply bool) []byte {
	typ, src, dst, ips, ipd := uint8(layers.ICMPv4TypeEchoRequest), macA, macB, net.IP{10, 0, 0, 1}, net.IP{10, 0, 0, 2}
	if reply {
		typ, src, dst, ips, ipd = layers.ICMPv4TypeEchoReply, macB, macA, ipd, ips
	}
	return serialize(t,
		&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: ips, DstIP: ipd},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: 1, Seq: 1},
		gopacket.Payload("ping"))
}

// arpReplyFrame is macB's answer to arpRequestFrame.
func arpReplyFrame(t *testing.T) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: macB, DstMAC: macA, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPReply,
			SourceHwAddress: macB, SourceProtAddress: net.IP{10, 0, 0, 2}.To4(),
			DstHwAddress: macA, DstProtAddress: net.IP{10, 0, 0, 1}.To4(),
		})
}

// tcpFrame is a TCP SYN from 10.0.0.1 (macA) to 10.0.0.2 (macB).
func tcpFrame(t *testing.T) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Seq: 1, Window: 1024}
	tcp.SetNetworkLayerForChecksum(ip)
	return serialize(t, &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}, ip, tcp)
}

// expectMsg checks that s's next message is want.
func expectMsg(t *testing.T, name string, s *ipn.Socket, want []byte) {
	t.Helper()
	if got := recvString(t, s); got != string(want) {
		t.Fatalf("%s got\n%x, want\n%x", name, got, want)
	}
}

// monitor joins path as a monitor port, receive-only.
func monitor(t *testing.T, path string) *ipn.Socket {
	t.Helper()
	return member(t, path, func(s *ipn.Socket) {
		if err := s.SetMonitor(true); err != nil {
			t.Fatal(err)
		}
		if err := s.Shutdown(ipn.ShutWrite); err != nil {
			t.Fatal(err)
		}
	})
}

// learnt returns a switch network with members a (macA), b (macB) and c,
// whose MACs the switch has learnt, so that a and b's unicast frames go to
// each other only.
func learnt(t *testing.T) (path string, a, b, c *ipn.Socket) {
	t.Helper()
	path = switchNet(t, "0")
	a, b, c = member(t, path, nil), member(t, path, nil), member(t, path, nil)
	fromA, fromB := arpRequestFrame(t), ethFrame(bcast, macB, "b is here")
	sendAll(t, a, fromA)
	expectMsg(t, "b", b, fromA)
	expectMsg(t, "c", c, fromA)
	sendAll(t, b, fromB)
	expectMsg(t, "a", a, fromB)
	expectMsg(t, "c", c, fromB)
	return path, a, b, c
}

// On a switch, a monitor port gets the unicast frames the members
// exchange, which the switch delivers to no one else; so does ipn dump.
func TestMonitorSeesSwitchUnicast(t *testing.T) {
	path, a, b, c := learnt(t)
	mon := monitor(t, path)
	p := startDump(t, path, 4, "-c", "5")

	// A ping, an ARP answer and a TCP SYN, each waited for by its
	// receiver: the order the monitors see them in is known.
	marker := ethFrame(bcast, macA, "marker")
	steps := []struct {
		from, to *ipn.Socket
		frame    []byte
	}{
		{a, b, icmpFrame(t, false)}, {b, a, icmpFrame(t, true)},
		{b, a, arpReplyFrame(t)}, {a, b, tcpFrame(t)},
	}
	for _, st := range steps {
		sendAll(t, st.from, st.frame)
		expectMsg(t, "receiver", st.to, st.frame)
	}
	sendAll(t, a, marker)
	expectMsg(t, "b", b, marker)
	expectMsg(t, "c", c, marker) // the switch did not flood the unicast frames

	for i, st := range steps {
		expectMsg(t, fmt.Sprintf("monitor, frame %d", i+1), mon, st.frame)
	}
	expectMsg(t, "monitor", mon, marker)
	expectNothing(t, mon)

	if err := p.wait(15 * time.Second); err != nil {
		t.Fatalf("ipn dump: %v: %s", err, p.stderr())
	}
	lines := drain(p)
	want := []string{
		"02:00:00:00:00:01 > 02:00:00:00:00:02, IPv4 10.0.0.1 > 10.0.0.2: ICMP EchoRequest id 1 seq 1",
		"02:00:00:00:00:02 > 02:00:00:00:00:01, IPv4 10.0.0.2 > 10.0.0.1: ICMP EchoReply id 1 seq 1",
		"02:00:00:00:00:02 > 02:00:00:00:00:01, ARP 10.0.0.2 is-at 02:00:00:00:00:02",
		"02:00:00:00:00:01 > 02:00:00:00:00:02, IPv4 10.0.0.1 > 10.0.0.2: TCP 40000 > 80 [S] length 0",
		"02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ",
	}
	if len(lines) != len(want) {
		t.Fatalf("ipn dump printed %d lines, want %d:\n%s\nstderr: %s", len(lines), len(want), strings.Join(lines, "\n"), p.stderr())
	}
	for i, l := range lines {
		if !strings.HasPrefix(dumpTime.ReplaceAllString(l, ""), want[i]) {
			t.Errorf("line %d:\n got %q\nwant %q after the time", i+1, l, want[i])
		}
	}
	if strings.Contains(p.stderr(), "no monitor port") {
		t.Errorf("ipn dump, with x, fell back to an ordinary port: %s", p.stderr())
	}
}

// In a lossless network, a monitor that never reads does not stop the
// senders: it loses what it has no room for, the members nothing.
func TestMonitorDoesNotStopLosslessSenders(t *testing.T) {
	path, s := bindNet(t, func(s *ipn.Socket) {
		s.SetFlags(ipn.Lossless)
		s.SetMsgPoolSize(4)
	})
	if err := s.Shutdown(ipn.ShutRead); err != nil {
		t.Fatal(err)
	}
	r := member(t, path, func(s *ipn.Socket) { s.Shutdown(ipn.ShutWrite) })
	mon := monitor(t, path) // never reads
	const total, size = 5000, 1000
	sent := make(chan error, 1)
	go func() {
		msg := make([]byte, size)
		for i := range total {
			msg[0], msg[1] = byte(i), byte(i>>8)
			if err := s.Send(msg); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	r.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 2*size)
	for i := range total {
		n, _, err := r.Recv(buf)
		if err != nil {
			t.Fatalf("message %d: %v (does the monitor hold the sender?)", i, err)
		}
		if n != size || buf[0] != byte(i) || buf[1] != byte(i>>8) {
			t.Fatalf("message %d: %d bytes %x", i, n, buf[:2])
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	nets, err := ipn.List(path)
	if err != nil || len(nets) != 1 {
		t.Fatalf("list: %v %v", nets, err)
	}
	if d := portByNum(nets[0], r.Port()).Drops; d != 0 {
		t.Errorf("the member dropped %d", d)
	}
	if d := portByNum(nets[0], mon.Port()).Drops; d == 0 {
		t.Errorf("the monitor, which never read, dropped nothing: %+v", portByNum(nets[0], mon.Port()))
	}
}

// A monitor port needs x (manage) on the network file, and its send side
// shut down.
func TestMonitorNeedsManageAndReceiveOnly(t *testing.T) {
	path, _ := bindNet(t, nil)
	// 0666: no x for anyone, root included.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	try := func(shutWrite bool) error {
		s, err := ipn.NewSocket(ipn.Any)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.SetMonitor(true); err != nil {
			t.Fatal(err)
		}
		if shutWrite {
			s.Shutdown(ipn.ShutWrite)
		}
		return s.Connect(path)
	}
	err := try(true)
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "a monitor port needs x (manage) on "+path) {
		t.Errorf("monitor without x: %v, want EACCES saying it needs x", err)
	}
	if err := os.Chmod(path, 0o766); err != nil {
		t.Fatal(err)
	}
	if err := try(false); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "receive-only") {
		t.Errorf("monitor that may send: %v, want EINVAL saying it is receive-only", err)
	}
	if err := try(true); err != nil {
		t.Errorf("monitor with x: %v", err)
	}
}

// ipn dump run by a user without x on a switch network falls back to an
// ordinary receive port, says so, and captures only what the switch
// delivers to it: the flooded frames, not the members' unicast.
func TestDumpWithoutXFallsBack(t *testing.T) {
	requireRoot(t)
	path, a, b, _ := learnt(t)
	if err := os.Chown(path, ownerUID, netGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o706); err != nil { // others rw-
		t.Fatal(err)
	}
	p := start(t, asOther, nil, ipnCommand(t), "dump", "-c", "1", path)
	waitFor(t, 15*time.Second, "ipn dump to join", func() bool {
		_, ports := readersOf(path)
		return ports == 4
	})
	unicast, marker := icmpFrame(t, false), ethFrame(bcast, macA, "marker")
	sendAll(t, a, unicast)
	expectMsg(t, "b", b, unicast)
	sendAll(t, a, marker)
	if err := p.wait(15 * time.Second); err != nil {
		t.Fatalf("ipn dump: %v: %s", err, p.stderr())
	}
	lines := drain(p)
	if len(lines) != 1 || !strings.Contains(lines[0], "02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff") {
		t.Errorf("ipn dump captured %q, want the flooded marker only", lines)
	}
	stderr := p.stderr()
	if !strings.Contains(stderr, "no x (manage) permission on the network file, so no monitor port") ||
		!strings.Contains(stderr, "capturing only what the network's policy delivers") {
		t.Errorf("stderr does not explain the fallback: %q", stderr)
	}
	if !strings.Contains(stderr, "ipn dump: 1 frames captured") {
		t.Errorf("stderr %q lacks the summary", stderr)
	}
}
