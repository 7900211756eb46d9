package udp

// WrapBatchConn replaces x's system calls with wrap's, for tests that
// make the kernel refuse what this one takes.
func WrapBatchConn(x *Conn, wrap func(BatchConn) BatchConn) { x.bc = wrap(x.bc) }
