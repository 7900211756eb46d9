// Package yield is the processor courtesy of a writer that drops
// messages for a reader that cannot keep up: the daemon's ports and the
// client's socket path use it alike.
package yield

import "golang.org/x/sys/unix"

// StuckDrops is how many drops in a row, with the reader taking nothing,
// make a Yielder take the reader for one that reads no more.
const StuckDrops = 4096

// Yielder is the processor courtesy of a writer that drops messages
// for a reader whose buffer is full. A reader that keeps up on its own
// share of the processor falls behind only while the writers hold it (on a
// machine with fewer cores than busy processes): for each such drop the
// writer gives its processor away (sched_yield). After StuckDrops drops
// with no progress of the reader, it stops, until the reader takes
// something again. The zero Yielder is ready; it is not safe for
// concurrent use.
type Yielder struct{ stuck int }

// Progressed tells y that the reader took something since the last drop.
func (y *Yielder) Progressed() { y.stuck = 0 }

// Dropped tells y that a message found the reader full; it yields unless
// the reader seems stuck.
func (y *Yielder) Dropped() {
	if y.stuck < StuckDrops {
		y.stuck++
		unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// Stuck reports whether y takes the reader for one that reads no more.
func (y *Yielder) Stuck() bool { return y.stuck >= StuckDrops }
