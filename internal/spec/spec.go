// Package spec holds the facts of IPN that its client and its daemon both
// use: the policy tags and their names, the network flags, a network's
// defaults and limits, where a daemon's control socket is, and the
// environment variables both read. It imports nothing of either side.
package spec

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
)

// Tag identifies a delivery policy; it is the IPN protocol number.
type Tag uint16

// The protocol tags of IPN. Any means "whatever the network uses".
const (
	Any         Tag = 0
	Broadcast   Tag = 1
	Hub             = Broadcast
	VDESwitch   Tag = 2
	VDESwitchL3 Tag = 3
)

// Flags are a network's IPN flags.
type Flags uint32

// The network flags of IPN.
const (
	// Lossless makes senders wait instead of dropping messages.
	Lossless Flags = 1
	// Excl refuses binding to an existing network and other binders.
	Excl Flags = 2
	// FlexMTU keeps each message in a buffer of its own size, not the MTU's.
	FlexMTU Flags = 4
	// AllFlags is every flag a network may have.
	AllFlags = Lossless | Excl | FlexMTU
)

// A network's defaults and limits.
const (
	DefaultMTU      = 1514
	DefaultPorts    = 64
	DefaultPoolSize = 8
	// MaxMTU is 64 MiB. One packet of a Unix SOCK_SEQPACKET socket
	// carries at most about 4 MiB + 68 KiB (the kernel's largest linear
	// allocation and its page fragments): the data sockets of a network
	// whose MTU is over 4 MiB carry its messages in fragments (protocol
	// version 4, internal/wire's frag.go).
	MaxMTU = 64 << 20
	// MaxOOB is the longest out-of-band message, whatever the MTU.
	MaxOOB      = 65535
	MaxPorts    = 65536
	MaxPoolSize = 1 << 16
	// MaxDescription is the longest port description, in bytes.
	MaxDescription = 128
)

// Environment variables the client and the daemon read.
const (
	// SocketEnv sets the daemon's control socket.
	SocketEnv = "IPN_SOCKET"
	// NoAutostartEnv, set to 1, stops a client from starting a daemon.
	NoAutostartEnv = "IPN_NO_AUTOSTART"
	// FastPathEnv, set to 0, makes a client ask for no fast path.
	FastPathEnv = "IPN_FASTPATH"
	// DaemonChildEnv marks a program re-executed to be a daemon.
	DaemonChildEnv = "IPN_DAEMON_CHILD"
	// HolderChildEnv marks a program a daemon re-executed to be its
	// holder of persistent device ports.
	HolderChildEnv = "IPN_HOLDER_CHILD"
	// SpinEnv sets how long a side of the fast path (a client or the
	// daemon) polls its ring before it sleeps: a duration such as 50us,
	// or 0 never to poll (see shmring.Spin).
	SpinEnv = "IPN_SPIN"
	// UDPOffloadEnv, set to off, nogso or nogro, turns off the UDP
	// segmentation and receive offloads of cables' UDP far ends.
	UDPOffloadEnv = "IPN_UDP_OFFLOAD"
)

// SystemSocket is the control socket of a daemon run by root for all users.
const SystemSocket = "/run/ipn/ipn.sock"

// UserSocket returns the control socket of a daemon serving the calling
// user alone: in $XDG_RUNTIME_DIR, else in /tmp/ipn-UID.
func UserSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "ipn", "ipn.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("ipn-%d", os.Geteuid()), "ipn.sock")
}

// DefaultSocket returns the control socket a daemon started without one
// uses: $IPN_SOCKET, else SystemSocket for root, else UserSocket.
func DefaultSocket() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	if os.Geteuid() == 0 {
		return SystemSocket
	}
	return UserSocket()
}

// names maps tags to policy names both ways: the built-in policies', and
// those a program registers (policy.Register names them here).
var names = struct {
	sync.RWMutex
	byTag  map[Tag]string
	byName map[string]Tag
}{
	byTag:  map[Tag]string{Broadcast: "hub", VDESwitch: "switch", VDESwitchL3: "l3switch"},
	byName: map[string]Tag{"hub": Broadcast, "switch": VDESwitch, "l3switch": VDESwitchL3},
}

// Name names the policy of tag t, if it has a name.
func Name(t Tag) (string, bool) {
	names.RLock()
	defer names.RUnlock()
	n, ok := names.byTag[t]
	return n, ok
}

// TagOf returns the tag named name.
func TagOf(name string) (Tag, bool) {
	names.RLock()
	defer names.RUnlock()
	t, ok := names.byName[name]
	return t, ok
}

// Names returns the policy names, sorted.
func Names() []string {
	names.RLock()
	defer names.RUnlock()
	l := make([]string, 0, len(names.byName))
	for n := range names.byName {
		l = append(l, n)
	}
	sort.Strings(l)
	return l
}

// RegisterName names the policy of tag t. Naming a tag as it is named
// already does nothing; a tag or a name taken otherwise is EEXIST.
func RegisterName(t Tag, name string) error {
	if t == Any || name == "" {
		return fmt.Errorf("policy %d %q: %w", t, name, syscall.EINVAL)
	}
	names.Lock()
	defer names.Unlock()
	if n, ok := names.byTag[t]; ok {
		if n == name {
			return nil
		}
		return fmt.Errorf("policy %d %q: the tag is %q's: %w", t, name, n, syscall.EEXIST)
	}
	if u, ok := names.byName[name]; ok {
		return fmt.Errorf("policy %d %q: the name is tag %d's: %w", t, name, u, syscall.EEXIST)
	}
	names.byTag[t] = name
	names.byName[name] = t
	return nil
}

// String returns the name of t, "any", or "protoN".
func (t Tag) String() string {
	if t == Any {
		return "any"
	}
	if n, ok := Name(t); ok {
		return n
	}
	return fmt.Sprintf("proto%d", uint16(t))
}

// Loop probes: the frames policies send out of their links to find loops
// (policy/loop); a member that takes frames as Ethernet (a TCP/IP stack)
// tells them apart with IsProbe.
const (
	// ProbeEtherType is the probes' ethertype (IEEE local experimental).
	ProbeEtherType = 0x88b5
	// ProbeLen is a probe's length: Ethernet's minimum frame, no FCS.
	ProbeLen = 60
)

// ProbeDst is the probes' destination, a locally administered multicast MAC.
var ProbeDst = [6]byte{0x03, 'I', 'P', 'N', 0x00, 0x01}

// IsProbe reports whether frame is a loop probe, by its destination and
// ethertype.
func IsProbe(frame []byte) bool {
	return len(frame) >= 14 && [6]byte(frame[:6]) == ProbeDst &&
		uint16(frame[12])<<8|uint16(frame[13]) == ProbeEtherType
}
