package cable

import "github.com/ipn-project/ipn/endpoint/vxvde"

func init() { Register("vxvde", vxvde.Open) }
