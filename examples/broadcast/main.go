// Command broadcast is the second example of the IPN README in Go: one
// sender, many receivers that join and leave while it runs.
//
//	go run ./examples/broadcast send /tmp/tv   # one sender
//	go run ./examples/broadcast recv /tmp/tv   # receivers, any time
package main

import (
	"fmt"
	"log"
	"os"
	"time"

	"github.com/ipn-project/ipn"
	_ "github.com/ipn-project/ipn/daemon/autostart" // a fresh machine needs no daemon set up
)

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: broadcast send|recv PATH")
	}
	path := os.Args[2]
	s, err := ipn.NewSocket(ipn.Broadcast)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	switch os.Args[1] {
	case "send":
		// The sender defines the network: shutdown(SHUT_RD), bind, connect.
		check(s.Shutdown(ipn.ShutRead))
		check(s.Bind(path))
		check(s.Connect(""))
		for i := 0; ; i++ {
			check(s.Send([]byte(fmt.Sprintf("frame %d at %s", i, time.Now().Format(time.TimeOnly)))))
			time.Sleep(time.Second)
		}
	case "recv":
		// Receivers just join: shutdown(SHUT_WR), connect.
		check(s.Shutdown(ipn.ShutWrite))
		check(s.Connect(path))
		buf := make([]byte, 65536)
		for {
			n, _, err := s.Recv(buf)
			check(err)
			fmt.Printf("%s\n", buf[:n])
		}
	default:
		log.Fatal("usage: broadcast send|recv PATH")
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
