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
