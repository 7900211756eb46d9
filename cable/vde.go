package cable

import "github.com/ipn-project/ipn/farend/vdeplug"

// vde:///DIR[N]: a port of a vde_switch (or any VDE 2 switch).
func init() { Register("vde", vdeplug.Open) }
