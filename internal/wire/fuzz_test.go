package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/ipn-project/ipn/internal/wire"
)

// fzMalformed checks that a refusal is ErrMalformed.
func fzMalformed(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("%s: error %v is not ErrMalformed", what, err)
	}
}

// FuzzSplit feeds Split any packet: fewer bytes than a header is
// ErrMalformed with no body; otherwise the op is the little-endian first
// u16 and the body is the rest of the packet itself (not a copy), and
// Packet rebuilds the packet from them (the reserved u16 as zero).
func FuzzSplit(f *testing.F) {
	f.Add(wire.Packet(wire.OpHello, []byte{1, 0, 0, 0}))
	f.Add(wire.Packet(wire.OpConnect, []byte("/tmp/net")))
	f.Add(wire.Packet(wire.OpShutdown, wire.U32(wire.ShutRead|wire.ShutWrite)))
	f.Add(wire.Packet(wire.OpSendOOB))
	f.Add(wire.Reply(wire.OpBind, syscall.EACCES))
	f.Add([]byte{4, 0, 0xff, 0xff}) // reserved bits set
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, pkt []byte) {
		op, body, err := wire.Split(pkt)
		if len(pkt) < wire.HeaderLen {
			fzMalformed(t, "short packet", err)
			if op != 0 || body != nil {
				t.Fatalf("refused, yet op %d body %q", op, body)
			}
			return
		}
		if err != nil {
			t.Fatalf("%d-byte packet: %v", len(pkt), err)
		}
		if op != binary.LittleEndian.Uint16(pkt) || len(body) != len(pkt)-wire.HeaderLen ||
			(len(body) > 0 && &body[0] != &pkt[wire.HeaderLen]) {
			t.Fatalf("op %d body of %d bytes, from %x", op, len(body), pkt)
		}
		re := wire.Packet(op, body)
		if !bytes.Equal(re[:2], pkt[:2]) || !bytes.Equal(re[2:4], []byte{0, 0}) || !bytes.Equal(re[4:], body) {
			t.Fatalf("Packet(Split(%x)) = %x", pkt, re)
		}
	})
}

// FuzzSplitReply feeds SplitReply any reply body: shorter than an errno is
// ErrMalformed; a zero errno gives the rest as the body and no error; any
// other errno gives no body and a *wire.Error with that errno (errors.Is
// finds it) and the rest as its text.
func FuzzSplitReply(f *testing.F) {
	for _, pkt := range [][]byte{
		wire.Reply(wire.OpGetOpt, nil, wire.U32(1500)),
		wire.Reply(wire.OpConnect, nil, wire.ConnectReply{Port: 3, MTU: 1514, CanRead: true}.Encode()),
		wire.Reply(wire.OpBind, syscall.EACCES),
		wire.Reply(wire.OpPolicy, errors.New("no such policy")), // EINVAL
		wire.Reply(wire.OpList, syscall.ENOENT),
	} {
		_, body, _ := wire.Split(pkt)
		f.Add(body)
	}
	f.Add(binary.LittleEndian.AppendUint32(nil, 0xffffffff))
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{0, 0, 0, 0})

	f.Fuzz(func(t *testing.T, body []byte) {
		rest, err := wire.SplitReply(body)
		if len(body) < 4 {
			fzMalformed(t, "short reply", err)
			if rest != nil {
				t.Fatalf("refused, yet body %q", rest)
			}
			return
		}
		errno := syscall.Errno(binary.LittleEndian.Uint32(body))
		if errno == 0 {
			if err != nil || !bytes.Equal(rest, body[4:]) {
				t.Fatalf("success: body %q, error %v", rest, err)
			}
			return
		}
		if rest != nil {
			t.Fatalf("failure, yet body %q", rest)
		}
		fzCheckError(t, err, errno, string(body[4:]))
	})
}

// fzCheckError checks that err is a *wire.Error with errno and text.
func fzCheckError(t *testing.T, err error, errno syscall.Errno, text string) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v (%T) is not a *wire.Error", err, err)
	}
	if we.Errno != errno || we.Text != text || !errors.Is(err, errno) {
		t.Fatalf("error %+v, want errno %d text %q", we, errno, text)
	}
	if errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("a refusal %v claims a malformed reply", err)
	}
	if text != "" && err.Error() != text {
		t.Fatalf("error text %q, want %q", err.Error(), text)
	}
}

// FuzzReplyRoundTrip builds replies as the daemon does, with any op,
// errno, error text and body, and parses them as the client does: the op
// comes back with ReplyBit, a success brings back the body, and a failure
// brings back the errno (EINVAL for an error that wraps none) and the
// error's text cut to the protocol's bound, and no body.
func FuzzReplyRoundTrip(f *testing.F) {
	f.Add(wire.OpGetOpt, uint32(0), "", []byte{0xdc, 5, 0, 0})
	f.Add(wire.OpBind, uint32(syscall.EACCES), "bind /tmp/n: permission denied", []byte("ignored"))
	f.Add(wire.OpPolicy, uint32(syscall.ENOENT), "", []byte(nil))
	f.Add(wire.OpConnect, uint32(0), "plain error", []byte(nil)) // no errno: EINVAL
	f.Add(wire.OpList, uint32(syscall.E2BIG), strings.Repeat("long ", 300), []byte(nil))

	f.Fuzz(func(t *testing.T, op uint16, errnoVal uint32, text string, body []byte) {
		op &^= wire.ReplyBit
		var err error
		wantErrno := syscall.Errno(errnoVal)
		switch {
		case errnoVal != 0 && text != "":
			err = &textError{text: text, errno: wantErrno}
		case errnoVal != 0:
			err = wantErrno
		case text != "":
			err = errors.New(text)
			wantErrno = syscall.EINVAL
		}
		pkt := wire.Reply(op, err, body)
		gotOp, rbody, serr := wire.Split(pkt)
		if serr != nil || gotOp != op|wire.ReplyBit {
			t.Fatalf("Split: op %#x, %v; want op %#x", gotOp, serr, op|wire.ReplyBit)
		}
		rest, rerr := wire.SplitReply(rbody)
		if err == nil {
			if rerr != nil || !bytes.Equal(rest, body) {
				t.Fatalf("success reply: body %q, error %v; want %q", rest, rerr, body)
			}
			return
		}
		if rest != nil {
			t.Fatalf("failed reply, yet body %q", rest)
		}
		msg := err.Error()
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		fzCheckError(t, rerr, wantErrno, msg)
	})
}

// textError is an error with its own text that wraps an errno, as the
// daemon's fmt.Errorf("...: %w", errno) are.
type textError struct {
	text  string
	errno syscall.Errno
}

func (e *textError) Error() string { return e.text }
func (e *textError) Unwrap() error { return e.errno }

// FuzzDecodePolicy feeds DecodePolicy any OpPolicy body: a refusal is
// ErrMalformed and nothing else; an accepted body has a name of 1 to 255
// bytes that its length byte announces, and EncodePolicy gives back the
// body (with set as 0 or 1).
func FuzzDecodePolicy(f *testing.F) {
	f.Add(wire.EncodePolicy(true, "vlan", "3 untagged"))
	f.Add(wire.EncodePolicy(false, "macs", ""))
	f.Add(wire.EncodePolicy(true, strings.Repeat("n", 255), "v"))
	f.Add([]byte{1, 0, 'v'}) // empty name
	f.Add([]byte{0, 9, 'a'}) // name past the end
	f.Add([]byte{7, 1, 'a'}) // set byte neither 0 nor 1
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		set, name, value, err := wire.DecodePolicy(b)
		if err != nil {
			fzMalformed(t, "policy", err)
			if set || name != "" || value != "" {
				t.Fatalf("refused, yet %v %q %q", set, name, value)
			}
			return
		}
		if len(name) == 0 || len(name) > 255 || len(b) < 2 || int(b[1]) != len(name) ||
			2+len(name)+len(value) != len(b) || set != (b[0] == 1) {
			t.Fatalf("%x decoded to %v %q %q", b, set, name, value)
		}
		want := bytes.Clone(b)
		if want[0] != 1 {
			want[0] = 0
		}
		if re := wire.EncodePolicy(set, name, value); !bytes.Equal(re, want) {
			t.Fatalf("EncodePolicy(DecodePolicy(%x)) = %x", b, re)
		}
	})
}

// FuzzPolicyRoundTrip encodes any policy request whose name the client
// accepts (1 to 255 bytes) and decodes it back unchanged.
func FuzzPolicyRoundTrip(f *testing.F) {
	f.Add(true, "vlan", "port 3 vlan 10")
	f.Add(false, "x", "")
	f.Add(true, strings.Repeat("\x00", 255), "\xff\x00")
	f.Fuzz(func(t *testing.T, set bool, name, value string) {
		if len(name) == 0 || len(name) > 255 {
			return // the client refuses such names before encoding
		}
		s, n, v, err := wire.DecodePolicy(wire.EncodePolicy(set, name, value))
		if err != nil || s != set || n != name || v != value {
			t.Fatalf("decode(encode(%v %q %q)) = %v %q %q, %v", set, name, value, s, n, v, err)
		}
	})
}

// FuzzDecodeDevice feeds DecodeDevice any OpAttachDevice body: a refusal
// (no name) is ErrMalformed and nothing else; otherwise kind, flags and a
// non-empty name come back and EncodeDevice rebuilds the body.
func FuzzDecodeDevice(f *testing.F) {
	f.Add(wire.EncodeDevice(wire.DevTap, wire.DevPersist, "tap0"))
	f.Add(wire.EncodeDevice(wire.DevGrab, 0, "eth0"))
	f.Add(wire.EncodeDevice(wire.DevTap, wire.DevJoin|wire.DevClearPersist, strings.Repeat("i", 15)))
	f.Add(wire.EncodeDevice(wire.DevTap, 0, ""))
	f.Add([]byte{0xff, 0xff, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, flags, name, err := wire.DecodeDevice(b)
		if err != nil {
			fzMalformed(t, "device", err)
			if kind != 0 || flags != 0 || name != "" {
				t.Fatalf("refused, yet %d %d %q", kind, flags, name)
			}
			if len(b) >= 3 {
				t.Fatalf("refused %x: %v", b, err)
			}
			return
		}
		if name == "" || kind != b[0] || flags != b[1] || name != string(b[2:]) {
			t.Fatalf("%x decoded to %d %d %q", b, kind, flags, name)
		}
		if re := wire.EncodeDevice(kind, flags, name); !bytes.Equal(re, b) {
			t.Fatalf("EncodeDevice(DecodeDevice(%x)) = %x", b, re)
		}
	})
}

// FuzzDecodeConnectReply feeds the client's parser of Connect's reply any
// body: shorter than ConnectReplyLen is ErrMalformed and a zero reply;
// otherwise the fields are the little-endian words, the sides the two low
// bits, and Encode rebuilds the first ConnectReplyLen bytes (other side
// bits cleared) and decodes to the same reply.
func FuzzDecodeConnectReply(f *testing.F) {
	f.Add(wire.ConnectReply{Port: 1, MTU: 1514, Proto: 1, CanRead: true, CanWrite: true}.Encode())
	f.Add(wire.ConnectReply{Port: 0xffffffff, MTU: 65535, Proto: 0xffff, CanWrite: true}.Encode())
	f.Add(append(wire.ConnectReply{Port: 9, CanRead: true}.Encode(), "trailing"...))
	f.Add(make([]byte, wire.ConnectReplyLen-1))
	f.Add([]byte{1, 0, 0, 0, 0xea, 5, 0, 0, 1, 0, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := wire.DecodeConnectReply(b)
		if len(b) < wire.ConnectReplyLen {
			fzMalformed(t, "short connect reply", err)
			if r != (wire.ConnectReply{}) {
				t.Fatalf("refused, yet %+v", r)
			}
			return
		}
		if err != nil {
			t.Fatalf("%x: %v", b, err)
		}
		sides := binary.LittleEndian.Uint16(b[10:])
		if r.Port != binary.LittleEndian.Uint32(b) || r.MTU != binary.LittleEndian.Uint32(b[4:]) ||
			r.Proto != binary.LittleEndian.Uint16(b[8:]) ||
			r.CanRead != (sides&wire.ShutRead != 0) || r.CanWrite != (sides&wire.ShutWrite != 0) {
			t.Fatalf("%x decoded to %+v", b, r)
		}
		enc := r.Encode()
		want := bytes.Clone(b[:wire.ConnectReplyLen])
		binary.LittleEndian.PutUint16(want[10:], sides&(wire.ShutRead|wire.ShutWrite))
		if !bytes.Equal(enc, want) {
			t.Fatalf("Encode(DecodeConnectReply(%x)) = %x, want %x", b, enc, want)
		}
		if r2, err := wire.DecodeConnectReply(enc); err != nil || r2 != r {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", r, r2, err)
		}
	})
}

// FuzzDecodeVDEJoin feeds the daemon's parser of OpVDEJoin any body: fewer
// than 4 bytes is ErrMalformed and nothing else; otherwise the port wanted
// is the little-endian i32, the description the rest, and EncodeVDEJoin
// rebuilds the body.
func FuzzDecodeVDEJoin(f *testing.F) {
	f.Add(wire.EncodeVDEJoin(-1, "qemu"))
	f.Add(wire.EncodeVDEJoin(0, ""))
	f.Add(wire.EncodeVDEJoin(1<<23-1, strings.Repeat("d", 200)))
	f.Add(wire.EncodeVDEJoin(-2147483648, "min"))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		want, descr, err := wire.DecodeVDEJoin(b)
		if err != nil {
			fzMalformed(t, "vde join", err)
			if want != 0 || descr != "" || len(b) >= 4 {
				t.Fatalf("refused %x, yet %d %q", b, want, descr)
			}
			return
		}
		if want != int(int32(binary.LittleEndian.Uint32(b))) || descr != string(b[4:]) {
			t.Fatalf("%x decoded to %d %q", b, want, descr)
		}
		if re := wire.EncodeVDEJoin(want, descr); !bytes.Equal(re, b) {
			t.Fatalf("EncodeVDEJoin(DecodeVDEJoin(%x)) = %x", b, re)
		}
	})
}

// FuzzGetU32 feeds GetU32 any bytes: fewer than 4 is ErrMalformed and 0;
// otherwise the little-endian u32 at the start, which U32 encodes back.
func FuzzGetU32(f *testing.F) {
	f.Add(wire.U32(0))
	f.Add(wire.U32(0xdeadbeef))
	f.Add(append(wire.U32(7), 1, 2, 3))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := wire.GetU32(b)
		if len(b) < 4 {
			fzMalformed(t, "short u32", err)
			if v != 0 {
				t.Fatalf("refused, yet %d", v)
			}
			return
		}
		if err != nil || v != binary.LittleEndian.Uint32(b) || !bytes.Equal(wire.U32(v), b[:4]) {
			t.Fatalf("%x: %d, %v", b, v, err)
		}
	})
}
