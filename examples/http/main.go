// Command http serves and fetches HTTP over an IPN network, each process
// with a TCP/IP stack of its own (package netstack): no kernel interface,
// no privileges.
//
//	ipn cat --bind --proto switch --recv-only /tmp/lan > /dev/null &   # the network: a switch
//	go run ./examples/http serve /tmp/lan 10.55.0.1/24 :80 &
//	go run ./examples/http get /tmp/lan 10.55.0.2/24 http://10.55.0.1/
//
// serve prints "serving on ADDR" once it listens, then answers every
// request with a greeting naming the path; get prints the body.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/ipn-project/ipn"
	_ "github.com/ipn-project/ipn/daemon/autostart" // a fresh machine needs no daemon set up
	"github.com/ipn-project/ipn/netstack"
)

const usage = `usage:
  http serve PATH ADDR/PREFIX [IP]:PORT   serve HTTP on the network at PATH
  http get PATH ADDR/PREFIX URL           fetch URL and print the body`

func main() {
	log.SetFlags(0)
	log.SetPrefix("http: ")
	if len(os.Args) != 5 || (os.Args[1] != "serve" && os.Args[1] != "get") {
		log.Fatal(usage)
	}
	cmd, path, addr, arg := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	st, err := join(path, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	if cmd == "serve" {
		err = serve(st, arg)
	} else {
		err = get(st, arg)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// join connects to the network at path and starts a stack with address
// addr on it.
func join(path, addr string) (*netstack.Stack, error) {
	prefix, err := netip.ParsePrefix(addr)
	if err != nil {
		return nil, err
	}
	sock, err := ipn.NewSocket(ipn.Any)
	if err != nil {
		return nil, err
	}
	if err := sock.Connect(path); err != nil {
		sock.Close()
		return nil, err
	}
	st, err := netstack.New(sock, netstack.Config{Addrs: []netip.Prefix{prefix}})
	if err != nil {
		sock.Close()
		return nil, err
	}
	return st, nil
}

func serve(st *netstack.Stack, addr string) error {
	l, err := st.Listen("tcp", addr)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	fmt.Printf("serving on %s\n", l.Addr())
	return http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey)
		fmt.Fprintf(w, "hello from %v (pid %d on %s) over IPN: %s %s\n", local, os.Getpid(), host, r.Method, r.URL.Path)
	}))
}

func get(st *netstack.Stack, url string) error {
	client := &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return st.DialContext(ctx, network, addr)
			},
		},
		Timeout: 30 * time.Second,
	}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}
