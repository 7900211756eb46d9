package cable

import "github.com/ipn-project/ipn/endpoint/vxlan"

func init() { Register("vxlan", vxlan.Open) }
