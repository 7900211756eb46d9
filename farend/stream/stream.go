// Package stream is the stream encapsulation of VDE (libvdestream): frames
// over a byte stream (a pipe, ssh, stdin/stdout), each as a 2-byte
// big-endian length followed by the frame. It is what vde_plug speaks on its
// standard input and output.
package stream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/ipn-project/ipn/endpoint"
)

// MaxFrame is the longest frame the encapsulation carries.
const MaxFrame = 65535

// Endpoint carries frames over a reader and a writer.
type Endpoint struct {
	r    *bufio.Reader
	w    io.Writer
	c    []io.Closer
	wmu  sync.Mutex
	wbuf []byte
	once sync.Once
}

var _ endpoint.Endpoint = (*Endpoint)(nil)

// New returns an endpoint reading frames from r and writing them to w.
// Close closes r and w if they are io.Closers.
func New(r io.Reader, w io.Writer) *Endpoint {
	e := &Endpoint{r: bufio.NewReaderSize(r, 1<<16), w: w}
	for _, x := range []any{r, w} {
		if c, ok := x.(io.Closer); ok {
			e.c = append(e.c, c)
		}
	}
	return e
}

// ErrFraming reports a stream that does not follow the encapsulation.
var ErrFraming = errors.New("stream: bad framing")

// insideFrame describes a read that failed in the middle of a frame: the
// stream's end there is bad framing; another error is the reader's own.
func insideFrame(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: stream ended inside a frame", ErrFraming)
	}
	return fmt.Errorf("stream: inside a frame: %w", err)
}

// Read implements endpoint.Endpoint.Read: one frame per call, then more
// while they are already buffered.
func (e *Endpoint) Read(bufs [][]byte, sizes []int) (int, error) {
	n := 0
	for n < len(bufs) {
		if n > 0 && e.r.Buffered() < 2 {
			break
		}
		var hdr [2]byte
		if _, err := io.ReadFull(e.r, hdr[:]); err != nil {
			if n > 0 {
				break
			}
			if err == io.ErrUnexpectedEOF {
				err = fmt.Errorf("%w: stream ended inside a length", ErrFraming)
			}
			return 0, err
		}
		size := int(binary.BigEndian.Uint16(hdr[:]))
		if size > len(bufs[n]) {
			if _, err := e.r.Discard(size); err != nil {
				return n, insideFrame(err)
			}
			sizes[n] = len(bufs[n]) + 1 // too long for the buffer
			n++
			continue
		}
		if _, err := io.ReadFull(e.r, bufs[n][:size]); err != nil {
			return n, insideFrame(err)
		}
		sizes[n] = size
		n++
	}
	return n, nil
}

// Write implements endpoint.Endpoint.Write: the frames go out in one write.
func (e *Endpoint) Write(msgs [][]byte) (int, error) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	b := e.wbuf[:0]
	for _, m := range msgs {
		if len(m) > MaxFrame {
			return 0, fmt.Errorf("stream: frame of %d bytes: %w", len(m), ErrFraming)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
		b = append(b, m...)
	}
	e.wbuf = b
	if _, err := e.w.Write(b); err != nil {
		return 0, err
	}
	return len(msgs), nil
}

// BatchSize implements endpoint.Endpoint.BatchSize.
func (e *Endpoint) BatchSize() int { return 32 }

// Close implements endpoint.Endpoint.Close.
func (e *Endpoint) Close() error {
	var err error
	e.once.Do(func() {
		for _, c := range e.c {
			if cerr := c.Close(); err == nil {
				err = cerr
			}
		}
	})
	return err
}
