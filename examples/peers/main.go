// Command peers is the first example of the IPN README in Go: every peer
// binds and connects the same network; each line typed is sent to all the
// other peers, and what they send is printed.
//
//	go run ./examples/peers /tmp/chat   # in several terminals
package main

import (
	"bufio"
	"fmt"
	"log"
	"os"

	"github.com/ipn-project/ipn"
	_ "github.com/ipn-project/ipn/daemon/autostart" // a fresh machine needs no daemon set up
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: peers PATH")
	}
	// Join binds (creating the network if needed) and connects.
	s, err := ipn.Join(os.Args[1], ipn.Broadcast)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := s.Recv(buf)
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("%s\n", buf[:n])
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if len(in.Bytes()) > 0 {
			if err := s.Send(in.Bytes()); err != nil {
				log.Fatal(err)
			}
		}
	}
}
