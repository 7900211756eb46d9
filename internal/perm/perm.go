// Package perm holds IPN's access rule, shared by the daemon and the device
// files: the rights a user has on a network file, as the kernel grants them.
package perm

import "slices"

// Rights returns the read, write and execute rights of user uid (with
// primary group gid and supplementary groups) on a file with owner fuid,
// group fgid and mode: the owner's bits if uid owns it, else the group's
// bits if gid or a supplementary group is fgid, else the others' bits.
// Root may read and write anything, and execute if any x bit is set.
func Rights(fuid, fgid, mode, uid, gid uint32, groups []uint32) (r, w, x bool) {
	mode &= 0o777
	if uid == 0 {
		return true, true, mode&0o111 != 0
	}
	var bits uint32
	switch {
	case uid == fuid:
		bits = mode >> 6
	case gid == fgid || slices.Contains(groups, fgid):
		bits = mode >> 3
	default:
		bits = mode
	}
	return bits&4 != 0, bits&2 != 0, bits&1 != 0
}
