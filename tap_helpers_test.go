package ipn_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand"
	"net"
	"strconv"
	"time"
)

// helpTCP is the helper "tcp": "recv ADDR" accepts one connection on
// ADDR and prints "listening", then "got BYTES SHA256 SECONDS" once the
// sender closes; "send ADDR BYTES" sends BYTES pseudo-random bytes and
// prints "sent SHA256".
func helpTCP(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("tcp: want recv ADDR or send ADDR BYTES")
	}
	switch args[0] {
	case "recv":
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			return err
		}
		defer ln.Close()
		fmt.Println("listening")
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		start := time.Now()
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			return err
		}
		fmt.Printf("got %d %x %f\n", n, h.Sum(nil), time.Since(start).Seconds())
		return nil
	case "send":
		size, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		data := make([]byte, size)
		rand.New(rand.NewSource(int64(size))).Read(data)
		c, err := net.DialTimeout("tcp", args[1], 10*time.Second)
		if err != nil {
			return err
		}
		if _, err := c.Write(data); err != nil {
			c.Close()
			return err
		}
		if err := c.Close(); err != nil {
			return err
		}
		fmt.Printf("sent %x\n", sha256.Sum256(data))
		return nil
	}
	return fmt.Errorf("tcp: unknown mode %q", args[0])
}
