// Package transfer is the two ends of a TCP transfer whose bytes the tests
// compare: a test runs each end as a helper process in a network
// namespace, and checks that the SHA-256 the receiver prints is the one
// the sender printed.
package transfer

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"net"
	"time"
)

// Recv accepts one connection on addr, writes "listening" to out when it
// listens, then "got BYTES SHA256 SECONDS" when the sender closes.
func Recv(addr string, out io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintln(out, "listening")
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("receive from %s: %w", c.RemoteAddr(), err)
	}
	fmt.Fprintf(out, "got %d %x %f\n", n, h.Sum(nil), time.Since(start).Seconds())
	return nil
}

// Send sends size pseudo-random bytes to addr and writes "sent SHA256" to
// out. The bytes are 1 MiB of random ones repeated with each KiB's offset
// in it: quick to make, even under the race detector, and no two TCP
// segments alike.
func Send(addr string, size int, out io.Writer) error {
	block := make([]byte, 1<<20)
	rand.New(rand.NewSource(int64(size))).Read(block)
	data := make([]byte, size)
	for off := 0; off < len(data); off += len(block) {
		copy(data[off:], block)
		for i := 0; i < len(block) && off+i+8 <= len(data); i += 1024 {
			binary.BigEndian.PutUint64(data[off+i:], uint64(off+i))
		}
	}
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	if _, err := c.Write(data); err != nil {
		c.Close()
		return fmt.Errorf("send to %s: %w", addr, err)
	}
	if err := c.Close(); err != nil {
		return err
	}
	fmt.Fprintf(out, "sent %x\n", sha256.Sum256(data))
	return nil
}
