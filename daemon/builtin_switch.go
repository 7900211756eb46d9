package daemon

import _ "github.com/ipn-project/ipn/policy/vdeswitch" // the Ethernet switch
