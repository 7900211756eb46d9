package shmring

import (
	"encoding/binary"
	"errors"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// logPair is a daemon's log and a member's reader of it at port self,
// mapped from the read-only descriptor as a member maps it.
func logPair(t *testing.T, mtu, self int) (*Log, *LogReader, *Region) {
	t.Helper()
	w, err := CreateLog(mtu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	reg, err := Create(LayoutFor(mtu))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	pos, seq := w.Pos()
	reg.StartLog(pos, seq)
	fd, err := unix.Dup(w.ReadOnlyFD())
	if err != nil {
		t.Fatal(err)
	}
	r, err := MapLog(fd)
	if err != nil {
		t.Fatal(err)
	}
	lr := r.Reader(reg, self)
	t.Cleanup(func() { lr.Close() })
	return w, lr, reg
}

func numbered(i, size int) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b, uint32(i))
	return b
}

// Messages of every size come out in order, whole, across many wraps of
// the area (padding at its end); the reader's own do not come out.
func TestLogOrderAndWraps(t *testing.T) {
	w, lr, _ := logPair(t, 1514, 3)
	buf := make([]byte, 2048)
	next := 0
	for i := 0; i < 20000; i++ {
		from := 1
		if i%7 == 0 {
			from = 3 // the reader's own
		}
		w.Put(numbered(i, 4+i%1511), from)
		if i%50 == 49 {
			w.Publish()
			for {
				n, ok := lr.Pop(buf)
				if !ok {
					break
				}
				for next%7 == 0 {
					next++
				}
				if got := int(binary.LittleEndian.Uint32(buf)); got != next || n != 4+next%1511 {
					t.Fatalf("message %d of %d bytes, want %d of %d", got, n, next, 4+next%1511)
				}
				next++
			}
		}
	}
	if lr.Missed() != 0 {
		t.Fatalf("missed %d without a lap", lr.Missed())
	}
	if next < 19990 {
		t.Fatalf("read up to %d of 20000", next)
	}
}

// A reader that falls a whole log behind misses what was written over,
// counts it exactly, and goes on from the newest; the daemon's Behind
// counts what it has lost before it notices.
func TestLogLapsASlowReader(t *testing.T) {
	w, lr, reg := logPair(t, 1514, 9)
	const size = 1000
	total := 3 * LogBytes(1514) / recLen(size) // three laps
	for i := 0; i < total; i++ {
		w.Put(numbered(i, size), 1)
	}
	w.Publish()
	head, seq, _, _ := reg.LogPlace()
	lost := w.Behind(head, seq)
	if lost == 0 || lost >= uint64(total) {
		t.Fatalf("behind %d of %d", lost, total)
	}
	buf := make([]byte, 2048)
	n, ok := lr.Pop(buf)
	if !ok || n != size {
		t.Fatalf("after the laps: %d, %v", n, ok)
	}
	first := int(binary.LittleEndian.Uint32(buf))
	if lr.Missed() != uint64(first) {
		t.Fatalf("first message %d, missed %d", first, lr.Missed())
	}
	got := 1
	for {
		n, ok := lr.Pop(buf)
		if !ok {
			break
		}
		if i := int(binary.LittleEndian.Uint32(buf)); i != first+got || n != size {
			t.Fatalf("message %d, want %d", i, first+got)
		}
		got++
	}
	if first+got != total {
		t.Fatalf("read %d from %d, of %d", got, first, total)
	}
	lr.Release()
	head, seq, missed, taken := reg.LogPlace()
	if w.Behind(head, seq) != 0 || missed != uint64(first) || taken != uint64(got) {
		t.Fatalf("after reading: behind %d, missed %d, took %d (read %d)", w.Behind(head, seq), missed, taken, got)
	}
}

// A message being written over while it is read is not returned torn: the
// reader notices the lap.
func TestLogTornReadIsALap(t *testing.T) {
	w, lr, _ := logPair(t, 1514, 9)
	w.Put(numbered(0, 100), 1)
	w.Publish()
	// The writer reserves the area the first record is in, as it does
	// before writing over it.
	w.resv.Store(uint64(w.size) + 1)
	if n, ok := lr.Pop(make([]byte, 200)); ok {
		t.Fatalf("read %d bytes of a record being written over", n)
	}
}

// A member's descriptor of the log is read-only for good: it cannot map
// it writable, write it, resize it, seal it, nor (not being root) reopen
// it writable. Run as root, only the last holds; the real-user attack is
// TestAttackSharedLog.
func TestLogDescriptorIsReadOnly(t *testing.T) {
	w, err := CreateLog(1514)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fd := w.ReadOnlyFD()
	if _, err := unix.Mmap(fd, 0, w.Bytes(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, syscall.EACCES) {
		t.Errorf("mmap writable: %v, want EACCES", err)
	}
	if _, err := unix.Write(fd, []byte("x")); !errors.Is(err, syscall.EBADF) {
		t.Errorf("write: %v, want EBADF", err)
	}
	if err := unix.Ftruncate(fd, 0); err == nil {
		t.Errorf("ftruncate: no error")
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err == nil {
		t.Errorf("add a seal: no error")
	}
	mem, err := unix.Mmap(fd, 0, w.Bytes(), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); !errors.Is(err, syscall.EACCES) {
		t.Errorf("mprotect writable: %v, want EACCES", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&0o777 != 0o400 {
		t.Errorf("mode %o, %v: want 0400", st.Mode&0o777, err)
	}
}

// View lends each message in place, in the reader's read-only mapping; a
// writer that laps the reader while it looks makes the view torn, and the
// message counts as missed, not taken.
func TestLogViewInPlaceAndTorn(t *testing.T) {
	w, lr, _ := logPair(t, 1514, 3)
	for i := range 3 {
		w.Put(numbered(i, 1000), 1)
	}
	w.Publish()
	var seen []byte
	n, ok, torn := lr.View(func(m []byte) { seen = m })
	if !ok || torn || n != 1000 || binary.LittleEndian.Uint32(seen) != 0 {
		t.Fatalf("View: %d bytes, ok %v, torn %v", n, ok, torn)
	}
	// The bytes lent are the reader's mapping of the log, not a copy.
	base := &lr.log.mem[0]
	if p := &seen[0]; uintptr(unsafe.Pointer(p)) < uintptr(unsafe.Pointer(base)) ||
		uintptr(unsafe.Pointer(p)) >= uintptr(unsafe.Pointer(base))+uintptr(len(lr.log.mem)) {
		t.Fatal("View lent bytes outside the log's mapping")
	}
	// The writer laps the reader while it views message 1.
	n, ok, torn = lr.View(func(m []byte) {
		for i := 3; i < 3+2*w.Bytes()/1000; i++ {
			w.Put(numbered(i, 1000), 1)
		}
		w.Publish()
	})
	if !ok || !torn {
		t.Fatalf("View under a lap: %d bytes, ok %v, torn %v; want torn", n, ok, torn)
	}
	buf := make([]byte, 2048)
	if _, ok := lr.Pop(buf); !ok {
		t.Fatal("nothing after the lap")
	}
	got := int(binary.LittleEndian.Uint32(buf))
	if got < 4 || lr.Missed() != uint64(got-1) {
		t.Fatalf("after the lap: message %d with %d missed, want %d missed (message 1, torn, among them)", got, lr.Missed(), got-1)
	}
	if lr.taken != 2 {
		t.Fatalf("taken %d, want 2 (message 0 and %d)", lr.taken, got)
	}
}
