// Package ipn is Inter Process Networking for Go programs: a process binds
// or connects to a named network (a path in the file system) and every
// message it sends is delivered, by the network's policy, to the other
// members: all of them (hub), the right one (switch), or what a custom
// policy decides.
//
// A Socket mirrors the IPN socket calls: make one for a protocol, set
// options, Bind (create or manage) and/or Connect (join), then Send and
// Recv whole messages. File permissions on the network file are the access
// control: r to receive, w to send, x to manage.
//
// Networks are served by the ipn daemon, which a Dialer reaches
// (DefaultDialer: $IPN_SOCKET, else the system daemon, else the user's
// own). This package holds the client alone: it links no daemon, engine
// or policy. A program that should start a daemon when none runs, so that
// it works on a fresh machine with nothing set up, imports
// github.com/ipn-project/ipn/daemon/autostart, which makes DefaultDialer
// start the program itself, re-executed, as the daemon (the ipn command
// does). The calls that act only on networks a daemon already serves
// (List, PolicyOption, SetPolicyOption) never start one.
package ipn

import (
	"errors"
	"net"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/ctlsock"
	"github.com/ipn-project/ipn/internal/spec"
	"github.com/ipn-project/ipn/internal/wire"
)

// Protocol is a delivery policy's tag, chosen when a socket is made.
type Protocol = spec.Tag

// The protocols of IPN. Any takes the network's; the daemon serves the
// others.
const (
	Any         = spec.Any
	Broadcast   = spec.Broadcast
	Hub         = spec.Hub
	VDESwitch   = spec.VDESwitch
	VDESwitchL3 = spec.VDESwitchL3
)

// ProtocolByName returns the protocol named name ("hub", "switch",
// "l3switch", or one a program registered with policy.Register), "any",
// or the one numbered name ("100", 1..65535).
func ProtocolByName(name string) (Protocol, bool) {
	if name == "any" {
		return Any, true
	}
	if n, err := strconv.ParseUint(name, 10, 16); err == nil && n > 0 {
		return Protocol(n), true // a number: the tag itself, registered here or not
	}
	return spec.TagOf(name)
}

// ProtocolNames returns the names of the protocols ProtocolByName knows.
func ProtocolNames() []string { return spec.Names() }

// Flags are a network's flags, set before Bind.
type Flags = spec.Flags

// The network flags of IPN.
const (
	// Lossless makes senders wait while the network's pool is full instead
	// of dropping messages for slow receivers.
	Lossless = spec.Lossless
	// Excl makes Bind fail on an existing network, and the network refuse
	// other binders.
	Excl = spec.Excl
	// FlexMTU keeps each message in a buffer of its own size rather than
	// one of the MTU's.
	FlexMTU = spec.FlexMTU
)

// Defaults of a new network.
const (
	DefaultMTU      = spec.DefaultMTU
	DefaultNumNodes = spec.DefaultPorts
	DefaultPoolSize = spec.DefaultPoolSize
	// MaxMTU is the largest MTU a network may have: 64 MiB.
	MaxMTU = spec.MaxMTU
	// DefaultMode gives x (manage) to the owner alone, r and w to all (less
	// the umask); the original IPN's 0777 let anyone manage.
	DefaultMode = 0o766
)

// How says which side Shutdown closes.
type How int

// Sides of a socket for Shutdown.
const (
	ShutRead      How = wire.ShutRead
	ShutWrite     How = wire.ShutWrite
	ShutReadWrite How = wire.ShutRead | wire.ShutWrite
)

// MsgFlags describe a received message.
type MsgFlags int

// Flags of a received message.
const (
	// MsgOOB marks an out-of-band message (a notice of the network or a
	// message sent with SendOOB).
	MsgOOB MsgFlags = 1 << iota
	// MsgTrunc marks a message longer than the buffer; the rest was lost.
	MsgTrunc

	// msgLent marks, inside the package, a message RecvInPlace's function
	// was already given in place.
	msgLent MsgFlags = 1 << 30
)

// ErrOverwritten reports a message that the network wrote over while
// RecvInPlace's function read it: a receiver of a lossy hub lapped by the
// senders. What the function saw is not the message.
var ErrOverwritten = errors.New("ipn: message written over while read in place")

// NumNodesNotice is an out-of-band notice of the number of readers and
// writers of a network, sent to ports that asked with SetWantNumNodes.
type NumNodesNotice struct {
	Level, Tag       int32
	Readers, Writers int32
}

// ParseNumNodesNotice decodes a numnodes notice received with MsgOOB.
func ParseNumNodesNotice(b []byte) (NumNodesNotice, error) {
	if len(b) != 16 {
		return NumNodesNotice{}, errors.New("ipn: not a numnodes notice")
	}
	u := func(i int) int32 {
		return int32(uint32(b[i]) | uint32(b[i+1])<<8 | uint32(b[i+2])<<16 | uint32(b[i+3])<<24)
	}
	return NumNodesNotice{Level: u(0), Tag: u(4), Readers: u(8), Writers: u(12)}, nil
}

// NetInfo describes a network as the daemon lists it.
type NetInfo = wire.NetInfo

// PortInfo describes a connected port of a network.
type PortInfo = wire.PortInfo

// Addr is a network's address: its path.
type Addr string

// Network returns "ipn".
func (a Addr) Network() string { return "ipn" }

// String returns the path.
func (a Addr) String() string { return string(a) }

// Join connects to the network at path in one call, creating it (and then
// managing it) if it does not exist. It is the common case: a peer of a
// network. proto is the policy to use or expect; Any accepts the network's.
func Join(path string, proto Protocol) (*Socket, error) {
	s, err := NewSocket(proto)
	if err != nil {
		return nil, err
	}
	err = s.Connect(path)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		if err = s.Bind(path); err == nil {
			err = s.Connect("")
		}
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// ErrNoDaemon reports that no daemon runs where the Dialer looks, and none
// was started there (List and the policy calls start none; NewSocket only
// with a Dialer that has Start).
var ErrNoDaemon = ctlsock.ErrNoDaemon

// ErrNotDaemon reports a control socket served by a process that is
// neither root nor this process's user: not a daemon to trust (EACCES).
var ErrNotDaemon = ctlsock.ErrNotDaemon

// ErrUnsafeDir reports a control socket directory another user could
// change, where whoever answers could be that user's (EPERM).
var ErrUnsafeDir = ctlsock.ErrUnsafeDir

// List returns the networks the daemon serves; with a path, just that one.
// It starts no daemon: with none running it fails with an error wrapping
// ErrNoDaemon.
func List(path string) ([]NetInfo, error) {
	s, err := newReadSocket()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.list(path)
}

// ListFile is List of the network whose file f is, opened by the caller
// (O_PATH is enough): that very network, whatever f.Name() names now.
// It starts no daemon (ErrNoDaemon).
func ListFile(f *os.File) ([]NetInfo, error) {
	s, err := newReadSocket()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var list []NetInfo
	err = withFD(f, "list", func(fd int) (err error) {
		list, err = s.listFD(fd, f.Name())
		return err
	})
	return list, err
}

// SetPolicyOption changes a setting of the policy of the network at path
// while it runs (say, a switch's VLANs); it needs x on the network file.
// As PolicyOption, it starts no daemon (ErrNoDaemon).
func SetPolicyOption(path, name, value string) error {
	_, err := policyRequest(path, true, name, value)
	return err
}

// PolicyOption reads a setting or a table of the policy of the network at
// path (say, a switch's MAC table, as JSON); it needs r or x. It starts no
// daemon: with none running it fails with an error wrapping ErrNoDaemon.
func PolicyOption(path, name string) (string, error) {
	return policyRequest(path, false, name, "")
}

// PolicyOptionFile is PolicyOption for the network whose file f is,
// opened by the caller (O_PATH is enough): the setting of that very
// network, whatever f.Name() names now. The daemon decides the rights on
// f as on a path.
func PolicyOptionFile(f *os.File, name string) (string, error) {
	var v string
	err := withFD(f, "policy option", func(fd int) (err error) {
		v, err = policyRequestFD(fd, f.Name(), false, name, "")
		return err
	})
	return v, err
}

// SetPolicyOptionFile is SetPolicyOption for the network whose file f is,
// as PolicyOptionFile.
func SetPolicyOptionFile(f *os.File, name, value string) error {
	return withFD(f, "policy option", func(fd int) error {
		_, err := policyRequestFD(fd, f.Name(), true, name, value)
		return err
	})
}

// withFD calls fn with f's descriptor, kept open until fn returns.
func withFD(f *os.File, op string, fn func(fd int) error) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return &net.OpError{Op: op, Net: "ipn", Addr: Addr(f.Name()), Err: err}
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return &net.OpError{Op: op, Net: "ipn", Addr: Addr(f.Name()), Err: err}
	}
	return ferr
}

func policyRequest(path string, set bool, name, value string) (string, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &net.OpError{Op: "policy option", Net: "ipn", Addr: Addr(path), Err: err}
	}
	defer unix.Close(fd)
	return policyRequestFD(fd, path, set, name, value)
}

// policyRequestFD reads (or, if set, changes) the setting name of the
// policy of the network of the file fd, named path in errors.
func policyRequestFD(fd int, path string, set bool, name, value string) (string, error) {
	op := "policy option"
	if len(name) == 0 || len(name) > 255 {
		return "", &net.OpError{Op: op, Net: "ipn", Addr: Addr(path), Err: syscall.EINVAL}
	}
	s, err := newReadSocket() // no daemon, no network: start none
	if err != nil {
		return "", err
	}
	defer s.Close()
	if set {
		_, _, err := s.request(wire.OpPolicy, wire.EncodePolicy(true, name, value), fd)
		if err != nil {
			return "", &net.OpError{Op: op, Net: "ipn", Addr: Addr(path), Err: err}
		}
		return "", nil
	}
	b, err := s.paged(func(off uint32) ([]byte, error) {
		body, _, err := s.request(wire.OpPolicy, wire.EncodePolicy(false, name, string(wire.U32(off))), fd)
		return body, err
	})
	if err != nil {
		return "", &net.OpError{Op: op, Net: "ipn", Addr: Addr(path), Err: err}
	}
	return string(b), nil
}
