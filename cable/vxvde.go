package cable

import "github.com/ipn-project/ipn/farend/vxvde"

func init() { Register("vxvde", vxvde.Open) }
