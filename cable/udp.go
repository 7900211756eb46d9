package cable

import "github.com/ipn-project/ipn/endpoint/udp"

func init() { Register("udp", udp.Open) }
