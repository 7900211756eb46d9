// Package wire is the protocol between the ipn library and the daemon.
// docs/protocol.md describes it for programs in other languages.
//
// A client opens one SOCK_SEQPACKET connection to the daemon's control
// socket per IPN socket. Each packet is one request, reply or event: a
// 4-byte header (op, reserved; little-endian uint16s) and a body. A reply
// carries the request's op with ReplyBit set and starts with an int32 errno
// (0 on success). Events (out-of-band messages) use OpOOB and may arrive at
// any time. Connect's reply passes, with SCM_RIGHTS, the data socket: a
// SOCK_SEQPACKET socket where one packet is one message. A failed request's
// reply carries, after the errno, a text that says why (Error).
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Version is the protocol version a client announces in OpHello, and the
// newest a daemon speaks. Version 2 added the status page of a connect's
// reply and the hello's reply (EncodeHelloReply); version 3, taps opened
// with IFF_VNET_HDR (a daemon of version 3 takes them with offloads);
// version 4 (FragVersion), networks whose MTU is over FragMTU, whose data
// sockets carry fragments (frag.go).
const Version = 4

// MinVersion is the oldest protocol version a daemon still serves.
const MinVersion = 1

// EncodeHelloReply encodes the body of a daemon's reply to OpHello: the
// protocol version it speaks (u16), then its build (spec.Build).
func EncodeHelloReply(version int, build string) []byte {
	return append([]byte{byte(version), byte(version >> 8)}, build...)
}

// DecodeHelloReply parses a hello's reply: a daemon of version 1 says
// nothing (version 1, build "").
func DecodeHelloReply(b []byte) (version int, build string) {
	if len(b) < 2 {
		return 1, ""
	}
	return int(b[0]) | int(b[1])<<8, string(b[2:])
}

// Ops of the control protocol.
const (
	OpHello    uint16 = 1 // u16 version, u16 protocol tag
	OpSetOpt   uint16 = 2 // u32 option, value
	OpGetOpt   uint16 = 3 // u32 option; reply: value
	OpBind     uint16 = 4 // path; SCM_RIGHTS: O_PATH fd of the network file
	OpConnect  uint16 = 5 // path; SCM_RIGHTS: O_PATH fd unless bound; reply: ConnectReply + data fd (or FastPathFDs)
	OpShutdown uint16 = 6 // u32 how: ShutRead|ShutWrite
	OpSendOOB  uint16 = 7 // message, sent out of band
	// OpList: u32 offset into the listing; SCM_RIGHTS: optionally the O_PATH
	// fd of one network file. Reply: u32 total length, then the listing's
	// bytes (JSON []NetInfo) from offset on, as many as fit one packet.
	// Offset 0 makes a new listing; later offsets read the same one.
	OpList   uint16 = 8
	OpPolicy uint16 = 9 // u8 set, u8 name length, name, value; SCM_RIGHTS: O_PATH fd of the network file; reply: value
	// OpAttachDevice: u8 kind, u8 flags, device name (bound sessions).
	// With SCM_RIGHTS the tap or packet socket to attach (reply: u32 port);
	// without, DevJoin or DevClearPersist act on a persistent device port.
	OpAttachDevice uint16 = 11
	// OpVDEJoin makes a VDE client a port of the bound network (the
	// session serves VDE for it): body i32 port wanted (-1: any), then the
	// description; SCM_RIGHTS: the client's control stream (an accepted
	// SOCK_STREAM connection, whose SO_PEERCRED names the client) and the
	// switch's datagram socket, connected to the client's. Reply: u32 port.
	OpVDEJoin uint16 = 12
	// OpVDELeave: u32 port; ends a port made by this session's OpVDEJoin.
	OpVDELeave uint16 = 13

	OpOOB uint16 = 0x4000 // event: an out-of-band message for this node
	// OpEnded is the last event of a session whose leaving ended its
	// network: the client may remove the network's file.
	OpEnded  uint16 = 0x4001
	ReplyBit uint16 = 0x8000
)

// ListChunk is the most listing bytes one OpList reply carries.
const ListChunk = 32 << 10

// EncodeVDEJoin encodes an OpVDEJoin body.
func EncodeVDEJoin(want int, descr string) []byte {
	return append(binary.LittleEndian.AppendUint32(nil, uint32(int32(want))), descr...)
}

// DecodeVDEJoin parses an OpVDEJoin body.
func DecodeVDEJoin(b []byte) (want int, descr string, err error) {
	if len(b) < 4 {
		return 0, "", fmt.Errorf("%w: vde join request", ErrMalformed)
	}
	return int(int32(binary.LittleEndian.Uint32(b))), string(b[4:]), nil
}

// EncodePolicy encodes an OpPolicy body: set (else get), name (at most
// 255 bytes; longer ones are cut) and value.
func EncodePolicy(set bool, name, value string) []byte {
	name = name[:min(len(name), 255)]
	b := []byte{0, byte(len(name))}
	if set {
		b[0] = 1
	}
	return append(append(b, name...), value...)
}

// DecodePolicy parses an OpPolicy body.
func DecodePolicy(b []byte) (set bool, name, value string, err error) {
	if len(b) < 2 || len(b) < 2+int(b[1]) || b[1] == 0 {
		return false, "", "", fmt.Errorf("%w: policy request", ErrMalformed)
	}
	n := 2 + int(b[1])
	return b[0] == 1, string(b[2:n]), string(b[n:]), nil
}

// Kinds of device of OpAttachDevice.
const (
	DevTap  = 1 // a tap (IFF_TAP|IFF_NO_PI) file descriptor: one frame per read/write
	DevGrab = 2 // an AF_PACKET SOCK_RAW socket bound to an interface
)

// Flags of OpAttachDevice.
const (
	DevPersist      = 1 // the port outlives the session that attached it
	DevJoin         = 2 // no fd: take over the persistent device port name
	DevClearPersist = 4 // no fd: the port goes with its session (at once if none)
)

// EncodeDevice encodes an OpAttachDevice body.
func EncodeDevice(kind, flags byte, name string) []byte {
	return append([]byte{kind, flags}, name...)
}

// DecodeDevice parses an OpAttachDevice body.
func DecodeDevice(b []byte) (kind, flags byte, name string, err error) {
	if len(b) < 3 {
		return 0, 0, "", fmt.Errorf("%w: device request", ErrMalformed)
	}
	return b[0], b[1], string(b[2:]), nil
}

// Shutdown directions.
const (
	ShutRead  = 1
	ShutWrite = 2
)

// Socket options, numbered as IPN's IPN_SO_* constants.
const (
	OptPort           = 0  // i32: port number wanted at connect (-1: any)
	OptDescr          = 1  // string: port description
	OptChangeNumNodes = 2  // u32: new number of ports (manager)
	OptHandleOOB      = 3  // u32 bool
	OptWantOOBNumNode = 4  // u32 bool
	OptMTU            = 10 // u32
	OptNumNodes       = 11 // u32
	OptMsgPoolSize    = 12 // u32
	OptFlags          = 13 // u32
	OptMode           = 14 // u32 permission bits
	// OptFastPath (u32 bool, before connect) asks for the shared-memory
	// fast path: Connect's reply then passes the ring memfd and four
	// eventfds (FastPathFDs) instead of the data socket, if the daemon
	// grants it.
	OptFastPath = 100
	OptMonitor  = 101 // u32 bool, before connect: a monitor port (needs x and write shut down)
	OptLink     = 102 // u32 bool, before connect: the port is a link to another network (a cable)
)

// FastPathFDs is the number of descriptors a fast-path Connect reply
// passes: the ring memfd; the eventfds woken when the ring to the daemon has
// data and has room, when the ring to the member has data and has room.
const FastPathFDs = 5

// FastPathLog, as OptFastPath's value, asks also for a hub's shared log
// (docs/protocol.md): the reply may then pass, after the FastPathFDs and
// before the status page, the log's read-only memfd.
const FastPathLog = 2

// HeaderLen is the length of a packet header; ReplyHeaderLen adds the errno.
const (
	HeaderLen      = 4
	ReplyHeaderLen = 8
)

// MaxPacket is the largest control packet.
const MaxPacket = 1 << 20

// ErrMalformed reports a packet that does not follow the protocol.
var ErrMalformed = errors.New("malformed packet")

// Packet builds a packet: header for op, then the body parts.
func Packet(op uint16, parts ...[]byte) []byte {
	n := HeaderLen
	for _, p := range parts {
		n += len(p)
	}
	b := make([]byte, HeaderLen, n)
	binary.LittleEndian.PutUint16(b, op)
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// Reply builds a reply to op with errno err (nil for success) and body; a
// failure's body is the error's text.
func Reply(op uint16, err error, body ...[]byte) []byte {
	var e [4]byte
	binary.LittleEndian.PutUint32(e[:], uint32(Errno(err)))
	if err != nil {
		msg := err.Error()
		body = [][]byte{[]byte(msg[:min(len(msg), maxErrorText)])}
	}
	return Packet(op|ReplyBit, append([][]byte{e[:]}, body...)...)
}

// maxErrorText bounds the text of a failed reply.
const maxErrorText = 1024

// Error is a request the daemon refused: its errno, and its text, which
// says why (and names the errno).
type Error struct {
	Errno syscall.Errno
	Text  string
}

func (e *Error) Error() string {
	if e.Text == "" {
		return e.Errno.Error()
	}
	return e.Text
}

// Unwrap returns the errno, so that errors.Is(err, syscall.EACCES) works.
func (e *Error) Unwrap() error { return e.Errno }

// Errno returns the errno to send for err: 0 for nil, the wrapped
// syscall.Errno, or EINVAL.
func Errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != 0 {
		return errno
	}
	return syscall.EINVAL // a failure is never sent as a success
}

// Split returns a packet's op and body.
func Split(pkt []byte) (op uint16, body []byte, err error) {
	if len(pkt) < HeaderLen {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(pkt))
	}
	return binary.LittleEndian.Uint16(pkt), pkt[HeaderLen:], nil
}

// SplitReply returns a reply's body after the errno, and the errno as an
// *Error (nil on success) with the reply's text.
func SplitReply(body []byte) ([]byte, error) {
	if len(body) < 4 {
		return nil, fmt.Errorf("%w: short reply", ErrMalformed)
	}
	if e := syscall.Errno(binary.LittleEndian.Uint32(body)); e != 0 {
		return nil, &Error{Errno: e, Text: string(body[4:])}
	}
	return body[4:], nil
}

// U32 encodes v.
func U32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// GetU32 decodes the uint32 at the start of b.
func GetU32(b []byte) (uint32, error) {
	if len(b) < 4 {
		return 0, fmt.Errorf("%w: want 4 bytes, have %d", ErrMalformed, len(b))
	}
	return binary.LittleEndian.Uint32(b), nil
}

// ConnectReply is the body of a successful OpConnect reply.
type ConnectReply struct {
	Port     uint32
	MTU      uint32
	Proto    uint16
	CanRead  bool
	CanWrite bool
}

// A Connect reply passes, after the data descriptors (the data socket, or
// FastPathFDs), one more: the member's status page, a memfd of
// StatusPageSize bytes, little-endian, that the client maps read-only. At
// 0 is StatusMagic; at StatusDoneOffset a u64, the count of the member's
// messages the daemon has finished with (delivered to every destination,
// or dropped). A reply without it is an older daemon's.
const (
	StatusPageSize   = 4096
	StatusMagic      = 0x31544154534e5049 // "IPNSTAT1"
	StatusDoneOffset = 8
)

// ConnectReplyLen is the encoded length of a ConnectReply.
const ConnectReplyLen = 12

// Encode returns r's wire form.
func (r ConnectReply) Encode() []byte {
	b := make([]byte, ConnectReplyLen)
	binary.LittleEndian.PutUint32(b, r.Port)
	binary.LittleEndian.PutUint32(b[4:], r.MTU)
	binary.LittleEndian.PutUint16(b[8:], r.Proto)
	var sides uint16
	if r.CanRead {
		sides |= ShutRead
	}
	if r.CanWrite {
		sides |= ShutWrite
	}
	binary.LittleEndian.PutUint16(b[10:], sides)
	return b
}

// DecodeConnectReply parses a ConnectReply.
func DecodeConnectReply(b []byte) (ConnectReply, error) {
	if len(b) < ConnectReplyLen {
		return ConnectReply{}, fmt.Errorf("%w: connect reply of %d bytes", ErrMalformed, len(b))
	}
	sides := binary.LittleEndian.Uint16(b[10:])
	return ConnectReply{
		Port:     binary.LittleEndian.Uint32(b),
		MTU:      binary.LittleEndian.Uint32(b[4:]),
		Proto:    binary.LittleEndian.Uint16(b[8:]),
		CanRead:  sides&ShutRead != 0,
		CanWrite: sides&ShutWrite != 0,
	}, nil
}

// Send writes pkt on c, passing fds with SCM_RIGHTS.
func Send(c *net.UnixConn, pkt []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.WriteMsgUnix(pkt, oob, nil)
	return err
}

// Recv reads one packet from c into buf and returns it with the descriptors
// that came with it; the caller owns and must close them. A packet longer
// than buf is an error.
func Recv(c *net.UnixConn, buf []byte) ([]byte, []int, error) {
	oob := make([]byte, unix.CmsgSpace(8*4)) // room for FastPathFDs and more
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	fds, ferr := parseRights(oob[:oobn])
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		closeAll(fds)
		return nil, nil, fmt.Errorf("%w: truncated", ErrMalformed)
	}
	if ferr != nil {
		closeAll(fds)
		return nil, nil, ferr
	}
	if n == 0 {
		closeAll(fds)
		return nil, nil, errEOF
	}
	return buf[:n], fds, nil
}

// errEOF is what Recv returns for an empty packet, which SOCK_SEQPACKET
// delivers when the peer has closed.
var errEOF = fmt.Errorf("connection closed: %w", net.ErrClosed)

// IsEOF reports whether err from Recv means the peer closed the connection.
func IsEOF(err error) bool { return errors.Is(err, errEOF) || errors.Is(err, io.EOF) }

func parseRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %v", ErrMalformed, err)
	}
	var fds []int
	for i := range msgs {
		rights, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue
		}
		fds = append(fds, rights...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Poll returns which of events are ready on c now, without waiting.
func Poll(c syscall.Conn, events int16) int16 {
	raw, err := c.SyscallConn()
	if err != nil {
		return unix.POLLERR
	}
	var revents int16
	raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		if _, err := unix.Poll(fds, 0); err == nil {
			revents = fds[0].Revents
		}
	})
	return revents
}
