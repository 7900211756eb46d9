package ipn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/wire"
)

// dataPath moves a connected socket's ordinary messages to and from the
// daemon: over the data socket (sockPath) or through the fast path's
// shared-memory rings (fastPath). The daemon's side has the same two, its
// seqpacket and shm endpoints.
type dataPath interface {
	// send sends msgs in order, waiting for room up to the write
	// deadline, and returns how many it sent.
	send(msgs [][]byte) (int, error)
	// gen returns the count of interruptions, for recv.
	gen() uint64
	// interrupt makes a recv in progress, or the next one given an older
	// gen, return os.ErrDeadlineExceeded.
	interrupt()
	// setWriteDeadline bounds send's wait for room.
	setWriteDeadline(t time.Time) error
	// daemonGone ends the waits that only the daemon could end.
	daemonGone()
	// close releases the path and unblocks send and recv.
	close()
}

var (
	_ dataPath = (*sockPath)(nil)
	_ dataPath = (*fastPath)(nil)
)

// sockPath is the data path over the data socket, a SOCK_SEQPACKET
// connection to the daemon: one message per packet, batches with recvmmsg
// and sendmmsg; or, on a network whose MTU is over wire.FragMTU, one
// fragment per packet (frag).
type sockPath struct {
	conn *net.UnixConn
	raw  syscall.RawConn
	frag atomic.Pointer[sockFrag] // set by useMTU for a network of fragments
	fmu  sync.Mutex               // guards the making of frag

	gens  atomic.Uint64
	dlMu  sync.Mutex // guards the fields below and the conn's read deadline
	dl    time.Time  // the read deadline recv set
	armed bool       // the conn's read deadline is dl, not an interruption

	rbMu   sync.Mutex
	rb     *sockio.Reader // guarded by rbMu; nil until the first batch
	rbBufs [][]byte       // guarded by rbMu
	rbLens []int          // guarded by rbMu
	wbMu   sync.Mutex
	wb     *sockio.Writer // guarded by wbMu; nil until the first batch
}

func newSockPath(conn *net.UnixConn) *sockPath {
	raw, _ := conn.SyscallConn()
	return &sockPath{conn: conn, raw: raw}
}

// sockFrag is a sockPath's side of a data socket that carries fragments
// (internal/wire's frag.go): the writer, and the reader's state, guarded
// by the sockPath's rbMu.
type sockFrag struct {
	w  *sockio.FragWriter
	pr sockio.PacketReader
	j  wire.Joiner // what the daemon sends
	// A message under way when a recv was interrupted, kept for the next
	// one: in pend (of the message's total; nil if none), its first keep
	// bytes known (a caller's shorter buffer dropped the rest); made by a
	// recv's alloc if pendAlloc.
	pend      []byte
	keep      int
	pendAlloc bool
}

// useMTU tells p the MTU of its network, before it first sends or
// receives (the Socket does, at each call): over wire.FragMTU, the data
// socket carries fragments.
func (p *sockPath) useMTU(mtu int) {
	if !wire.Fragmented(mtu) || p.frag.Load() != nil {
		return
	}
	p.fmu.Lock()
	defer p.fmu.Unlock()
	if p.frag.Load() == nil {
		p.frag.Store(&sockFrag{w: sockio.NewFragWriter(p.raw, wire.FragSize(sockio.SendLimit(p.raw))), j: wire.Joiner{MTU: mtu}})
	}
}

func (p *sockPath) gen() uint64 { return p.gens.Load() }

// interrupt moves the read deadline to the past: a read waiting returns.
func (p *sockPath) interrupt() {
	p.dlMu.Lock()
	defer p.dlMu.Unlock()
	p.gens.Add(1)
	p.armed = false
	p.conn.SetReadDeadline(time.Unix(1, 0))
}

func (p *sockPath) setWriteDeadline(t time.Time) error { return p.conn.SetWriteDeadline(t) }

// daemonGone does nothing: the daemon's going closes the data socket,
// which ends its reads and writes.
func (p *sockPath) daemonGone() {}

func (p *sockPath) close() { p.conn.Close() }

func (p *sockPath) send(msgs [][]byte) (int, error) {
	if f := p.frag.Load(); f != nil {
		n, err := f.w.Write(msgs)
		if err != nil && n < len(msgs) {
			err = p.sendErr(len(msgs[n]), unwrapNet(err))
		}
		return n, err
	}
	if len(msgs) == 1 {
		if _, err := p.conn.Write(msgs[0]); err != nil {
			return 0, p.sendErr(len(msgs[0]), unwrapNet(err))
		}
		return 1, nil
	}
	p.wbMu.Lock()
	defer p.wbMu.Unlock()
	if p.wb == nil {
		raw, err := p.conn.SyscallConn()
		if err != nil {
			return 0, err
		}
		p.wb = sockio.NewWriter(raw)
	}
	n, err := p.wb.Write(msgs)
	if err != nil && n < len(msgs) {
		err = p.sendErr(len(msgs[n]), err)
	}
	return n, err
}

// sendErr explains an EMSGSIZE from the data socket: the message is
// longer than its send buffer takes, which a daemon not run by root
// cannot raise past net.core.wmem_max.
func (p *sockPath) sendErr(n int, err error) error {
	if !errors.Is(err, syscall.EMSGSIZE) {
		return err
	}
	max := 0
	p.raw.Control(func(fd uintptr) {
		max, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
	})
	if p.frag.Load() != nil {
		return fmt.Errorf("message of %d bytes: a fragment is over what the data socket takes (send buffer %d bytes): %w", n, max, err)
	}
	return fmt.Errorf("message of %d bytes is over what the data socket takes (send buffer %d bytes; a daemon not run by root is bound by net.core.wmem_max): %w",
		n, max, err)
}

// recvAlloc receives as func recv does; with alloc (and one message in
// ms), the message goes into the buffer alloc(size) returns for its
// length, made before it is read (nil: the message is dropped, returned
// empty and MsgTrunc).
func (p *sockPath) recvAlloc(ms []Message, deadline time.Time, gen uint64, alloc func(int) []byte) (int, error) {
	p.dlMu.Lock()
	if p.gens.Load() != gen {
		p.dlMu.Unlock()
		return 0, os.ErrDeadlineExceeded // interrupted before the wait
	}
	if !p.armed || !p.dl.Equal(deadline) {
		p.conn.SetReadDeadline(deadline)
		p.dl, p.armed = deadline, true
	}
	p.dlMu.Unlock()
	if f := p.frag.Load(); f != nil {
		// readFrags's closures take its batch to the heap: it gets a
		// copy, so that the callers' batches (Recv's one message) stay
		// on their stacks on networks without fragments.
		c := make([]Message, len(ms))
		copy(c, ms)
		n, err := p.readFrags(f, c, alloc)
		copy(ms, c)
		return n, err
	}
	if alloc != nil {
		m := ms[0] // to the heap, as c above, this path only
		n, err := p.readAlloc(&m, alloc)
		ms[0] = m
		return n, err
	}
	if len(ms) == 1 {
		return p.readOne(&ms[0])
	}
	return p.readBatch(ms)
}

// readAlloc reads one message from the data socket into the buffer alloc
// makes for its length, peeked first; io.EOF when the daemon closed it.
func (p *sockPath) readAlloc(m *Message, alloc func(int) []byte) (int, error) {
	p.rbMu.Lock()
	defer p.rbMu.Unlock()
	n, trunc := 0, false
	var rerr error
	err := p.raw.Read(func(fd uintptr) bool {
		l, _, err := unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if sockio.Again(err) {
			return false
		}
		if err != nil {
			rerr = os.NewSyscallError("recvfrom", err)
			return true
		}
		if l == 0 {
			rerr = io.EOF
			return true
		}
		m.Buf = alloc(l)
		got, _, err := unix.Recvfrom(int(fd), m.Buf, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if err != nil {
			rerr = os.NewSyscallError("recvfrom", err)
			return true
		}
		n, trunc = min(got, len(m.Buf)), got > len(m.Buf)
		return true
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	m.N, m.Flags = n, 0
	if trunc {
		m.Flags = MsgTrunc
	}
	return 1, nil
}

// readFrags receives into ms from a data socket of fragments, at least
// one message: each packet read straight to its place in the message's
// buffer (ms[k].Buf, or the one alloc makes for the message's total),
// with no copy; a message longer than its buffer is truncated. A batch
// ends after a message of several packets. A packet that breaks the rules
// of wire.Joiner is dropped, and so is a message left unfinished (another
// begins: a daemon that handed the port over sends it again whole). A
// message under way when the read deadline passes, or an interruption
// comes, is kept for the next call, which goes on with it; io.EOF when
// the daemon closed the socket.
func (p *sockPath) readFrags(f *sockFrag, ms []Message, alloc func(int) []byte) (int, error) {
	p.rbMu.Lock()
	defer p.rbMu.Unlock()
	k := 0
	var rerr error
	// The message under way goes into dst, of which keep bytes, from its
	// start, are known: f.pend, or ms[k].Buf.
	dst, keep, inPend := f.pend, f.keep, f.pend != nil
	finish := func(total int) {
		m := &ms[k]
		switch {
		case inPend && f.pendAlloc && alloc != nil:
			m.Buf, m.N = f.pend, keep // the buffer alloc made
		case inPend:
			if alloc != nil {
				m.Buf = alloc(total)
			}
			m.N = copy(m.Buf, f.pend[:keep])
		default:
			m.N = min(total, keep)
		}
		m.Flags = 0
		if m.N < total {
			m.Flags = MsgTrunc
		}
		f.pend, f.keep, f.pendAlloc = nil, 0, false
		dst, keep, inPend = nil, 0, false
		k++
	}
	abandon := func() {
		f.j.Reset()
		f.pend, f.keep, f.pendAlloc = nil, 0, false
		dst, keep, inPend = nil, 0, false
	}
	err := p.raw.Read(func(fd uintptr) bool {
		for k < len(ms) {
			busy, _, _ := f.j.Busy()
			if !busy && alloc == nil {
				// A new message: straight into the caller's buffer.
				l, total, off, err := f.pr.Recv(int(fd), ms[k].Buf)
				if done, stop := p.fragErr(err, l, k, &rerr); stop {
					return done
				}
				payload := l - wire.FragHeaderLen
				if l < wire.FragHeaderLen {
					continue // dropped
				}
				if kind, _ := f.j.Check(total, off, payload); kind != wire.FragFirst {
					continue // dropped
				}
				dst, keep = ms[k].Buf, min(len(ms[k].Buf), payload)
				if f.j.Take(total, off, payload) {
					finish(total)
				}
				continue
			}
			// A fragment to look at first: the next of the message under
			// way, or the first of one alloc makes a buffer for.
			l, total, off, err := f.pr.Peek(int(fd))
			if err == nil && l == 0 {
				err = io.EOF
			}
			if err != nil {
				if sockio.Again(err) {
					return k > 0 && !busy // wait for the rest of a message
				}
				abandon() // the end, or a failure: the message under way is lost
				if k == 0 {
					rerr = err
				}
				return true
			}
			payload := l - wire.FragHeaderLen
			kind := wire.FragBad
			if l >= wire.FragHeaderLen {
				kind, _ = f.j.Check(total, off, payload)
			}
			if busy && kind != wire.FragNext {
				abandon() // unfinished: dropped; this packet looked at again
				continue
			}
			if kind == wire.FragBad {
				if err := f.pr.Drop(int(fd)); err != nil {
					if k == 0 {
						rerr = err
					}
					return true
				}
				continue
			}
			if kind == wire.FragFirst { // alloc's
				ms[k].Buf = alloc(total)
				dst, keep = ms[k].Buf, 0
			}
			var b []byte
			if off < len(dst) {
				b = dst[off:min(len(dst), off+payload)]
			}
			if _, _, _, err := f.pr.Recv(int(fd), b); err != nil {
				abandon()
				if k == 0 {
					rerr = err
				}
				return true
			}
			if keep == off {
				keep = min(len(dst), off+payload)
			}
			if f.j.Take(total, off, payload) {
				finish(total)
				if off > 0 {
					return true // a message of several packets ends the batch
				}
			}
		}
		return true
	})
	if busy, total, _ := f.j.Busy(); busy && !inPend {
		// Interrupted while a message was under way in a caller's
		// buffer: keep what it has for the next call.
		switch {
		case alloc != nil && len(dst) >= total:
			f.pend, f.pendAlloc = dst, true
		default:
			f.pend = make([]byte, total)
			copy(f.pend, dst[:keep])
		}
		f.keep = keep
	} else if busy {
		f.keep = keep
	}
	if k > 0 {
		return k, nil
	}
	if err == nil {
		err = rerr
	}
	if err == nil {
		err = os.ErrDeadlineExceeded // only the end of a wait returns none
	}
	return 0, err
}

// fragErr sorts out a packet read of length l that found err: it reports
// whether the read callback stops (stop) and what it returns (done); the
// end of the socket, or an error before any message (k), goes to rerr.
func (p *sockPath) fragErr(err error, l, k int, rerr *error) (done, stop bool) {
	switch {
	case err == nil && l > 0:
		return false, false
	case sockio.Again(err):
		return k > 0, true
	case err == nil: // the end
		if k == 0 {
			*rerr = io.EOF
		}
		return true, true
	}
	if k == 0 {
		*rerr = err
	}
	return true, true
}

// readOne reads one message from the data socket into m; io.EOF when the
// daemon closed it.
func (p *sockPath) readOne(m *Message) (int, error) {
	n, _, rflags, _, err := p.conn.ReadMsgUnix(m.Buf, nil)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	m.N, m.Flags = n, 0
	if rflags&unix.MSG_TRUNC != 0 {
		m.Flags = MsgTrunc
	}
	return 1, nil
}

// readBatch receives into ms what waits on the data socket, at least one
// message, with recvmmsg.
func (p *sockPath) readBatch(ms []Message) (int, error) {
	p.rbMu.Lock()
	defer p.rbMu.Unlock()
	if p.rb == nil {
		raw, err := p.conn.SyscallConn()
		if err != nil {
			return 0, err
		}
		p.rb = sockio.NewReader(raw, false)
	}
	if len(p.rbBufs) < len(ms) {
		p.rbBufs, p.rbLens = make([][]byte, len(ms)), make([]int, len(ms))
	}
	bufs, lens := p.rbBufs[:len(ms)], p.rbLens[:len(ms)]
	for i := range ms {
		bufs[i] = ms[i].Buf
	}
	n, err := p.rb.Read(bufs, lens)
	clear(bufs)
	for i := range n {
		ms[i].N, ms[i].Flags = min(lens[i], len(ms[i].Buf)), 0
		if lens[i] > len(ms[i].Buf) {
			ms[i].Flags = MsgTrunc
		}
	}
	return n, err
}
