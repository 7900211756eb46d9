package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ipn-project/ipn"
	"github.com/ipn-project/ipn/cable"
)

func init() {
	commands = append(commands, plugCmd)
}

func plugCmd() *cobra.Command {
	var (
		reconnect bool
		descr     string
		persist   bool
		noRejoin  bool
	)
	cmd := &cobra.Command{
		Use:   "plug PATH URL",
		Short: "Join a network to another place with a virtual cable",
		Long: `Join the IPN network at PATH to the place URL names, like a cable: frames
the network sends to the cable go out of the far end, frames from the far
end enter the network.

URLs:
  - or stdio                   2-byte big-endian length + frame on stdin/stdout,
                               as vde_plug speaks: ipn plug /tmp/a - = ssh host ipn plug /tmp/b -
  ipn://PATH2                  another local IPN network
  vde:///DIR[N]                a vde_switch (or any VDE 2 switch), optionally port N
  udp://LOCAL:PORT/REMOTE:PORT frames as UDP datagrams, accepted from REMOTE only
  vxlan://GROUP_OR_PEER[:PORT]/vni=N
                               RFC 7348 VXLAN (a Linux "type vxlan" device talks to it);
                               a PEER is heard from its VXLAN port (/srcport=MIN-MAX for
                               others), a GROUP from anyone (/allow=CIDR,... to choose)
  vxvde://[GROUP]              vdeplug4's multicast distributed switch (/allow=CIDR,...)
  qemu-stream:///PATH[?mode=OCTAL]
                               listen at PATH for QEMU 7.2+ (no libvdeplug), one QEMU at
                               a time, again after it restarts: qemu-system-x86_64 ...
                               -netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH
                               -device virtio-net-pci,netdev=n0
  qemu-stream+connect:///PATH  connect to QEMU's stream server at PATH (start QEMU first:
                               -netdev stream,id=n0,server=on,addr.type=unix,addr.path=PATH)
  qemu-dgram:///PATH?remote=QPATH[&mode=OCTAL]
                               bind PATH, exchange datagrams with QEMU's socket QPATH
                               (connected to it: the kernel refuses other senders):
                               -netdev dgram,id=n0,local.type=unix,local.path=QPATH,remote.type=unix,remote.path=PATH
  tap://NAME                   a Linux tap interface, made if missing (needs
                               CAP_NET_ADMIN) and set up; addresses are yours
  grab://IFACE                 an existing interface, in promiscuous mode
                               (needs CAP_NET_RAW)

tap:// and grab:// work from any network namespace (ip netns exec NS ipn
plug ...): plug binds the network (needs x), opens the device and passes it
to the daemon, whose port it becomes; plug then waits until interrupted,
and the port goes when it exits, unless --persist (see ipn device). The
port's sides are your rights on the network: r, frames from the network go
out of the device; w, frames the device receives enter the network.

MTU: the network's MTU is its largest frame, the 14-byte Ethernet header
included, and an interface's is the payload, so a tap gets the network's
MTU less 14 (1500 on the default 1514; --mtu of ipn cat --bind chooses
the network's), a tap made here and an existing one alike. A VLAN tag
counts against the network's MTU, 4 bytes each: give a VLAN interface on
the tap an MTU 4 less than the tap's, or the network 4 more (1518). An
existing tap whose MTU cannot be set (no CAP_NET_ADMIN) is refused if
larger, kept if smaller. grab:// refuses an interface whose MTU is larger
than the network's less 14 (it would lose its larger frames) and leaves
its MTU alone: lower it, or use a network with a larger MTU.

qemu-stream and qemu-dgram frames are 4-byte big-endian length + frame and
one datagram a frame, as QEMU speaks them. The socket files plug makes get
your umask's mode, or mode= (octal), never replace anything but a stale
socket, and go when plug exits. A frame from QEMU over the network's MTU is
dropped, and the drops are counted on stderr; so are frames for a QEMU that
does not read its stream: plug waits 250ms for it, then drops them at once
until it reads again, so that it never holds the network up. qemu-dgram
connects its socket to QPATH again every 250ms, for a QEMU that restarts.

UDP, VXLAN and vxvde carry no authentication and no encryption: run them on
a trusted segment or inside WireGuard or IPsec (docs/multihost.md).

When the far end goes away, plug exits with an error (0 when stdin just
ended), or with --reconnect opens it again, waiting longer each time.
When the daemon goes away, a cable's plug re-joins the network once a
daemon answers again and goes on (--no-rejoin: it exits with status 1);
a tap:// or grab:// plug exits, its port gone with the daemon.`,
		Args: cobra.ExactArgs(2),
		RunE: interruptible(func(ctx context.Context, cmd *cobra.Command, args []string) error {
			if scheme, name, ok := strings.Cut(args[1], "://"); ok && (scheme == "tap" || scheme == "grab") {
				return runDevicePlug(ctx, cmd, args[0], scheme, name, persist)
			}
			if persist {
				return fmt.Errorf("--persist is for tap:// and grab://")
			}
			if err := checkScheme(args[1]); err != nil {
				return err
			}
			return runPlug(ctx, cmd, args[0], args[1], reconnect, descr, !noRejoin)
		}),
	}
	cmd.Flags().BoolVar(&reconnect, "reconnect", false, "open the far end again when it goes away")
	cmd.Flags().StringVar(&descr, "descr", "", "port description (default: cable URL)")
	cmd.Flags().BoolVar(&persist, "persist", false, "tap://, grab://: the port stays after plug exits")
	cmd.Flags().BoolVar(&noRejoin, "no-rejoin", false, "exit when the daemon goes away instead of re-joining")
	return cmd
}

// plugSchemes returns every scheme plug takes: the cables' and the devices'.
func plugSchemes() []string {
	l := append(cable.Schemes(), "tap", "grab")
	slices.Sort(l)
	return l
}

// checkScheme refuses a URL whose scheme plug does not take, before it
// joins the network, listing the ones it takes.
func checkScheme(url string) error {
	if url == "-" || url == "stdio" {
		return nil
	}
	scheme, _, ok := strings.Cut(url, "://")
	if !ok {
		return fmt.Errorf("%q: want SCHEME://... or - for stdio (schemes: %s)", url, strings.Join(plugSchemes(), ", "))
	}
	if !slices.Contains(cable.Schemes(), scheme) {
		return fmt.Errorf("%q: unknown scheme %q (schemes: %s)", url, scheme, strings.Join(plugSchemes(), ", "))
	}
	return nil
}

func runPlug(ctx context.Context, cmd *cobra.Command, path, url string, reconnect bool, descr string, rejoin bool) error {
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := setRejoin(s, rejoin, "ipn plug", path, cmd.ErrOrStderr()); err != nil {
		return err
	}
	if descr == "" {
		descr = "cable " + url
		if len(descr) > 128 {
			descr = descr[:128]
		}
	}
	if err := s.SetDescription(descr); err != nil {
		return err
	}
	if err := s.SetLink(true); err != nil { // loop protection probes here
		return err
	}
	if err := s.Connect(path); err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	wait := 100 * time.Millisecond
	for {
		far, err := cable.Open(ctx, url)
		if err != nil && !cable.Retryable(err) {
			return err // a URL that no waiting makes right
		}
		if err == nil {
			wait = 100 * time.Millisecond
			err = cable.Run(ctx, s, far)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, cable.ErrNetwork), errors.Is(err, cable.ErrLoop):
			return err
		case !reconnect:
			if errors.Is(err, io.EOF) && (url == "-" || url == "stdio") {
				return nil // the input ended: a normal end for a stream
			}
			return err
		}
		fmt.Fprintf(stderr, "ipn plug: %v; again in %v\n", strings.TrimPrefix(err.Error(), "cable "), wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// runDevicePlug attaches a tap or grabbed interface to the network at path
// and waits until interrupted.
func runDevicePlug(ctx context.Context, cmd *cobra.Command, path, scheme, name string, persist bool) error {
	if name == "" {
		return fmt.Errorf("%s://: want a device name", scheme)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("no network: %w", err)
	}
	s, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return err
	}
	defer s.Close()
	noticeOldDaemon(s, cmd.ErrOrStderr())
	if err := s.Bind(path); err != nil {
		return err
	}
	var port int
	if scheme == "tap" {
		port, err = s.AttachTap(name, persist)
	} else {
		port, err = s.AttachGrab(name, persist)
	}
	if err != nil {
		return err
	}
	note := ""
	if ifi, err := net.InterfaceByName(name); err == nil {
		note = fmt.Sprintf(" (MTU %d)", ifi.MTU)
	}
	if persist {
		note += ", persistent"
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "ipn plug: %s %s is port %d of %s%s\n", scheme, name, port, path, note)
	return holdUntil(ctx, s)
}

// holdUntil waits until ctx ends (a signal: the command is done) or the
// daemon serving s goes away, which is an error: the network is lost.
func holdUntil(ctx context.Context, s *ipn.Socket) error {
	select {
	case <-ctx.Done():
		return nil
	case <-s.Done():
		return s.Err()
	}
}
