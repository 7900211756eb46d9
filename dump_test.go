package ipn_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/ipn-project/ipn"
)

var (
	macA  = net.HardwareAddr{2, 0, 0, 0, 0, 1}
	macB  = net.HardwareAddr{2, 0, 0, 0, 0, 2}
	macBC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

// serialize builds a frame from ls, fixing lengths and checksums.
func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func arpRequestFrame(t *testing.T) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: macA, DstMAC: macBC, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
			HwAddressSize: 6, ProtAddressSize: 4, Operation: layers.ARPRequest,
			SourceHwAddress: macA, SourceProtAddress: net.IP{10, 0, 0, 1}.To4(),
			DstHwAddress: make([]byte, 6), DstProtAddress: net.IP{10, 0, 0, 2}.To4(),
		})
}

func udpFrame(t *testing.T) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
	udp := &layers.UDP{SrcPort: 5000, DstPort: 7777}
	udp.SetNetworkLayerForChecksum(ip)
	return serialize(t,
		&layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4},
		ip, udp, gopacket.Payload("hello"))
}

// vlanICMPFrame is an ICMP echo request tagged with VLAN 10.
func vlanICMPFrame(t *testing.T) []byte {
	return serialize(t,
		&layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeDot1Q},
		&layers.Dot1Q{VLANIdentifier: 10, Type: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4,
			SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 3}},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1},
		gopacket.Payload("ping"))
}

func tcp6Frame(t *testing.T) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
		SrcIP: net.ParseIP("fd00::1"), DstIP: net.ParseIP("fd00::2")}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Seq: 1, Window: 1024}
	tcp.SetNetworkLayerForChecksum(ip)
	return serialize(t,
		&layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv6},
		ip, tcp)
}

// otherFrame has an ethertype dump does not decode, padded to 60 bytes.
func otherFrame() []byte {
	f := make([]byte, 60)
	copy(f, macBC)
	copy(f[6:], macA)
	f[12], f[13] = 0x88, 0xb5
	return f
}

// startDump starts ipn dump with args and waits until it has joined the
// network at path, which has readersBefore readers without it.
func startDump(t *testing.T, path string, readersBefore int, args ...string) *proc {
	t.Helper()
	p := start(t, nil, nil, ipnCommand(t), append(append([]string{"dump"}, args...), path)...)
	waitFor(t, 15*time.Second, "ipn dump to join", func() bool {
		select {
		case <-p.done:
			t.Fatalf("ipn dump exited: %v: %s", p.err, p.stderr())
		default:
		}
		nets, err := ipn.List(path)
		return err == nil && len(nets) == 1 && nets[0].Readers == readersBefore+1
	})
	return p
}

func sendAll(t *testing.T, s *ipn.Socket, frames ...[]byte) {
	t.Helper()
	for _, f := range frames {
		if err := s.Send(f); err != nil {
			t.Fatal(err)
		}
	}
}

// tcpdumpRead runs tcpdump -r file -n -e and returns its output lines.
func tcpdumpRead(t *testing.T, file string) []string {
	t.Helper()
	bin, err := exec.LookPath("tcpdump")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tcpdump is not installed; CI installs it")
		}
		t.Skip("tcpdump is not installed")
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "-r", file, "-n", "-e")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tcpdump -r: %v\n%s", err, stderr.String())
	}
	out := strings.TrimSpace(stdout.String())
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// A pcap written by ipn dump -w is read back by tcpdump, frame for frame.
func TestDumpWritesPcap(t *testing.T) {
	path, s := bindNet(t, nil)
	file := filepath.Join(tempDir(t), "cap.pcap")
	p := startDump(t, path, 1, "-w", file, "-c", "3")
	sendAll(t, s, arpRequestFrame(t), udpFrame(t), vlanICMPFrame(t))
	if err := p.wait(15 * time.Second); err != nil {
		t.Fatalf("ipn dump: %v: %s", err, p.stderr())
	}
	if !strings.Contains(p.stderr(), "ipn dump: 3 frames captured") {
		t.Errorf("stderr %q lacks the summary", p.stderr())
	}
	lines := tcpdumpRead(t, file)
	out := strings.Join(lines, "\n")
	if len(lines) != 3 {
		t.Fatalf("tcpdump read %d packets, want 3:\n%s", len(lines), out)
	}
	for i, want := range []string{"who-has 10.0.0.2 tell 10.0.0.1", "10.0.0.1.5000 > 10.0.0.2.7777: UDP", "vlan 10"} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("tcpdump packet %d lacks %q:\n%s", i+1, want, out)
		}
	}
	if !strings.Contains(lines[0], "ARP") || !strings.Contains(lines[2], "ICMP echo request") {
		t.Errorf("tcpdump output:\n%s", out)
	}
}

// Each record is flushed as it arrives, and SIGINT closes the file
// cleanly.
func TestDumpFlushesAndStopsOnSignal(t *testing.T) {
	path, s := bindNet(t, nil)
	file := filepath.Join(tempDir(t), "cap.pcap")
	p := startDump(t, path, 1, "-w", file)
	frames := [][]byte{arpRequestFrame(t), udpFrame(t)}
	sendAll(t, s, frames...)
	size := int64(24) // pcap file header
	for _, f := range frames {
		size += 16 + int64(len(f))
	}
	waitFor(t, 15*time.Second, "both records in the file", func() bool {
		fi, err := os.Stat(file)
		return err == nil && fi.Size() == size
	})
	p.cmd.Process.Signal(syscall.SIGINT)
	// Interrupted, dump exits as a shell reports SIGINT: 130.
	if err := p.wait(15 * time.Second); exitCode(err) != 130 {
		t.Fatalf("ipn dump on SIGINT: %v, want exit status 130: %s", err, p.stderr())
	}
	if !strings.Contains(p.stderr(), "ipn dump: 2 frames captured") {
		t.Errorf("stderr %q lacks the summary", p.stderr())
	}
	if lines := tcpdumpRead(t, file); len(lines) != 2 {
		t.Fatalf("tcpdump read %d packets, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}

var dumpTime = regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{6} `)

// Without -w, one decoded line per frame.
func TestDumpDecodedLines(t *testing.T) {
	path, s := bindNet(t, nil)
	p := startDump(t, path, 1, "-c", "6")
	sendAll(t, s, arpRequestFrame(t), udpFrame(t), vlanICMPFrame(t), tcp6Frame(t), otherFrame(), []byte("short"))
	if err := p.wait(15 * time.Second); err != nil {
		t.Fatalf("ipn dump: %v: %s", err, p.stderr())
	}
	lines := drain(p)
	want := []string{
		"02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP who-has 10.0.0.2 tell 10.0.0.1",
		"02:00:00:00:00:01 > 02:00:00:00:00:02, IPv4 10.0.0.1 > 10.0.0.2: UDP 5000 > 7777 length 5",
		"02:00:00:00:00:01 > 02:00:00:00:00:02, vlan 10, IPv4 10.0.0.1 > 10.0.0.3: ICMP EchoRequest id 7 seq 1",
		"02:00:00:00:00:01 > 02:00:00:00:00:02, IPv6 fd00::1 > fd00::2: TCP 40000 > 80 [S] length 0",
		"02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype 0x88b5 length 60",
		"short frame, 5 bytes",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), strings.Join(lines, "\n"))
	}
	for i, l := range lines {
		if !dumpTime.MatchString(l) || dumpTime.ReplaceAllString(l, "") != want[i] {
			t.Errorf("line %d:\n got %q\nwant %q after the time", i+1, l, want[i])
		}
	}
	if !strings.Contains(p.stderr(), "ipn dump: 6 frames captured") {
		t.Errorf("stderr %q lacks the summary", p.stderr())
	}
}

// exitCode returns the exit status of a finished process's error.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func TestDumpWithoutNetwork(t *testing.T) {
	file := filepath.Join(tempDir(t), "cap.pcap")
	p := start(t, nil, nil, ipnCommand(t), "dump", "-w", file, filepath.Join(tempDir(t), "none"))
	err := p.wait(15 * time.Second)
	if exitCode(err) != 1 || !strings.Contains(p.stderr(), "no network there") {
		t.Fatalf("exit %v, stderr %q", err, p.stderr())
	}
	if _, err := os.Stat(file); err == nil {
		t.Errorf("a failed dump left %s behind", file)
	}
}

// Without r on the network file there is nothing to capture.
func TestDumpWithoutReadPermission(t *testing.T) {
	requireRoot(t)
	for _, c := range []struct {
		mode os.FileMode
		want string
	}{
		{0o662, "no r permission"}, // others may send only
		{0o660, "needs r permission"},
	} {
		path, _ := permNet(t, c.mode)
		p := start(t, asOther, nil, ipnCommand(t), "dump", path)
		err := p.wait(waitProcs)
		if exitCode(err) != 1 || !strings.Contains(p.stderr(), c.want) {
			t.Errorf("mode %o: exit %v, stderr %q, want %q", c.mode, err, p.stderr(), c.want)
		}
	}
}
