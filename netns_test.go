package ipn_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/policy/vdeswitch"
)

// The tests of this file run ipn plug with its far end in network
// namespaces they make, against the kernel's VXLAN, Debian's vde_plug and
// other ipn plugs. The daemon's control socket is a file, so a plug in
// another namespace joins the test's networks.

// netnsNeed fails or skips the test unless it can make namespaces and run
// tools: it needs root and ip; under CI a missing tool is a failure.
func netnsNeed(t *testing.T, tools ...string) {
	t.Helper()
	requireRoot(t)
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing (.ci/run installs it)", tool)
			}
			t.Skipf("needs %s", tool)
		}
	}
}

var netnsSeq atomic.Int32

// netnsAdd makes a namespace with a name unique to this process and call,
// with its loopback up, and deletes it (with its links) when the test
// ends, after the processes started later in the test are gone.
func netnsAdd(t *testing.T, label string) string {
	t.Helper()
	ns := fmt.Sprintf("ipn%d-%d-%s", os.Getpid(), netnsSeq.Add(1), label)
	netnsIP(t, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	netnsIP(t, "-n", ns, "link", "set", "lo", "up")
	return ns
}

// netnsIP runs ip with args.
func netnsIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// netnsRun runs each command, "ip -n ns COMMAND".
func netnsRun(t *testing.T, ns string, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		netnsIP(t, append([]string{"-n", ns}, strings.Fields(c)...)...)
	}
}

// netnsPlug runs "ipn plug path url" in namespace ns and waits until it
// is connected to the network at path (its far end opens right after).
func netnsPlug(t *testing.T, ns, path, url string) *proc {
	t.Helper()
	_, before := readersOf(path)
	p := start(t, nil, nil, "ip", "netns", "exec", ns, ipnCommand(t), "plug", path, url)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ipn plug %s %s in %s; stderr:\n%s", path, url, ns, p.stderr())
		}
	})
	waitFor(t, waitProcs, "ipn plug "+url+" connected", func() bool {
		select {
		case <-p.done:
			t.Fatalf("ipn plug %s exited: %v\n%s", url, p.err, p.stderr())
		default:
		}
		_, n := readersOf(path)
		return n > before
	})
	return p
}

// netnsJoined waits until some socket in ns joined group on dev.
func netnsJoined(t *testing.T, ns, dev, group string) {
	t.Helper()
	waitFor(t, waitProcs, group+" joined in "+ns, func() bool {
		out, _ := exec.Command("ip", "-n", ns, "maddr", "show", "dev", dev).Output()
		for _, f := range strings.Fields(string(out)) {
			if f == group {
				return true
			}
		}
		return false
	})
}

// recvUntil receives frames on s until match accepts one or d passes; it
// returns nil on timeout. match sees every frame and may answer it.
func recvUntil(t *testing.T, s *ipn.Socket, d time.Duration, match func(gopacket.Packet) bool) gopacket.Packet {
	t.Helper()
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for {
		s.SetReadDeadline(deadline)
		n, flags, err := s.Recv(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if flags&ipn.MsgOOB != 0 {
			continue
		}
		p := gopacket.NewPacket(append([]byte(nil), buf[:n]...), layers.LayerTypeEthernet, gopacket.Default)
		if match(p) {
			return p
		}
	}
}

// A Linux VXLAN device in one namespace and ipn plug vxlan:// in another,
// joined by a veth: a member of the IPN network resolves the kernel's
// address with ARP and pings it.
func TestNetnsKernelVXLAN(t *testing.T) {
	netnsNeed(t)
	ns1, ns2 := netnsAdd(t, "kvx1"), netnsAdd(t, "kvx2")
	netnsIP(t, "-n", ns1, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", ns2)
	netnsRun(t, ns1,
		"addr add 10.99.0.1/24 dev veth0",
		"link set veth0 up",
		"link add vx0 type vxlan id 42 remote 10.99.0.2 dstport 4789 srcport 4789 4790 dev veth0",
		"addr add 192.168.99.1/24 dev vx0",
		"link set vx0 up")
	netnsRun(t, ns2,
		"addr add 10.99.0.2/24 dev veth0",
		"link set veth0 up")
	path, m := bindNet(t, nil)
	netnsPlug(t, ns2, path, "vxlan://10.99.0.1/vni=42")

	myMAC := net.HardwareAddr{0x02, 0x99, 0, 0, 0, 0x02}
	myIP, kernIP := net.IP{192, 168, 99, 2}, net.IP{192, 168, 99, 1}
	arp := func(op uint16, dstMAC, tha net.HardwareAddr, tpa net.IP) []byte {
		return serialize(t,
			&layers.Ethernet{SrcMAC: myMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeARP},
			&layers.ARP{
				AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
				HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
				SourceHwAddress: myMAC, SourceProtAddress: myIP,
				DstHwAddress: tha, DstProtAddress: tpa,
			})
	}
	// answerARP replies to the kernel's ARP requests for myIP, should it
	// ask rather than take the address from our request.
	answerARP := func(p gopacket.Packet) {
		if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok && a.Operation == layers.ARPRequest && net.IP(a.DstProtAddress).Equal(myIP) {
			m.Send(arp(layers.ARPReply, a.SourceHwAddress, a.SourceHwAddress, a.SourceProtAddress))
		}
	}

	// ARP: the request goes out through the plug and the tunnel; the kernel's
	// reply comes back. The first requests may be lost while the plug opens
	// its far end, so ask again until the deadline.
	var kernMAC net.HardwareAddr
	deadline := time.Now().Add(waitProcs)
	for kernMAC == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no ARP reply for %v in %v", kernIP, waitProcs)
		}
		if err := m.Send(arp(layers.ARPRequest, net.HardwareAddr(bcast), make(net.HardwareAddr, 6), kernIP)); err != nil {
			t.Fatal(err)
		}
		p := recvUntil(t, m, 500*time.Millisecond, func(p gopacket.Packet) bool {
			a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP)
			return ok && a.Operation == layers.ARPReply && net.IP(a.SourceProtAddress).Equal(kernIP) && bytes.Equal(a.DstHwAddress, myMAC)
		})
		if p != nil {
			a := p.Layer(layers.LayerTypeARP).(*layers.ARP)
			kernMAC = net.HardwareAddr(a.SourceHwAddress)
			if eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !bytes.Equal(eth.DstMAC, myMAC) {
				t.Fatalf("ARP reply to %v, want %v", eth.DstMAC, myMAC)
			}
		}
	}

	// ICMP echo: the kernel answers the ping.
	payload := []byte("ping through vxlan")
	echo := serialize(t,
		&layers.Ethernet{SrcMAC: myMAC, DstMAC: kernMAC, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: myIP, DstIP: kernIP},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 0x4242, Seq: 1},
		gopacket.Payload(payload))
	deadline = time.Now().Add(waitProcs)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("no echo reply from %v in %v", kernIP, waitProcs)
		}
		if err := m.Send(echo); err != nil {
			t.Fatal(err)
		}
		p := recvUntil(t, m, time.Second, func(p gopacket.Packet) bool {
			answerARP(p)
			ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			icmp, ok2 := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			return ok && ok2 && ip.SrcIP.Equal(kernIP) && ip.DstIP.Equal(myIP) &&
				icmp.TypeCode.Type() == layers.ICMPv4TypeEchoReply && icmp.Id == 0x4242 && icmp.Seq == 1
		})
		if p != nil {
			if got := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4).Payload; !bytes.Equal(got, payload) {
				t.Fatalf("echo reply payload %q, want %q", got, payload)
			}
			eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			if !bytes.Equal(eth.SrcMAC, kernMAC) || !bytes.Equal(eth.DstMAC, myMAC) {
				t.Fatalf("echo reply %v -> %v, want %v -> %v", eth.SrcMAC, eth.DstMAC, kernMAC, myMAC)
			}
			return
		}
	}
}

// vdePlug is Debian's vde_plug running in a namespace, its frames on
// stdin/stdout in the stream encapsulation (2-byte big-endian length, then
// the frame).
type vdePlug struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	frames chan []byte
	stderr bytes.Buffer
}

func startVdePlug(t *testing.T, ns, url string) *vdePlug {
	t.Helper()
	v := &vdePlug{frames: make(chan []byte, 64)}
	v.cmd = exec.Command("ip", "netns", "exec", ns, "vde_plug", url)
	v.cmd.Stderr = &v.stderr
	var err error
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := v.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done, stop := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer close(v.frames)
		var hdr [2]byte
		for {
			if _, err := io.ReadFull(out, hdr[:]); err != nil {
				return
			}
			f := make([]byte, binary.BigEndian.Uint16(hdr[:]))
			if _, err := io.ReadFull(out, f); err != nil {
				return
			}
			if vdeswitch.IsProbe(f) {
				continue // the network's loop probes cross its cables
			}
			select {
			case v.frames <- f:
			case <-stop: // nobody reads any more
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		v.cmd.Process.Kill()
		<-done
		v.cmd.Wait()
		if t.Failed() {
			t.Logf("vde_plug %s in %s; stderr:\n%s", url, ns, v.stderr.String())
		}
	})
	return v
}

func (v *vdePlug) send(t *testing.T, f []byte) {
	t.Helper()
	if _, err := v.stdin.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(f))), f...)); err != nil {
		t.Fatal(err)
	}
}

func (v *vdePlug) expect(t *testing.T, want []byte) {
	t.Helper()
	select {
	case f, ok := <-v.frames:
		if !ok {
			t.Fatal("vde_plug's output ended")
		}
		if !bytes.Equal(f, want) {
			t.Fatalf("vde_plug got\n%x, want\n%x", f, want)
		}
	case <-time.After(waitProcs):
		t.Fatalf("vde_plug got nothing in %v", waitProcs)
	}
}

// ipn plug vxvde:// and Debian's vde_plug vxvde:// in two namespaces are
// members of one distributed switch: frames cross both ways, broadcast
// (multicast on the wire) and unicast to the MAC each side learnt.
func TestNetnsVxvdeWithVdePlug(t *testing.T) {
	netnsNeed(t, "vde_plug")
	nsA, nsB := netnsAdd(t, "vdeA"), netnsAdd(t, "vdeB")
	netnsIP(t, "-n", nsA, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", nsB)
	netnsRun(t, nsA, "addr add 10.99.1.1/24 dev veth0", "link set veth0 up", "route add 239.0.0.0/8 dev veth0")
	netnsRun(t, nsB, "addr add 10.99.1.2/24 dev veth0", "link set veth0 up", "route add 239.0.0.0/8 dev veth0")
	vde := startVdePlug(t, nsA, "vxvde://239.0.0.1")
	path, m := bindNet(t, nil)
	netnsPlug(t, nsB, path, "vxvde://239.0.0.1")
	netnsJoined(t, nsA, "veth0", "239.0.0.1")
	netnsJoined(t, nsB, "veth0", "239.0.0.1")

	macIPN, macVDE := macOf(0x0a), macOf(0x0b)
	f1 := ethFrame(bcast, macIPN, "ipn to all")
	if err := m.Send(f1); err != nil {
		t.Fatal(err)
	}
	vde.expect(t, f1)
	// vde_plug learnt macIPN: this one is unicast to the ipn plug. It is
	// also the member's first frame: its own broadcast did not come back.
	f2 := ethFrame(macIPN, macVDE, "vde to ipn, unicast")
	vde.send(t, f2)
	if got := recvString(t, m); got != string(f2) {
		t.Fatalf("member got %x, want %x", got, f2)
	}
	f3 := ethFrame(bcast, macVDE, "vde to all")
	vde.send(t, f3)
	if got := recvString(t, m); got != string(f3) {
		t.Fatalf("member got %x, want %x", got, f3)
	}
	f4 := ethFrame(macVDE, macIPN, "ipn to vde, unicast")
	if err := m.Send(f4); err != nil {
		t.Fatal(err)
	}
	vde.expect(t, f4)
}

// Three hosts (namespaces) on one Ethernet segment (a bridge in a fourth),
// each with its own IPN network plugged into a multicast group: the three
// networks are one. A broadcast from each reaches the two others; a
// unicast goes to the host whose MAC was learnt, not the third.
func TestNetnsThreeHosts(t *testing.T) {
	netnsNeed(t)
	for _, tc := range []struct{ name, url, group string }{
		{"vxlan", "vxlan://239.1.1.1/vni=7", "239.1.1.1"},
		{"vxvde", "vxvde://239.1.1.2", "239.1.1.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := netnsAdd(t, "br")
			netnsRun(t, br, "link add br0 type bridge mcast_snooping 0", "link set br0 up")
			var members []*ipn.Socket
			for i := 1; i <= 3; i++ {
				host := netnsAdd(t, fmt.Sprintf("host%d", i))
				port := fmt.Sprintf("port%d", i)
				netnsIP(t, "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", br)
				netnsRun(t, br, "link set "+port+" master br0", "link set "+port+" up")
				netnsRun(t, host,
					fmt.Sprintf("addr add 10.99.2.%d/24 dev eth0", i),
					"link set eth0 up",
					"route add 224.0.0.0/4 dev eth0")
				path, m := bindNet(t, nil)
				netnsPlug(t, host, path, tc.url)
				netnsJoined(t, host, "eth0", tc.group)
				members = append(members, m)
			}
			for i, m := range members {
				f := ethFrame(bcast, macOf(byte(i+1)), fmt.Sprintf("host %d to all", i+1))
				if err := m.Send(f); err != nil {
					t.Fatal(err)
				}
				for j, o := range members {
					if j == i {
						continue
					}
					if got := recvString(t, o); got != string(f) {
						t.Fatalf("host %d got %q, want %q", j+1, got, f)
					}
				}
			}
			uni := ethFrame(macOf(1), macOf(2), "host 2 to host 1")
			members[1].Send(uni)
			if got := recvString(t, members[0]); got != string(uni) {
				t.Fatalf("host 1 got %q, want %q", got, uni)
			}
			marker := ethFrame(bcast, macOf(1), "marker")
			members[0].Send(marker)
			for _, j := range []int{1, 2} {
				if got := recvString(t, members[j]); got != string(marker) {
					t.Fatalf("host %d got %q, want the marker (a unicast to host 1 reached it?)", j+1, got)
				}
			}
		})
	}
}

// TCP from a tap on an IPN network to a Linux VXLAN device, through ipn
// plug vxlan:// and a veth, both ways, each file compared by its SHA-256:
// with the veth as it comes (offloads on, no ethtool) and with its tx
// offload off. As it comes, the veth hands on what the VXLAN device left
// to the hardware: inner TCP checksums left to finish (the field holds
// the pseudo-header's sum), and TCP super-frames (TSO) of up to 64 KiB in
// one datagram. The vxlan far end finishes the first and cuts the second
// (farend/vxlan/csum.go); without that the tap's kernel drops the
// SYN-ACK, and the network every super-frame, longer than its MTU. With
// tx off the device sends ordinary frames, their checksums finished.
func TestNetnsKernelVXLANTCP(t *testing.T) {
	t.Run("veth defaults", func(t *testing.T) { kernelVXLANTCP(t, false) })
	t.Run("veth tx off", func(t *testing.T) { kernelVXLANTCP(t, true) })
}

// kernelVXLANTCP is TestNetnsKernelVXLANTCP with the tx offload of the
// veth under the VXLAN device off (txOff) or as the veth comes.
func kernelVXLANTCP(t *testing.T, txOff bool) {
	tools := []string{"ping"}
	if txOff {
		tools = append(tools, "ethtool")
	}
	netnsNeed(t, tools...)
	ns1, ns2, ns3 := netnsAdd(t, "kvt1"), netnsAdd(t, "kvt2"), netnsAdd(t, "kvt3")
	netnsIP(t, "-n", ns1, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", ns2)
	netnsRun(t, ns1,
		"addr add 10.99.3.1/24 dev veth0",
		"link set veth0 up",
		"link add vx0 type vxlan id 43 remote 10.99.3.2 dstport 4789 srcport 4789 4790 dev veth0",
		"addr add 192.168.103.1/24 dev vx0",
		"link set vx0 up")
	netnsRun(t, ns2, "addr add 10.99.3.2/24 dev veth0", "link set veth0 up")
	if txOff {
		if out, err := nsCmd(ns1, "ethtool", "-K", "veth0", "tx", "off"); err != nil {
			t.Fatalf("ethtool -K veth0 tx off: %v\n%s", err, out)
		}
	}
	path, _ := devSwitch(t)
	netnsPlug(t, ns2, path, "vxlan://10.99.3.1/vni=43")
	tap := devName("tv")
	devPlug(t, ns3, path, "tap", tap)
	netnsRun(t, ns3, "addr add 192.168.103.2/24 dev "+tap, "link set "+tap+" up")
	// The first pings may be lost while the plug opens its far end.
	waitFor(t, waitProcs, "ping through vxlan", func() bool {
		_, err := nsCmd(ns3, "ping", "-c", "1", "-W", "1", "192.168.103.1")
		return err == nil
	})
	const size = 1 << 20
	transfer(t, ns3, ns1, "192.168.103.1:5001", size) // segments from the tap
	transfer(t, ns1, ns3, "192.168.103.2:5002", size) // and from the VXLAN device
}
