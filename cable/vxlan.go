package cable

import "github.com/ipn-project/ipn/farend/vxlan"

func init() { Register("vxlan", vxlan.Open) }
