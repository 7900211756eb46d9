package qemu

import "testing"

// SetBeforeChmod makes f run in makeSock after the socket just bound is
// found at its name and before its mode is set, with the directory it
// was bound in (a path that reaches it through its descriptor) and its
// name, until the test ends.
func SetBeforeChmod(t testing.TB, f func(dir, name string)) {
	beforeChmod = func(dirfd int, name string) { f(fdPath(dirfd, ""), name) }
	t.Cleanup(func() { beforeChmod = nil })
}
