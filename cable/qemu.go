package cable

import "github.com/ipn-project/ipn/farend/qemu"

func init() {
	Register(qemu.SchemeStream, qemu.OpenStream)
	Register(qemu.SchemeConnect, qemu.OpenConnect)
	Register(qemu.SchemeDgram, qemu.OpenDgram)
}
