package engine

// HoldLocks takes the engine's lock and those of nets and returns their
// release, for tests that show the data path never takes them.
func HoldLocks(e *Engine, nets ...*Network) (release func()) {
	e.mu.Lock()
	for _, n := range nets {
		n.mu.Lock()
	}
	return func() {
		for _, n := range nets {
			n.mu.Unlock()
		}
		e.mu.Unlock()
	}
}

// HoldsBig reports whether port p of a lossy network holds a big message,
// queued or being written: another for it is dropped meanwhile.
func HoldsBig(p *Port) bool { return p.bigHeld.Load() != 0 }
