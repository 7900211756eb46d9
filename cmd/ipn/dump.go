package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/internal/outfile"
)

func init() {
	commands = append(commands, dumpCmd)
}

// dumpSnaplen is the snapshot length of the pcap files dump writes: the
// largest message a network carries, so no frame is ever cut.
const dumpSnaplen = 65535

type dumpOptions struct {
	write    string
	count    int
	noRejoin bool
}

func dumpCmd() *cobra.Command {
	var o dumpOptions
	cmd := &cobra.Command{
		Use:   "dump PATH [-w FILE] [-c N]",
		Short: "Capture a network's frames: decoded lines, or a pcap file for tcpdump/Wireshark",
		Long: `Join the IPN network at PATH as a monitor port, receive-only (it never
sends), and capture every message its members send, taking each one as an
Ethernet frame: a monitor port gets a copy of each message as it was sent,
whatever the network's policy does with it (a switch's unicast frames
included, and frames the policy delivers to nobody; not those it refuses
as invalid). Out-of-band messages are not captured.

Without -w, dump prints one line per frame to stdout, like tcpdump's terse
output: the receive time, source > destination MAC, the VLAN id of each
802.1Q tag, then the top layer worth showing:
  ARP (who-has X tell Y, X is-at MAC); IPv4 or IPv6 source > destination
  with the protocol (ICMP type, TCP or UDP ports); otherwise the ethertype
  and the frame's length. A message shorter than an Ethernet header (14
  bytes) prints "short frame, N bytes". For instance:

  10:42:01.123456 02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP who-has 10.0.0.2 tell 10.0.0.1
  10:42:01.123502 02:00:00:00:00:02 > 02:00:00:00:00:01, ARP 10.0.0.2 is-at 02:00:00:00:00:02
  10:42:01.124010 02:00:00:00:00:01 > 02:00:00:00:00:02, vlan 10, IPv4 10.0.0.1 > 10.0.0.2: UDP 5000 > 7777 length 5
  10:42:01.124500 02:00:00:00:00:01 > 33:33:00:00:00:01, IPv6 fe80::1 > ff02::1: ICMPv6 EchoRequest
  10:42:01.125000 02:00:00:00:00:01 > 02:00:00:00:00:02, IPv4 10.0.0.1 > 10.0.0.2: TCP 40000 > 80 [S] length 0
  10:42:01.126000 02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ethertype 0x88b5 length 60
  10:42:01.127000 short frame, 5 bytes

With -w FILE, dump writes the frames to FILE (created or truncated) as a
pcap capture instead: Ethernet link type, snapshot length 65535, each
record stamped with its receive time and flushed at once, so a reader
following the file (or a pipe, with -w -) sees frames as they arrive.

dump runs until it has captured -c frames (exit status 0), is interrupted
(SIGINT, SIGTERM: status 130, 143) or, with --no-rejoin, loses the network
because the daemon went away (status 1, saying so); then it closes the
output cleanly and prints "ipn dump: N frames captured" to stderr. Without
--no-rejoin, when the daemon goes away dump joins again once a daemon
serves the network (saying so on stderr) and goes on capturing.

Capturing needs r permission on the network file, and a monitor port x
(manage) too, since it sees the members' unicast traffic; w is not needed.
Without x, dump joins as an ordinary receiver and says so on stderr: it
then captures only what the policy delivers to it, which on a hub is
every frame and on a switch only the flooded ones (broadcasts, unknown
destinations).

A capture never slows the network: if dump cannot keep up, the frames its
port has no room for are lost to the capture alone, even in a lossless
network. dump starts no daemon: with none running there is nothing to
capture.

Examples:
  ipn dump /tmp/net                          # watch the traffic
  ipn dump -w net.pcap -c 100 /tmp/net       # then: tcpdump -r net.pcap -n -e
  ipn dump -w - /tmp/net | wireshark -k -i - # live in Wireshark`,
		Args: cobra.ExactArgs(1),
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			return runDump(ctx, cmd, args[0], &o)
		}),
	}
	f := cmd.Flags()
	f.StringVarP(&o.write, "write", "w", "", "write a pcap capture to `FILE` (- for stdout) instead of decoded lines")
	f.IntVarP(&o.count, "count", "c", 0, "exit after capturing `N` frames (0: no limit)")
	f.BoolVar(&o.noRejoin, "no-rejoin", false, "exit when the daemon goes away instead of re-joining")
	return cmd
}

// joinToCapture joins the network at path as a monitor port, or, when the
// user may not manage the network (no x) or the daemon has no monitor
// ports, as an ordinary receiver, saying so on stderr. It explains the
// errors a user can fix.
func joinToCapture(path string, rejoin bool) (*ipn.Socket, error) {
	if _, err := ipn.List(path); errors.Is(err, ipn.ErrNoDaemon) {
		return nil, fmt.Errorf("%w: no network at %s to capture", err, path)
	}
	s, err := joinReceiveOnly(path, true, rejoin)
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOPROTOOPT) {
		why := "no x (manage) permission on the network file"
		if errors.Is(err, syscall.ENOPROTOOPT) {
			why = "the ipn daemon has no monitor ports"
		}
		if s, err = joinReceiveOnly(path, false, rejoin); err == nil && s.CanRead() {
			fmt.Fprintf(os.Stderr, "ipn dump: %s, so no monitor port: capturing only what the network's policy delivers to this port (on a hub, every frame; on a switch, only flooded ones)\n", why)
		}
	}
	switch {
	case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
		err = fmt.Errorf("%w (no network there)", err)
	case errors.Is(err, syscall.EACCES):
		err = fmt.Errorf("%w (capturing needs r permission on the network file)", err)
	case err == nil && !s.CanRead():
		s.Close()
		err = fmt.Errorf("%s: no r permission on the network file: the socket cannot receive, nothing to capture", path)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// joinReceiveOnly joins the network at path with its send side shut down,
// as a monitor port if monitor is set.
func joinReceiveOnly(path string, monitor, rejoin bool) (*ipn.Socket, error) {
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return nil, err
	}
	err = setRejoin(s, rejoin, "ipn dump", path, os.Stderr)
	if err == nil {
		err = s.SetDescription("ipn dump")
	}
	if err == nil && monitor {
		err = s.SetMonitor(true)
	}
	if err == nil {
		err = s.Shutdown(ipn.ShutWrite)
	}
	if err == nil {
		err = s.Connect(path)
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// frameSink takes the captured frames: a pcap writer or the line printer.
type frameSink interface {
	frame(t time.Time, data []byte, orig int) error
	close() error
}

func runDump(ctx context.Context, cmd *cobra.Command, path string, o *dumpOptions) error {
	if o.count < 0 {
		return fmt.Errorf("--count %d: want 0 (no limit) or more", o.count)
	}
	s, err := joinToCapture(path, !o.noRejoin)
	if err != nil {
		return err
	}
	defer s.Close()

	var sink frameSink
	if o.write != "" {
		sink, err = newPcapSink(o.write, cmd.OutOrStdout())
	} else {
		sink = &lineSink{w: bufio.NewWriter(cmd.OutOrStdout())}
	}
	if err != nil {
		return err
	}

	// A signal wakes the blocked Recv by moving its deadline to the past.
	go func() {
		<-ctx.Done()
		s.SetReadDeadline(time.Unix(1, 0))
	}()

	got, err := dumpLoop(ctx, s, sink, o.count)
	if cerr := sink.close(); err == nil {
		err = cerr
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "ipn dump: %d frames captured\n", got)
	return err
}

// dumpLoop hands every ordinary message to sink until count frames (0: no
// limit), ctx ends or the network is lost, and returns how many it took.
func dumpLoop(ctx context.Context, s *ipn.Socket, sink frameSink, count int) (int, error) {
	buf := make([]byte, dumpSnaplen+1)
	got := 0
	for count == 0 || got < count {
		n, flags, err := s.Recv(buf)
		now := time.Now()
		if err != nil && ctx.Err() != nil {
			return got, nil // a signal came
		}
		if err != nil {
			return got, err
		}
		if flags&ipn.MsgOOB != 0 {
			continue
		}
		orig := n
		if flags&ipn.MsgTrunc != 0 || n > dumpSnaplen {
			n = min(n, dumpSnaplen)
			orig = max(orig, dumpSnaplen+1)
		}
		if err := sink.frame(now, buf[:n], orig); err != nil {
			return got, err
		}
		got++
		if ctx.Err() != nil {
			break
		}
	}
	return got, nil
}

// pcapSink writes a pcap capture, flushing each record.
type pcapSink struct {
	name string
	f    *os.File // nil for stdout
	bw   *bufio.Writer
	pw   *pcapgo.Writer
}

func newPcapSink(name string, stdout io.Writer) (*pcapSink, error) {
	p := &pcapSink{name: name}
	out := stdout
	if name != "-" {
		f, err := outfile.Create(name)
		if err != nil {
			return nil, err
		}
		p.f, out = f, f
	} else {
		p.name = "stdout"
	}
	p.bw = bufio.NewWriterSize(out, 1<<16)
	p.pw = pcapgo.NewWriter(p.bw)
	err := p.pw.WriteFileHeader(dumpSnaplen, layers.LinkTypeEthernet)
	if err == nil {
		err = p.bw.Flush()
	}
	if err != nil {
		p.close()
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	return p, nil
}

func (p *pcapSink) frame(t time.Time, data []byte, orig int) error {
	ci := gopacket.CaptureInfo{Timestamp: t, CaptureLength: len(data), Length: orig}
	err := p.pw.WritePacket(ci, data)
	if err == nil {
		err = p.bw.Flush()
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

func (p *pcapSink) close() error {
	err := p.bw.Flush()
	if p.f != nil {
		if cerr := p.f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p.name, err)
	}
	return nil
}

// lineSink prints one decoded line per frame.
type lineSink struct {
	w *bufio.Writer
}

func (l *lineSink) frame(t time.Time, data []byte, orig int) error {
	l.w.WriteString(t.Format("15:04:05.000000"))
	l.w.WriteByte(' ')
	l.w.WriteString(describeFrame(data, orig))
	l.w.WriteByte('\n')
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("stdout: %w", err)
	}
	return nil
}

func (l *lineSink) close() error {
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("stdout: %w", err)
	}
	return nil
}

// describeFrame summarizes an Ethernet frame on one line (without the
// time): MACs, VLAN tags, then ARP, IP or the ethertype. orig is the
// frame's length, which data may fall short of.
func describeFrame(data []byte, orig int) string {
	if len(data) < 14 {
		return fmt.Sprintf("short frame, %d bytes", orig)
	}
	p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.NoCopy)
	var b strings.Builder
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth == nil { // cannot happen with 14 bytes; be safe
		return fmt.Sprintf("undecodable frame, %d bytes", orig)
	}
	fmt.Fprintf(&b, "%s > %s", eth.SrcMAC, eth.DstMAC)
	etype := eth.EthernetType
	for _, l := range p.Layers() {
		if q, ok := l.(*layers.Dot1Q); ok {
			fmt.Fprintf(&b, ", vlan %d", q.VLANIdentifier)
			etype = q.Type
		}
	}
	b.WriteString(", ")
	switch {
	case decoded(p, layers.LayerTypeARP) != nil:
		describeARP(&b, decoded(p, layers.LayerTypeARP).(*layers.ARP))
	case decoded(p, layers.LayerTypeIPv4) != nil:
		ip := decoded(p, layers.LayerTypeIPv4).(*layers.IPv4)
		fmt.Fprintf(&b, "IPv4 %s > %s: ", ip.SrcIP, ip.DstIP)
		if ip.FragOffset != 0 { // a later fragment: no transport header
			fmt.Fprintf(&b, "fragment offset %d, proto %s length %d", int(ip.FragOffset)*8, protoName(ip.Protocol), len(ip.Payload))
			break
		}
		describeTransport(&b, p, ip.Protocol, len(ip.Payload))
	case decoded(p, layers.LayerTypeIPv6) != nil:
		ip := decoded(p, layers.LayerTypeIPv6).(*layers.IPv6)
		fmt.Fprintf(&b, "IPv6 %s > %s: ", ip.SrcIP, ip.DstIP)
		describeTransport(&b, p, ip.NextHeader, len(ip.Payload))
	default:
		if etype < 0x0600 {
			fmt.Fprintf(&b, "802.3 length %d", orig)
		} else {
			fmt.Fprintf(&b, "ethertype 0x%04x length %d", uint16(etype), orig)
		}
		switch etype {
		case layers.EthernetTypeARP, layers.EthernetTypeIPv4, layers.EthernetTypeIPv6:
			malformed(&b, p) // a type it knows, so the header was bad
		}
	}
	return b.String()
}

// decoded returns p's layer of type lt if it decoded well. Some gopacket
// decoders (IPv4, IPv6, TCP, UDP) add their layer even when its header is
// bad, so when decoding failed somewhere the layer's header is decoded
// again on its own to tell a bad header from an unknown next layer.
func decoded(p gopacket.Packet, lt gopacket.LayerType) gopacket.Layer {
	ls := p.Layers()
	for i, l := range ls {
		if l.LayerType() != lt {
			continue
		}
		if p.ErrorLayer() == nil || i == 0 {
			return l
		}
		fresh, ok := reflect.New(reflect.TypeOf(l).Elem()).Interface().(gopacket.DecodingLayer)
		if ok && fresh.DecodeFromBytes(ls[i-1].LayerPayload(), gopacket.NilDecodeFeedback) != nil {
			return nil
		}
		return l
	}
	return nil
}

func describeARP(b *strings.Builder, a *layers.ARP) {
	b.WriteString("ARP ")
	switch a.Operation {
	case layers.ARPRequest:
		fmt.Fprintf(b, "who-has %s tell %s", arpAddr(a.DstProtAddress), arpAddr(a.SourceProtAddress))
	case layers.ARPReply:
		fmt.Fprintf(b, "%s is-at %s", arpAddr(a.SourceProtAddress), net.HardwareAddr(a.SourceHwAddress))
	default:
		fmt.Fprintf(b, "opcode %d", a.Operation)
	}
}

// arpAddr prints an ARP protocol address: an IP address if it has the
// size of one, else hex.
func arpAddr(a []byte) string {
	if len(a) == net.IPv4len || len(a) == net.IPv6len {
		return net.IP(a).String()
	}
	return fmt.Sprintf("%x", a)
}

// describeTransport summarizes what an IP packet carries; proto and n are
// the IP header's protocol and its payload's length, for the fallback.
func describeTransport(b *strings.Builder, p gopacket.Packet, proto layers.IPProtocol, n int) {
	switch {
	case decoded(p, layers.LayerTypeUDP) != nil:
		u := decoded(p, layers.LayerTypeUDP).(*layers.UDP)
		length := len(u.Payload)
		if u.Length >= 8 {
			length = int(u.Length) - 8
		}
		fmt.Fprintf(b, "UDP %d > %d length %d", u.SrcPort, u.DstPort, length)
	case decoded(p, layers.LayerTypeTCP) != nil:
		t := decoded(p, layers.LayerTypeTCP).(*layers.TCP)
		fmt.Fprintf(b, "TCP %d > %d [%s] length %d", t.SrcPort, t.DstPort, tcpFlags(t), len(t.Payload))
	case decoded(p, layers.LayerTypeICMPv4) != nil:
		ic := decoded(p, layers.LayerTypeICMPv4).(*layers.ICMPv4)
		fmt.Fprintf(b, "ICMP %s", ic.TypeCode)
		switch ic.TypeCode.Type() {
		case layers.ICMPv4TypeEchoRequest, layers.ICMPv4TypeEchoReply:
			fmt.Fprintf(b, " id %d seq %d", ic.Id, ic.Seq)
		}
	case decoded(p, layers.LayerTypeICMPv6) != nil:
		ic := decoded(p, layers.LayerTypeICMPv6).(*layers.ICMPv6)
		fmt.Fprintf(b, "ICMPv6 %s", ic.TypeCode)
	default:
		fmt.Fprintf(b, "proto %s length %d", protoName(proto), n)
		switch proto {
		case layers.IPProtocolUDP, layers.IPProtocolTCP, layers.IPProtocolICMPv4, layers.IPProtocolICMPv6:
			malformed(b, p)
		}
	}
}

// protoName names an IP protocol, or gives its number.
func protoName(p layers.IPProtocol) string {
	if name := p.String(); !strings.HasPrefix(name, "Unknown") {
		return name
	}
	return strconv.Itoa(int(p))
}

// malformed notes why a frame could not be decoded further.
func malformed(b *strings.Builder, p gopacket.Packet) {
	if el := p.ErrorLayer(); el != nil {
		fmt.Fprintf(b, " (malformed: %v)", el.Error())
	}
}

// tcpFlags spells TCP flags as tcpdump does: S, F, R, P, U, E, W, and .
// for ACK.
func tcpFlags(t *layers.TCP) string {
	var f []byte
	for _, x := range []struct {
		on bool
		c  byte
	}{{t.SYN, 'S'}, {t.FIN, 'F'}, {t.RST, 'R'}, {t.PSH, 'P'}, {t.URG, 'U'}, {t.ECE, 'E'}, {t.CWR, 'W'}, {t.ACK, '.'}} {
		if x.on {
			f = append(f, x.c)
		}
	}
	if len(f) == 0 {
		return "none"
	}
	return string(f)
}
