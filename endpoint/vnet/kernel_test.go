//go:build linux

package vnet_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/endpoint/vnet"
	"github.com/ipn-project/ipn/internal/transfer"
)

// The tests of this file put two taps opened with IFF_VNET_HDR and
// offloads in two network namespaces and pump frames between them through
// Segment (and Coalesce), while the kernels on either side run a TCP
// transfer (or UDP with segmentation offload) through them.

// TUN offload flags (linux/if_tun.h); x/sys/unix does not name them.
const (
	tunFCsum   = 0x01
	tunFTSO4   = 0x02
	tunFTSO6   = 0x04
	tunFTSOECN = 0x08
	tunFUSO4   = 0x20
	tunFUSO6   = 0x40
)

// helperEnv, set, makes the test binary a helper: see helper.
const helperEnv = "VNET_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		if err := helper(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helper runs one end of a transfer, in the namespace it was started in:
//
//	tcprecv ADDR                  accept one connection, print "listening",
//	                              then "got BYTES SHA256 SECONDS" at EOF
//	tcpsend ADDR BYTES            send BYTES pseudo-random bytes, print "sent SHA256"
//	udprecv ADDR COUNT SIZE       print "listening", receive COUNT datagrams of
//	                              SIZE bytes, print "got GOOD BAD"
//	udpsend ADDR WRITES SEGS SIZE send WRITES writes of SEGS datagrams each,
//	                              with UDP_SEGMENT, print "sent"
func helper(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("helper: want MODE ADDR ...")
	}
	nums := make([]int, len(args)-2)
	for i, a := range args[2:] {
		n, err := strconv.Atoi(a)
		if err != nil {
			return err
		}
		nums[i] = n
	}
	switch {
	case args[0] == "tcprecv":
		return transfer.Recv(args[1], os.Stdout)
	case args[0] == "tcpsend" && len(nums) == 1:
		return transfer.Send(args[1], nums[0], os.Stdout)
	case args[0] == "udprecv" && len(nums) == 2:
		c, err := net.ListenPacket("udp", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		rc, err := c.(*net.UDPConn).SyscallConn()
		if err != nil {
			return err
		}
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) })
		fmt.Println("listening")
		seen := make(map[uint32]bool)
		bad := 0
		buf := make([]byte, 65536)
		for len(seen) < nums[0] {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			if n != nums[1] || string(buf[:n]) != string(datagram(int(be32(buf)), n)) {
				bad++
				continue
			}
			seen[be32(buf)] = true
		}
		fmt.Printf("got %d %d\n", len(seen), bad)
		return nil
	case args[0] == "udpsend" && len(nums) == 3:
		c, err := net.Dial("udp", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		rc, err := c.(*net.UDPConn).SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, nums[2]) })
		if serr != nil {
			return fmt.Errorf("UDP_SEGMENT: %w", serr)
		}
		for w := range nums[0] {
			var b []byte
			for s := range nums[1] {
				b = append(b, datagram(w*nums[1]+s, nums[2])...)
			}
			if _, err := c.Write(b); err != nil {
				return err
			}
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Println("sent")
		return nil
	}
	return fmt.Errorf("helper: bad arguments %q", args)
}

// be32 reads a big-endian 32-bit number.
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }

// datagram returns the content of datagram i of size bytes.
func datagram(i, size int) []byte {
	b := pattern(size, i)
	b[0], b[1], b[2], b[3] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return b
}

// kernelNeed skips the test unless it can make namespaces and taps.
func kernelNeed(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces and taps")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v", err)
	}
}

var nsSeq atomic.Int32

// nsAdd makes a network namespace, deleted when the test ends.
func nsAdd(t *testing.T, label string) string {
	t.Helper()
	ns := fmt.Sprintf("vnet%d-%d-%s", os.Getpid(), nsSeq.Add(1), label)
	ipCmd(t, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	// No duplicate address detection: addresses work at once.
	if out, err := exec.Command("ip", "netns", "exec", ns, "sysctl", "-qw",
		"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0").CombinedOutput(); err != nil {
		t.Fatalf("sysctl in %s: %v\n%s", ns, err, out)
	}
	return ns
}

// ipCmd runs ip with args.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// tap is a tap device opened with IFF_VNET_HDR.
type tap struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool
}

// close closes the tap; its reader's errors after that are expected.
func (tp *tap) close() {
	tp.closed.Store(true)
	tp.f.Close()
}

// readBatch reads the frames waiting on the tap, waiting for one if none
// is, into bufs, at most one each, and sets their lengths in sizes.
func (tp *tap) readBatch(bufs [][]byte, sizes []int) (int, error) {
	n := 0
	var rerr error
	err := tp.rc.Read(func(fd uintptr) bool {
		for n < len(bufs) {
			m, err := unix.Read(int(fd), bufs[n])
			if err == unix.EAGAIN {
				return n > 0
			}
			if err != nil {
				rerr = err
				return true
			}
			sizes[n] = m
			n++
		}
		return true
	})
	if err == nil {
		err = rerr
	}
	return n, err
}

// openTap makes a tap named name in namespace ns, with a virtio-net header
// on every frame and, if offload, the offloads the kernel takes of those
// asked for; it returns those it took.
func openTap(t *testing.T, ns, name string, offload bool) (*tap, int) {
	t.Helper()
	type result struct {
		fd, offloads int
		err          error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread moves to ns and is never unlocked: it ends with the
		// goroutine rather than run anything else there.
		runtime.LockOSThread()
		ch <- func() result {
			nsf, err := os.Open(filepath.Join("/run/netns", ns))
			if err != nil {
				return result{err: err}
			}
			defer nsf.Close()
			if err := unix.Setns(int(nsf.Fd()), unix.CLONE_NEWNET); err != nil {
				return result{err: fmt.Errorf("setns %s: %w", ns, err)}
			}
			fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
			if err != nil {
				return result{err: err}
			}
			ifr, err := unix.NewIfreq(name)
			if err != nil {
				unix.Close(fd)
				return result{err: err}
			}
			ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
			if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
				unix.Close(fd)
				return result{err: fmt.Errorf("TUNSETIFF: %w", err)}
			}
			off := tunFCsum | tunFTSO4 | tunFTSO6 | tunFTSOECN | tunFUSO4 | tunFUSO6
			if !offload {
				off = 0
			}
			if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, off); err != nil && off != 0 {
				off &^= tunFUSO4 | tunFUSO6 // kernels before 6.2
				if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, off); err != nil {
					unix.Close(fd)
					return result{err: fmt.Errorf("TUNSETOFFLOAD: %w", err)}
				}
			}
			return result{fd: fd, offloads: off}
		}()
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("tap %s in %s: %v", name, ns, r.err)
	}
	f := os.NewFile(uintptr(r.fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return &tap{f: f, rc: rc}, r.offloads
}

// write writes a frame after its virtio-net header.
func (tp *tap) write(hdr, frame []byte) error {
	var werr error
	err := tp.rc.Write(func(fd uintptr) bool {
		_, werr = unix.Writev(int(fd), [][]byte{hdr, frame})
		return werr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return werr
}

// pumpStats counts what a pump moved; its first error is kept.
// pumpStats counts what a pump moved; its first error is kept.
type pumpStats struct {
	frames  int // read
	super   int // super-frames read
	udp     int // of them, UDP
	segs    int // segments Segment made
	merged  int // super-frames Coalesce made
	written int
	errs    int
	err     error
	first   vnet.Hdr // the header of the first super-frame read
	firstN  int      // and its frame's length
}

func (s *pumpStats) fail(err error) {
	if s.err == nil {
		s.err = err
	}
	s.errs++
}

// Pump modes.
const (
	modeGSO      = "gso"      // super-frames written on as they are
	modeSegment  = "segment"  // cut, written as ordinary frames
	modeCoalesce = "coalesce" // cut, merged back, written with headers
)

// rigOpts says how a rig's pumps work and what is behind tap B.
type rigOpts struct {
	mode string
	// vlan has the pumps tag the frames between the taps: Segment and
	// Coalesce see 802.1Q frames. (The kernel this was written on has no
	// 802.1Q, so the pump plays a trunk between two VLAN-aware ends.)
	vlan bool
	// forward puts the receiver in a third namespace, C, behind B, on a
	// veth without offloads: B's kernel cuts the super-frames itself and
	// finishes their checksums from the field Coalesce set, and C checks
	// every checksum. (Delivered locally, a CHECKSUM_PARTIAL packet's
	// checksum is taken as good and the field is never read.)
	forward bool
	// corrupt complements the checksum field of merged super-frames.
	corrupt bool
	// gro opens tap A without offloads, so that its kernel sends ordinary
	// segments (as a cable would bring), and has the pump from A read them
	// in batches and merge them with Coalesce. (mode is for the way back.)
	gro bool
}

// vlanTag is the 802.1Q tag (VLAN 5) of rigOpts.vlan.
var vlanTag = []byte{0x81, 0x00, 0x00, 0x05}

// addTag returns frame with vlanTag in buf, and h adjusted to it.
func addTag(buf, frame []byte, h vnet.Hdr) ([]byte, vnet.Hdr) {
	copy(buf, frame[:12])
	copy(buf[12:], vlanTag)
	n := 16 + copy(buf[16:], frame[12:])
	if h.Flags&vnet.FlagNeedsCsum != 0 {
		h.CsumStart += 4
	}
	if h.HdrLen != 0 {
		h.HdrLen += 4
	}
	return buf[:n], h
}

// dropTag returns frame without its vlanTag in buf, and h adjusted to it.
func dropTag(buf, frame []byte, h vnet.Hdr) ([]byte, vnet.Hdr, error) {
	if len(frame) < 16 || string(frame[12:16]) != string(vlanTag) {
		return nil, h, fmt.Errorf("frame of %d bytes lost its VLAN tag", len(frame))
	}
	copy(buf, frame[:12])
	n := 12 + copy(buf[12:], frame[16:])
	if h.Flags&vnet.FlagNeedsCsum != 0 {
		h.CsumStart -= 4
	}
	if h.HdrLen != 0 {
		h.HdrLen -= 4
	}
	return buf[:n], h, nil
}

// pumpBatch moves frames from src to dst until src is closed, reading
// those waiting in batches and merging them with Coalesce.
func pumpBatch(src, dst *tap, st *pumpStats) {
	const batch = 64
	bufs, sizes, sbufs := make([][]byte, batch), make([]int, batch), make([][]byte, batch)
	for i := range bufs {
		bufs[i], sbufs[i] = make([]byte, vnet.Len+1<<16), make([]byte, 1<<16)
	}
	frames := make([][]byte, 0, batch)
	hb := make([]byte, vnet.Len)
	var c vnet.Coalescer
	for {
		n, err := src.readBatch(bufs, sizes)
		if err != nil {
			if !src.closed.Load() {
				st.fail(err)
			}
			return
		}
		frames = frames[:0]
		for i := range n {
			st.frames++
			h, err := vnet.Decode(bufs[i][:sizes[i]])
			if err != nil {
				st.fail(err)
				continue
			}
			if h.GSO() {
				st.super++
			}
			// Ordinary frames, but a checksum may be left to finish.
			if frames, err = vnet.Segment(bufs[i][vnet.Len:sizes[i]], h, sbufs[i], frames); err != nil {
				st.fail(fmt.Errorf("%+v: %w", h, err))
			}
		}
		st.segs += len(frames)
		for _, f := range c.Coalesce(frames) {
			if f.Hdr.GSO() {
				st.merged++
			}
			f.Hdr.Encode(hb)
			if err := dst.write(hb, f.Data); err != nil {
				st.fail(fmt.Errorf("write %+v: %w", f.Hdr, err))
			}
			st.written++
		}
	}
}

// pump moves frames from src to dst, as o says, until src is closed.
func pump(src, dst *tap, o rigOpts, st *pumpStats) {
	rbuf, tbuf, wbuf := make([]byte, vnet.Len+1<<17), make([]byte, 1<<17), make([]byte, 1<<17)
	sbuf := make([]byte, 1<<18)
	hb := make([]byte, vnet.Len)
	var segs [][]byte
	var c vnet.Coalescer
	write := func(h vnet.Hdr, frame []byte) {
		if o.vlan {
			var err error
			if frame, h, err = dropTag(wbuf, frame, h); err != nil {
				st.fail(err)
				return
			}
		}
		h.Encode(hb)
		if err := dst.write(hb, frame); err != nil {
			st.fail(fmt.Errorf("write %+v: %w", h, err))
		}
		st.written++
	}
	for {
		n, err := src.f.Read(rbuf)
		if err != nil {
			if !src.closed.Load() {
				st.fail(err)
			}
			return
		}
		st.frames++
		h, err := vnet.Decode(rbuf[:n])
		if err != nil {
			st.fail(err)
			continue
		}
		frame := rbuf[vnet.Len:n]
		if h.GSO() && st.first == (vnet.Hdr{}) {
			st.first, st.firstN = h, len(frame)
		}
		if o.vlan {
			frame, h = addTag(tbuf, frame, h)
		}
		if h.GSO() {
			st.super++
			if h.GSOType == vnet.GSOUDPL4 {
				st.udp++
			}
		}
		if o.mode == modeGSO {
			write(h, frame)
			continue
		}
		need, err := vnet.SegmentedLen(frame, h)
		if err != nil {
			st.fail(fmt.Errorf("%+v: %w", h, err))
			continue
		}
		if need > len(sbuf) {
			sbuf = make([]byte, need)
		}
		if segs, err = vnet.Segment(frame, h, sbuf, segs[:0]); err != nil {
			st.fail(fmt.Errorf("%+v: %w", h, err))
			continue
		}
		st.segs += len(segs)
		if o.mode == modeSegment {
			for _, s := range segs {
				write(vnet.Hdr{}, s)
			}
			continue
		}
		for _, f := range c.Coalesce(segs) {
			if f.Hdr.GSO() {
				st.merged++
				if o.corrupt {
					at := int(f.Hdr.CsumStart + f.Hdr.CsumOffset)
					f.Data[at], f.Data[at+1] = ^f.Data[at], ^f.Data[at+1]
				}
			}
			write(f.Hdr, f.Data)
		}
	}
}

// rig is namespaces A and B, each with a tap, pumps between the taps, and
// with rigOpts.forward a namespace C behind B.
type rig struct {
	nsA, nsB, nsC string
	nsRecv        string // where the receiver runs: B, or C
	offloads      int
	ab, ba        pumpStats // to be read after stop
	stop          func()
}

// Addresses: A and B on 10.213.7.0/24 and fd00:213:7::/64 (A is 1, B is
// 2); B and C on 10.213.8.0/24 and fd00:213:8::/64 (B is 1, C is 2).
func (r *rig) addr(v6 bool, port int) string {
	net := 7
	if r.nsC != "" {
		net = 8
	}
	if v6 {
		return fmt.Sprintf("[fd00:213:%d::2]:%d", net, port)
	}
	return fmt.Sprintf("10.213.%d.2:%d", net, port)
}

// newRig makes a rig.
func newRig(t *testing.T, o rigOpts) *rig {
	r := &rig{nsA: nsAdd(t, "a"), nsB: nsAdd(t, "b")}
	r.nsRecv = r.nsB
	a, _ := openTap(t, r.nsA, "vn0", !o.gro)
	b, off := openTap(t, r.nsB, "vn0", true)
	r.offloads = off
	r.stop = func() { a.close(); b.close() }
	t.Cleanup(func() { r.stop() })
	for i, ns := range []string{r.nsA, r.nsB} {
		ipCmd(t, "-n", ns, "addr", "add", fmt.Sprintf("10.213.7.%d/24", i+1), "dev", "vn0")
		ipCmd(t, "-n", ns, "addr", "add", fmt.Sprintf("fd00:213:7::%d/64", i+1), "dev", "vn0", "nodad")
		ipCmd(t, "-n", ns, "link", "set", "vn0", "up")
	}
	if o.forward {
		if _, err := exec.LookPath("ethtool"); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("needs ethtool")
			}
			t.Skip("needs ethtool")
		}
		r.nsC = nsAdd(t, "c")
		r.nsRecv = r.nsC
		ipCmd(t, "-n", r.nsB, "link", "add", "vf0", "type", "veth", "peer", "name", "vf0", "netns", r.nsC)
		for i, ns := range []string{r.nsB, r.nsC} {
			ipCmd(t, "-n", ns, "addr", "add", fmt.Sprintf("10.213.8.%d/24", i+1), "dev", "vf0")
			ipCmd(t, "-n", ns, "addr", "add", fmt.Sprintf("fd00:213:8::%d/64", i+1), "dev", "vf0", "nodad")
			ipCmd(t, "-n", ns, "link", "set", "vf0", "up")
		}
		ipCmd(t, "-n", r.nsA, "route", "add", "10.213.8.0/24", "via", "10.213.7.2")
		ipCmd(t, "-n", r.nsA, "route", "add", "fd00:213:8::/64", "via", "fd00:213:7::2")
		ipCmd(t, "-n", r.nsC, "route", "add", "10.213.7.0/24", "via", "10.213.8.1")
		ipCmd(t, "-n", r.nsC, "route", "add", "fd00:213:7::/64", "via", "fd00:213:8::1")
		for _, c := range [][]string{
			{r.nsB, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"},
			// B cuts and checksums in software; C checks every checksum.
			{r.nsB, "ethtool", "-K", "vf0", "tx", "off", "tso", "off", "gso", "off"},
			{r.nsC, "ethtool", "-K", "vf0", "rx", "off"},
		} {
			if out, err := exec.Command("ip", append([]string{"netns", "exec"}, c...)...).CombinedOutput(); err != nil {
				t.Fatalf("%s in %s: %v\n%s", strings.Join(c[1:], " "), c[0], err, out)
			}
		}
	}
	// Both taps are up before the pumps start: a write to a tap that is
	// down fails (EIO).
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if o.gro {
			pumpBatch(a, b, &r.ab)
		} else {
			pump(a, b, o, &r.ab)
		}
	}()
	go func() { defer wg.Done(); pump(b, a, o, &r.ba) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			a.close()
			b.close()
			wg.Wait()
		})
	}
	return r
}

// helperCmd returns the command that runs the test binary as a helper in
// namespace ns.
func helperCmd(ctx context.Context, t *testing.T, ns string, args ...string) *exec.Cmd {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, self}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	return cmd
}

// run starts the receiving helper, waits for it to print "listening",
// runs the sender in A, and returns the lines the two print last; it gives
// up (killing both) when ctx is done.
func (r *rig) run(ctx context.Context, t *testing.T, recv, send []string) (got, sent string, err error) {
	t.Helper()
	rc := helperCmd(ctx, t, r.nsRecv, recv...)
	out, err := rc.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "listening" {
		rc.Wait()
		t.Fatalf("%s did not start listening: %q", recv[0], lines.Text())
	}
	sout, serr := helperCmd(ctx, t, r.nsA, send...).Output()
	lines.Scan()
	got = lines.Text()
	if err := rc.Wait(); err != nil || serr != nil {
		return got, string(sout), fmt.Errorf("%s: %v; %s: %v %s", recv[0], err, send[0], serr, sout)
	}
	return got, strings.TrimSpace(string(sout)), nil
}

// snmp returns the error counters of namespace ns that checksums or
// lengths gone wrong would raise, those that are not 0.
func snmp(t *testing.T, ns string) map[string]int64 {
	m, err := snmpRead(ns)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(map[string]int64)
	for _, k := range []string{"IpInHdrErrors", "TcpInCsumErrors", "UdpInCsumErrors", "Ip6InHdrErrors", "Udp6InCsumErrors"} {
		if m[k] != 0 {
			errs[k] = m[k]
		}
	}
	return errs
}

// snmpPoll returns the counters of namespace ns, none if they cannot be
// read.
func snmpPoll(ns string) map[string]int64 {
	m, _ := snmpRead(ns)
	return m
}

// snmpRead reads the counters of /proc/net/snmp and snmp6 in namespace
// ns, named as nstat names them (TcpInCsumErrors).
func snmpRead(ns string) (map[string]int64, error) {
	m := make(map[string]int64)
	for _, file := range []string{"/proc/net/snmp", "/proc/net/snmp6"} {
		out, err := exec.Command("ip", "netns", "exec", ns, "cat", file).Output()
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %v", file, ns, err)
		}
		lines := strings.Split(string(out), "\n")
		for i := 0; i < len(lines); i++ {
			f := strings.Fields(lines[i])
			if len(f) == 2 && !strings.HasSuffix(f[0], ":") { // snmp6: NAME VALUE
				m[f[0]], _ = strconv.ParseInt(f[1], 10, 64)
				continue
			}
			if i+1 < len(lines) && len(f) > 1 && strings.HasSuffix(f[0], ":") { // snmp: NAMES, then VALUES
				v := strings.Fields(lines[i+1])
				for j := 1; j < len(f) && j < len(v); j++ {
					m[strings.TrimSuffix(f[0], ":")+f[j]], _ = strconv.ParseInt(v[j], 10, 64)
				}
				i++
			}
		}
	}
	return m, nil
}

// TestKernelTCP runs TCP transfers between two namespaces through taps
// with offloads and a pump: super-frames passed on as they are (the
// baseline), cut by Segment and written as ordinary frames, and cut then
// merged again by Coalesce and written as super-frames; with VLAN tags
// between the taps, and with the receiver one hop further, behind a link
// where the kernel must cut Coalesce's super-frames and finish their
// checksums itself.
func TestKernelTCP(t *testing.T) {
	kernelNeed(t)
	size := 64 << 20
	if raceOn {
		size = 16 << 20 // the race detector slows the pump tenfold
	}
	for _, c := range []struct {
		name string
		o    rigOpts
		v6   bool
	}{
		{"gso/ipv4", rigOpts{mode: modeGSO}, false},
		{"segment/ipv4", rigOpts{mode: modeSegment}, false},
		{"coalesce/ipv4", rigOpts{mode: modeCoalesce}, false},
		{"gso/ipv6", rigOpts{mode: modeGSO}, true},
		{"segment/ipv6", rigOpts{mode: modeSegment}, true},
		{"coalesce/ipv6", rigOpts{mode: modeCoalesce}, true},
		{"segment/ipv4/vlan", rigOpts{mode: modeSegment, vlan: true}, false},
		{"coalesce/ipv6/vlan", rigOpts{mode: modeCoalesce, vlan: true}, true},
		{"coalesce/ipv4/forward", rigOpts{mode: modeCoalesce, forward: true}, false},
		{"coalesce/ipv6/forward", rigOpts{mode: modeCoalesce, forward: true}, true},
		{"gro/ipv4", rigOpts{mode: modeSegment, gro: true}, false},
		{"gro/ipv6/forward", rigOpts{mode: modeSegment, gro: true, forward: true}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, c.o)
			addr := r.addr(c.v6, 5201)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			got, sent, err := r.run(ctx, t, []string{"tcprecv", addr}, []string{"tcpsend", addr, strconv.Itoa(size)})
			if err != nil {
				r.stop()
				t.Fatalf("%v (pumps: a→b %+v, b→a %+v)", err, r.ab, r.ba)
			}
			var n int
			var sum string
			var secs float64
			if _, err := fmt.Sscanf(got, "got %d %s %f", &n, &sum, &secs); err != nil {
				t.Fatalf("receiver said %q: %v", got, err)
			}
			if n != size || "sent "+sum != sent {
				t.Fatalf("received %d bytes, SHA-256 %s; sent %d, %s", n, sum, size, sent)
			}
			errs := map[string]map[string]int64{}
			for _, ns := range []string{r.nsA, r.nsB, r.nsC} {
				if ns == "" {
					continue
				}
				if e := snmp(t, ns); len(e) != 0 {
					errs[ns] = e
				}
			}
			r.stop()
			if len(errs) != 0 {
				t.Errorf("error counters: %v", errs)
			}
			for _, st := range []*pumpStats{&r.ab, &r.ba} {
				if st.err != nil {
					t.Errorf("pump: %d errors, the first: %v", st.errs, st.err)
				}
			}
			if r.ab.super == 0 && !c.o.gro {
				t.Errorf("the sender's kernel sent no super-frame (offloads %#x): %+v", r.offloads, r.ab)
			}
			if (c.o.mode == modeCoalesce || c.o.gro) && r.ab.merged == 0 {
				t.Errorf("Coalesce merged nothing: %+v", r.ab)
			}
			t.Logf("%s: %d MiB in %.3fs, %.0f Mbit/s; a→b %d frames read (%d super-frames), %d segments, %d merged, %d written; b→a %d read, %d written",
				c.name, size>>20, secs, float64(size)*8/secs/1e6,
				r.ab.frames, r.ab.super, r.ab.segs, r.ab.merged, r.ab.written, r.ba.frames, r.ba.written)
			t.Logf("the first super-frame from the kernel: %d bytes, %+v", r.ab.firstN, r.ab.first)
		})
	}
}

// A super-frame whose checksum field is not the pseudo-header's sum
// arrives damaged once the kernel finishes it: the forwarding rig sees a
// wrong field (so TestKernelTCP's forward cases prove Coalesce's right).
func TestKernelTCPBadPartialCsum(t *testing.T) {
	kernelNeed(t)
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			r := newRig(t, rigOpts{mode: modeCoalesce, forward: true, corrupt: true})
			addr := r.addr(v6, 5201)
			// Give up once C counts bad checksums (or after a while).
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			polled := make(chan struct{})
			go func() {
				defer close(polled)
				for ctx.Err() == nil && snmpPoll(r.nsC)["TcpInCsumErrors"] < 10 {
					time.Sleep(100 * time.Millisecond)
				}
				cancel()
			}()
			got, _, err := r.run(ctx, t, []string{"tcprecv", addr}, []string{"tcpsend", addr, strconv.Itoa(4 << 20)})
			<-polled
			errs := snmp(t, r.nsC)
			r.stop()
			if err == nil {
				t.Errorf("the transfer went through: %s", got)
			}
			if errs["TcpInCsumErrors"] == 0 {
				t.Errorf("receiver's error counters %v, want TCP checksum errors", errs)
			}
			if r.ab.merged == 0 {
				t.Errorf("Coalesce merged nothing: %+v", r.ab)
			}
			t.Logf("with the field complemented: %v; receiver's counters %v", err, errs)
		})
	}
}

// TestKernelUDP sends UDP with segmentation offload (UDP_SEGMENT) through
// a tap that offers USO: the kernel hands the pump GSOUDPL4 super-frames,
// and every datagram cut from them arrives intact.
func TestKernelUDP(t *testing.T) {
	kernelNeed(t)
	const writes, segs, size = 20, 40, 1200
	for _, v6 := range []bool{false, true} {
		name := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		t.Run(name, func(t *testing.T) {
			r := newRig(t, rigOpts{mode: modeSegment})
			if r.offloads&tunFUSO4 == 0 {
				t.Skipf("the kernel does not take TUN_F_USO4|TUN_F_USO6 (offloads %#x)", r.offloads)
			}
			addr := r.addr(v6, 5202)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			got, sent, err := r.run(ctx, t,
				[]string{"udprecv", addr, strconv.Itoa(writes * segs), strconv.Itoa(size)},
				[]string{"udpsend", addr, strconv.Itoa(writes), strconv.Itoa(segs), strconv.Itoa(size)})
			if err != nil {
				r.stop()
				t.Fatalf("%v (pump a→b %+v)", err, r.ab)
			}
			var good, bad int
			if _, err := fmt.Sscanf(got, "got %d %d", &good, &bad); err != nil || sent != "sent" {
				t.Fatalf("receiver said %q, sender %q: %v", got, sent, err)
			}
			errsB := snmp(t, r.nsB)
			r.stop()
			if good != writes*segs || bad != 0 {
				t.Errorf("%d datagrams arrived intact, %d damaged, of %d", good, bad, writes*segs)
			}
			if len(errsB) != 0 {
				t.Errorf("receiver's error counters: %v", errsB)
			}
			if r.ab.err != nil {
				t.Errorf("pump: %d errors, the first: %v", r.ab.errs, r.ab.err)
			}
			if r.ab.udp == 0 {
				t.Errorf("the sender's kernel sent no UDP super-frame: %+v", r.ab)
			}
			t.Logf("%s: %d UDP super-frames read, cut into %d datagrams", name, r.ab.udp, r.ab.segs)
		})
	}
}
