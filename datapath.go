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
)

// dataPath moves a connected socket's ordinary messages to and from the
// daemon: over the data socket (sockPath) or through the fast path's
// shared-memory rings (fastPath). The daemon's side has the same two, its
// seqpacket and shm endpoints.
type dataPath interface {
	// send sends msgs in order, waiting for room up to the write
	// deadline, and returns how many it sent.
	send(msgs [][]byte) (int, error)
	// recv receives at least one message into ms, waiting until deadline
	// (zero: none) or an interruption after gen, both reported as
	// os.ErrDeadlineExceeded; io.EOF once the daemon closed the path
	// and every message before is read.
	recv(ms []Message, deadline time.Time, gen uint64) (int, error)
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
// and sendmmsg.
type sockPath struct {
	conn *net.UnixConn

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

func newSockPath(conn *net.UnixConn) *sockPath { return &sockPath{conn: conn} }

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
	if raw, rerr := p.conn.SyscallConn(); rerr == nil {
		raw.Control(func(fd uintptr) {
			max, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		})
	}
	return fmt.Errorf("message of %d bytes is over what the data socket takes (send buffer %d bytes; a daemon not run by root is bound by net.core.wmem_max): %w",
		n, max, err)
}

func (p *sockPath) recv(ms []Message, deadline time.Time, gen uint64) (int, error) {
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
	if len(ms) == 1 {
		return p.readOne(&ms[0])
	}
	return p.readBatch(ms)
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
