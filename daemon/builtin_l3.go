package daemon

import _ "github.com/ipn-project/ipn/policy/l3switch" // the layer-3 switch (IPN_VDESWITCH_L3)
