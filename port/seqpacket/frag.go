package seqpacket

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/ipn-project/ipn/endpoint"
	"github.com/ipn-project/ipn/internal/sockio"
	"github.com/ipn-project/ipn/internal/wire"
)

// pauser pauses the endpoint by the socket's deadlines (a blocked Read or
// Write returns at once, consuming nothing), as sockio.Pauser does, and
// shares the read deadline with the wait for a message's next fragment: a
// pause that comes while a message is under way takes effect once the
// message is read (or dropped), so that no message is read in part.
type pauser struct {
	conn   *net.UnixConn
	mu     sync.Mutex
	paused bool      // guarded by mu: reads are paused
	until  time.Time // guarded by mu: a message is under way: its next fragment's deadline
}

// PauseRead implements endpoint.Pauser.
func (p *pauser) PauseRead() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = true
	if p.until.IsZero() {
		p.conn.SetReadDeadline(sockio.Past)
	}
}

// PauseWrite implements endpoint.Pauser. A message cut short goes again,
// whole, when the caller writes it again: its first fragment tells the
// node to drop the part it has.
func (p *pauser) PauseWrite() { p.conn.SetWriteDeadline(sockio.Past) }

// Resume implements endpoint.Pauser.
func (p *pauser) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = false
	p.conn.SetWriteDeadline(time.Time{})
	p.conn.SetReadDeadline(p.until)
}

// await sets the deadline for the next fragment of the message under way.
func (p *pauser) await(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.until = t
	p.conn.SetReadDeadline(t)
}

// done ends the wait for fragments: the read deadline is a pause's again.
func (p *pauser) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.until.IsZero() {
		return
	}
	p.until = time.Time{}
	if p.paused {
		p.conn.SetReadDeadline(sockio.Past)
	} else {
		p.conn.SetReadDeadline(time.Time{})
	}
}

// PauseRead implements endpoint.Pauser.
func (e *Endpoint) PauseRead() { e.pause.PauseRead() }

// PauseWrite implements endpoint.Pauser.
func (e *Endpoint) PauseWrite() { e.pause.PauseWrite() }

// Resume implements endpoint.Pauser.
func (e *Endpoint) Resume() { e.pause.Resume() }

// readFrags is Read (grow nil) and ReadBig on a socket of fragments. It
// reads one packet at a time, its header peeked first, each fragment's
// bytes straight to their place in the message's buffer: bufs[n] if the
// message fits it, else the one grow makes for the message's total (a
// message that does not fit and has no grow is dropped as truncated). It
// trusts nothing the node sends: a packet that breaks the rules of
// wire.Joiner, and a message left unfinished (another begins, a fragment
// does not follow, FragTimeout passes, the node closes), is dropped and
// reported as truncated (sizes[n] over its buffer's length), which the
// engine counts in the port's errors. A batch ends after a message of
// several packets or one read through grow.
func (e *Endpoint) readFrags(bufs [][]byte, sizes []int, grow func(i, size int) ([]byte, bool)) (int, error) {
	f := e.frag
	for {
		var (
			n        int
			stopped  bool   // paused before a message
			eof      bool   // the node hung up
			rerr     error  // a read's error, before any message
			cur      []byte // the buffer of the message under way (nil: dropped)
			dropping bool   // the message under way is dropped (grow said so)
			long     bool   // the message under way has several packets, or was grown
		)
		// refuse reports the message under way, or a packet, as refused.
		refuse := func() {
			sizes[n] = max(len(bufs[n]), len(cur)) + 1
			n++
		}
		// abandon drops the message under way; it reports whether the
		// batch must end (the slot was grown).
		abandon := func() bool {
			f.j.Reset()
			e.pause.done()
			end := long
			if !dropping || grow == nil {
				refuse()
			}
			cur, dropping, long = nil, false, false
			return end
		}
		err := e.raw.Read(func(fd uintptr) bool {
			for n < len(bufs) {
				busy, _, _ := f.j.Busy()
				l, total, off, err := f.pr.Peek(int(fd))
				if err != nil {
					if sockio.Again(err) {
						return n > 0 && !busy // wait for the rest of a message
					}
					if n == 0 && !busy {
						rerr = err
					}
					return true
				}
				if l == 0 { // an empty packet, or the end
					if err := f.pr.Drop(int(fd)); err != nil && !sockio.Again(err) {
						return true
					}
					if e.hungUp() {
						eof = true
						return true
					}
					continue
				}
				kind := wire.FragBad
				if l >= wire.FragHeaderLen {
					kind, _ = f.j.Check(total, off, l-wire.FragHeaderLen)
				}
				if busy && kind != wire.FragNext {
					// The message under way is unfinished: dropped; this
					// packet is looked at again, alone.
					if abandon() {
						return true
					}
					continue
				}
				if kind == wire.FragBad {
					if err := f.pr.Drop(int(fd)); err != nil {
						return true
					}
					refuse()
					continue
				}
				payload := l - wire.FragHeaderLen
				if kind == wire.FragFirst {
					cur, dropping, long = nil, false, payload < total
					switch {
					case total <= len(bufs[n]):
						cur = bufs[n][:total]
					case grow == nil:
						dropping = true // reported as truncated at its end
					default:
						b, drop := grow(n, total)
						if b == nil && !drop {
							stopped = n == 0
							return true // left in the socket for a later read
						}
						long = true
						if b == nil {
							dropping = true // refused, and counted, by grow
						} else {
							cur = b[:total]
						}
					}
				}
				var dst []byte
				if cur != nil {
					dst = cur[off : off+payload]
				}
				got, _, _, err := f.pr.Recv(int(fd), dst)
				if err != nil || got != l {
					if abandon() || err != nil {
						return true
					}
					continue
				}
				if !f.j.Take(total, off, payload) {
					e.pause.await(time.Now().Add(FragTimeout))
					continue
				}
				e.pause.done()
				switch {
				case !dropping:
					sizes[n] = total
					n++
				case grow == nil:
					sizes[n] = total // over len(bufs[n]): truncated
					n++
				}
				end := long
				cur, dropping, long = nil, false, false
				if end {
					return true // at most one big message a batch
				}
			}
			return true
		})
		if busy, _, _ := f.j.Busy(); busy {
			// The wait for a fragment ended: FragTimeout passed, or the
			// socket failed or was closed; the node loses its message.
			abandon()
			if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				continue // the timeout's: read on (a pause's deadline is back)
			}
		}
		if n > 0 {
			return n, nil
		}
		if stopped {
			return 0, endpoint.ErrPaused
		}
		if err != nil {
			return 0, err
		}
		if rerr != nil {
			return 0, rerr
		}
		if eof {
			return 0, io.EOF
		}
	}
}
