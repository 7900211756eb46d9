// Package vdeproto is the VDE 2 switch protocol's join handshake, both
// ways: the request a client sends on the switch's control socket, and the
// address the switch answers with. All integers are in host byte order and
// the structures are packed, as vde_switch and libvdeplug have them:
//
//	request: magic 0xfeedface | version 3 | type | sockaddr_un (110 bytes) | description
//	answer:  sockaddr_un (110 bytes) of the switch's data socket
//
// type is 0 for a new port (any, or N for N<<8) and 1 for port 0.
package vdeproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Protocol constants.
const (
	Magic   = 0xfeedface
	Version = 3

	typeNewControl = 0 // a new port: any, or the one in type>>8
	typeNewPort0   = 1 // port 0

	// AddrLen is the length of a struct sockaddr_un: family and path.
	AddrLen = 110
	// PathMax is the longest path an address holds (with its NUL).
	PathMax = AddrLen - 2 - 1
	// HeaderLen is the request's magic, version and type.
	HeaderLen = 12
	// MaxDescr is the longest description a switch keeps.
	MaxDescr = 128
	// RequestMax is the longest request a switch reads.
	RequestMax = HeaderLen + AddrLen + MaxDescr
)

// AnyPort asks for any free port.
const AnyPort = -1

// MaxPort is the highest port number a request can carry.
const MaxPort = 1<<24 - 1

// Request is a client's join request.
type Request struct {
	Port  int    // the port wanted (0..MaxPort), or AnyPort; others ask for any
	Path  string // the client's data socket
	Descr string // at most MaxDescr bytes are sent
}

// ErrRequest reports bytes that are not a VDE 2 join request.
var ErrRequest = errors.New("not a VDE 2 request")

// Encode returns the request's wire form.
func (r Request) Encode() []byte {
	typ := uint32(typeNewControl)
	switch {
	case r.Port == 0:
		typ = typeNewPort0
	case r.Port > 0 && r.Port <= MaxPort:
		typ |= uint32(r.Port) << 8
	}
	d := r.Descr[:min(len(r.Descr), MaxDescr)]
	b := make([]byte, 0, HeaderLen+AddrLen+len(d))
	b = binary.NativeEndian.AppendUint32(b, Magic)
	b = binary.NativeEndian.AppendUint32(b, Version)
	b = binary.NativeEndian.AppendUint32(b, typ)
	b = append(b, EncodeAddr(r.Path)...)
	return append(b, d...)
}

// DecodeRequest parses a request; the description ends at its first NUL,
// if any, and is cut to MaxDescr bytes.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) < 8 || binary.NativeEndian.Uint32(b) != Magic {
		return Request{}, ErrRequest
	}
	if v := binary.NativeEndian.Uint32(b[4:]); v != Version {
		return Request{}, fmt.Errorf("%w: version %d, only %d is served", ErrRequest, v, Version)
	}
	if len(b) < HeaderLen+AddrLen {
		return Request{}, fmt.Errorf("%w: %d bytes, want at least %d", ErrRequest, len(b), HeaderLen+AddrLen)
	}
	r := Request{Port: AnyPort}
	typ := binary.NativeEndian.Uint32(b[8:])
	switch typ & 0xff {
	case typeNewPort0:
		r.Port = 0
	case typeNewControl:
		if p := int(typ >> 8); p > 0 {
			r.Port = p
		}
	default:
		return Request{}, fmt.Errorf("%w: request type %d", ErrRequest, typ&0xff)
	}
	path, err := DecodeAddr(b[HeaderLen : HeaderLen+AddrLen])
	if err != nil {
		return Request{}, err
	}
	r.Path = path
	d := b[HeaderLen+AddrLen:]
	if i := bytes.IndexByte(d, 0); i >= 0 {
		d = d[:i]
	}
	r.Descr = string(d[:min(len(d), MaxDescr)])
	return r, nil
}

// EncodeAddr returns the sockaddr_un of path (cut to PathMax bytes).
func EncodeAddr(path string) []byte {
	b := make([]byte, AddrLen)
	binary.NativeEndian.PutUint16(b, unix.AF_UNIX)
	copy(b[2:2+PathMax], path)
	return b
}

// DecodeAddr parses a sockaddr_un: an AF_UNIX address whose path is not
// empty and ends with a NUL within the structure.
func DecodeAddr(b []byte) (string, error) {
	if len(b) < AddrLen {
		return "", fmt.Errorf("%w: address of %d bytes, want %d", ErrRequest, len(b), AddrLen)
	}
	if binary.NativeEndian.Uint16(b) != unix.AF_UNIX {
		return "", fmt.Errorf("%w: address family %d, not AF_UNIX", ErrRequest, binary.NativeEndian.Uint16(b))
	}
	p := b[2:AddrLen]
	i := bytes.IndexByte(p, 0)
	if i <= 0 {
		return "", fmt.Errorf("%w: empty or unterminated socket path", ErrRequest)
	}
	return string(p[:i]), nil
}
