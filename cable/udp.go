package cable

import "github.com/ipn-project/ipn/farend/udp"

func init() { Register("udp", udp.Open) }
