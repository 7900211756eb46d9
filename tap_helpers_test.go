package ipn_test

import (
	"fmt"
	"os"
	"strconv"

	xfer "github.com/ipn-project/ipn/internal/transfer"
)

// helpTCP is the helper "tcp": "recv ADDR" accepts one connection on
// ADDR and prints "listening", then "got BYTES SHA256 SECONDS" once the
// sender closes; "send ADDR BYTES" sends BYTES pseudo-random bytes and
// prints "sent SHA256".
func helpTCP(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "recv":
		return xfer.Recv(args[1], os.Stdout)
	case len(args) == 3 && args[0] == "send":
		size, err := strconv.Atoi(args[2])
		if err != nil {
			return fmt.Errorf("tcp send: bytes %q: %w", args[2], err)
		}
		return xfer.Send(args[1], size, os.Stdout)
	}
	return fmt.Errorf("tcp: want recv ADDR or send ADDR BYTES, not %q", args)
}
