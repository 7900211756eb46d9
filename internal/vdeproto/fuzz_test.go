package vdeproto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/vdeproto"
)

// maxWirePort is the largest port a request's type field carries (24 bits).
const maxWirePort = 1<<24 - 1

// fzRawRequest builds a request field by field, for seeds the encoder
// cannot make: another magic, version, type, family or trailing bytes.
func fzRawRequest(magic, version, typ uint32, family uint16, path, descr []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, magic)
	b = binary.NativeEndian.AppendUint32(b, version)
	b = binary.NativeEndian.AppendUint32(b, typ)
	addr := make([]byte, vdeproto.AddrLen)
	binary.NativeEndian.PutUint16(addr, family)
	copy(addr[2:], path)
	return append(append(b, addr...), descr...)
}

// FuzzDecodeRequest feeds DecodeRequest what a VDE client may write on the
// switch's control socket. A refusal is ErrRequest and a zero Request; an
// accepted request has a port of AnyPort, 0 or N as its type field says, a
// non-empty NUL-free path that fits a sockaddr_un, a NUL-free description
// of at most MaxDescr bytes taken from the bytes after the address, and
// survives Encode and DecodeRequest unchanged.
func FuzzDecodeRequest(f *testing.F) {
	for _, r := range []vdeproto.Request{
		{Port: vdeproto.AnyPort, Path: "/tmp/vde.ctl/data", Descr: "qemu"},
		{Port: 0, Path: "/run/vde/0", Descr: ""},
		{Port: 7, Path: "x", Descr: strings.Repeat("d", vdeproto.MaxDescr+20)},
		{Port: maxWirePort, Path: strings.Repeat("p", vdeproto.PathMax), Descr: "max"},
	} {
		f.Add(r.Encode())
	}
	f.Add(fzRawRequest(vdeproto.Magic, vdeproto.Version, 2, unix.AF_UNIX, []byte("/a"), nil))                      // unknown type
	f.Add(fzRawRequest(vdeproto.Magic, 2, 0, unix.AF_UNIX, []byte("/a"), nil))                                     // old version
	f.Add(fzRawRequest(0xcefaedfe, vdeproto.Version, 0, unix.AF_UNIX, []byte("/a"), nil))                          // other byte order
	f.Add(fzRawRequest(vdeproto.Magic, vdeproto.Version, 1|5<<8, unix.AF_UNIX, []byte("/a"), []byte("d\x00rest"))) // port 0 with junk above
	f.Add(fzRawRequest(vdeproto.Magic, vdeproto.Version, 0, unix.AF_INET, []byte("/a"), nil))
	f.Add(fzRawRequest(vdeproto.Magic, vdeproto.Version, 0, unix.AF_UNIX, nil, []byte("no path")))
	f.Add(fzRawRequest(vdeproto.Magic, vdeproto.Version, 0, unix.AF_UNIX, bytes.Repeat([]byte("u"), vdeproto.AddrLen-2), nil)) // unterminated
	f.Add(fzRawRequest(vdeproto.Magic, vdeproto.Version, 0, unix.AF_UNIX, []byte("/a"), nil)[:vdeproto.HeaderLen+vdeproto.AddrLen-1])
	f.Add([]byte{})
	f.Add(binary.NativeEndian.AppendUint32(nil, vdeproto.Magic))

	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		r, err := vdeproto.DecodeRequest(b)
		if !bytes.Equal(b, in) {
			t.Fatal("DecodeRequest modified its input")
		}
		if err != nil {
			if !errors.Is(err, vdeproto.ErrRequest) {
				t.Fatalf("error %v is not ErrRequest", err)
			}
			if r != (vdeproto.Request{}) {
				t.Fatalf("refused with error %v but returned %+v", err, r)
			}
			return
		}
		if len(b) < vdeproto.HeaderLen+vdeproto.AddrLen {
			t.Fatalf("accepted %d bytes, shorter than a request", len(b))
		}
		if binary.NativeEndian.Uint32(b) != vdeproto.Magic || binary.NativeEndian.Uint32(b[4:]) != vdeproto.Version {
			t.Fatalf("accepted magic %#x version %d", binary.NativeEndian.Uint32(b), binary.NativeEndian.Uint32(b[4:]))
		}
		typ := binary.NativeEndian.Uint32(b[8:])
		wantPort := vdeproto.AnyPort
		switch {
		case typ&0xff == 1:
			wantPort = 0
		case typ&0xff == 0 && typ>>8 != 0:
			wantPort = int(typ >> 8)
		case typ&0xff != 0:
			t.Fatalf("accepted request type %d", typ&0xff)
		}
		if r.Port != wantPort || r.Port > maxWirePort {
			t.Fatalf("type %#x gave port %d, want %d", typ, r.Port, wantPort)
		}
		path, err := vdeproto.DecodeAddr(b[vdeproto.HeaderLen : vdeproto.HeaderLen+vdeproto.AddrLen])
		if err != nil || r.Path != path {
			t.Fatalf("path %q, but its address decodes to %q, %v", r.Path, path, err)
		}
		fzCheckPath(t, r.Path)
		if len(r.Descr) > vdeproto.MaxDescr || strings.IndexByte(r.Descr, 0) >= 0 ||
			!bytes.HasPrefix(b[vdeproto.HeaderLen+vdeproto.AddrLen:], []byte(r.Descr)) {
			t.Fatalf("description %q (%d bytes) is not a NUL-free prefix of at most %d bytes of %q",
				r.Descr, len(r.Descr), vdeproto.MaxDescr, b[vdeproto.HeaderLen+vdeproto.AddrLen:])
		}

		enc := r.Encode()
		if len(enc) != vdeproto.HeaderLen+vdeproto.AddrLen+len(r.Descr) {
			t.Fatalf("re-encoded to %d bytes", len(enc))
		}
		if !bytes.Equal(enc[:8], b[:8]) {
			t.Fatalf("re-encoded header %x, was %x", enc[:8], b[:8])
		}
		r2, err := vdeproto.DecodeRequest(enc)
		if err != nil || r2 != r {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", r, r2, err)
		}
	})
}

// fzCheckPath checks a decoded socket path: not empty, no NUL, and short
// enough to leave room for its NUL in a sockaddr_un.
func fzCheckPath(t *testing.T, path string) {
	t.Helper()
	if path == "" || len(path) > vdeproto.PathMax || strings.IndexByte(path, 0) >= 0 {
		t.Fatalf("decoded path %q (%d bytes): want 1 to %d bytes, no NUL", path, len(path), vdeproto.PathMax)
	}
}

// FuzzDecodeAddr feeds DecodeAddr what a switch may answer. A refusal is
// ErrRequest and no path; an accepted path is the NUL-terminated string at
// the start of an AF_UNIX address, and EncodeAddr gives it back.
func FuzzDecodeAddr(f *testing.F) {
	f.Add(vdeproto.EncodeAddr("/run/vde.ctl/001.42"))
	f.Add(vdeproto.EncodeAddr(strings.Repeat("p", vdeproto.PathMax)))
	f.Add(vdeproto.EncodeAddr(strings.Repeat("p", vdeproto.PathMax+5))) // cut by the encoder
	f.Add(vdeproto.EncodeAddr(""))
	f.Add(append(vdeproto.EncodeAddr("/a\x00/b"), "trailing"...))
	f.Add(vdeproto.EncodeAddr("/short")[:vdeproto.AddrLen-1])
	unterminated := vdeproto.EncodeAddr("")
	copy(unterminated[2:], bytes.Repeat([]byte("u"), vdeproto.AddrLen-2))
	f.Add(unterminated)
	inet := vdeproto.EncodeAddr("/a")
	binary.NativeEndian.PutUint16(inet, unix.AF_INET)
	f.Add(inet)

	f.Fuzz(func(t *testing.T, b []byte) {
		path, err := vdeproto.DecodeAddr(b)
		if err != nil {
			if !errors.Is(err, vdeproto.ErrRequest) || path != "" {
				t.Fatalf("refusal: path %q, error %v (want \"\" and ErrRequest)", path, err)
			}
			return
		}
		if len(b) < vdeproto.AddrLen || binary.NativeEndian.Uint16(b) != unix.AF_UNIX {
			t.Fatalf("accepted %d bytes of family %d", len(b), binary.NativeEndian.Uint16(b))
		}
		fzCheckPath(t, path)
		if !bytes.HasPrefix(b[2:], append([]byte(path), 0)) {
			t.Fatalf("path %q is not the NUL-terminated start of %q", path, b[2:vdeproto.AddrLen])
		}
		enc := vdeproto.EncodeAddr(path)
		if !bytes.Equal(enc[:2+len(path)+1], b[:2+len(path)+1]) {
			t.Fatalf("re-encoded %x, was %x", enc[:2+len(path)+1], b[:2+len(path)+1])
		}
		if p2, err := vdeproto.DecodeAddr(enc); err != nil || p2 != path {
			t.Fatalf("decode(encode(%q)) = %q, %v", path, p2, err)
		}
	})
}

// FuzzRequestRoundTrip encodes requests with any port, path and
// description: the wire form has the fixed size plus the description cut
// to MaxDescr, and decodes to the same port (for AnyPort, 0 and 1 to
// 2^24-1), the path cut to PathMax and at its first NUL (an empty one is
// refused), and the description cut to MaxDescr and at its first NUL.
func FuzzRequestRoundTrip(f *testing.F) {
	f.Add(vdeproto.AnyPort, "/tmp/vde/data", "qemu eth0")
	f.Add(0, "/p", "")
	f.Add(1, "/p", strings.Repeat("x", vdeproto.MaxDescr))
	f.Add(maxWirePort, strings.Repeat("a", vdeproto.PathMax), strings.Repeat("y", vdeproto.MaxDescr+1))
	f.Add(42, strings.Repeat("b", vdeproto.PathMax+1), "nul\x00inside")
	f.Add(3, "", "empty path")
	f.Add(3, "\x00/hidden", "")
	f.Add(-7, "/p", "negative")

	f.Fuzz(func(t *testing.T, port int, path, descr string) {
		r := vdeproto.Request{Port: port, Path: path, Descr: descr}
		enc := r.Encode()
		if want := vdeproto.HeaderLen + vdeproto.AddrLen + min(len(descr), vdeproto.MaxDescr); len(enc) != want {
			t.Fatalf("encoded %d bytes, want %d", len(enc), want)
		}
		got, err := vdeproto.DecodeRequest(enc)

		wantPath := path[:min(len(path), vdeproto.PathMax)]
		if i := strings.IndexByte(wantPath, 0); i >= 0 {
			wantPath = wantPath[:i]
		}
		if wantPath == "" {
			if !errors.Is(err, vdeproto.ErrRequest) {
				t.Fatalf("path %q: decoded %+v, %v; want ErrRequest", path, got, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", r, err)
		}
		wantDescr := descr
		if i := strings.IndexByte(wantDescr, 0); i >= 0 {
			wantDescr = wantDescr[:i]
		}
		wantDescr = wantDescr[:min(len(wantDescr), vdeproto.MaxDescr)]
		if got.Path != wantPath || got.Descr != wantDescr {
			t.Fatalf("decode(encode(%+v)) = %+v, want path %q descr %q", r, got, wantPath, wantDescr)
		}
		switch {
		case port < 0:
			if got.Port != vdeproto.AnyPort {
				t.Fatalf("port %d decoded as %d, want AnyPort", port, got.Port)
			}
		case port <= maxWirePort:
			if got.Port != port {
				t.Fatalf("port %d decoded as %d", port, got.Port)
			}
		default:
			// The type field holds 24 bits: larger ports are not
			// representable (callers bound them); they must still decode
			// to something a switch understands.
			if got.Port != vdeproto.AnyPort && (got.Port < 0 || got.Port > maxWirePort) {
				t.Fatalf("port %d decoded as %d", port, got.Port)
			}
		}
	})
}
