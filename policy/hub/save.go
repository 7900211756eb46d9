package hub

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/ipn-project/ipn/policy"
)

var _ policy.Saver = (*Hub)(nil)

type saved struct {
	LoopInterval time.Duration
}

// Save implements policy.Saver: a hub keeps only its loop interval (loop
// blocks are found again by the next probes).
func (h *Hub) Save() ([]byte, error) {
	return json.Marshal(saved{LoopInterval: h.loop.Interval()})
}

// Restore implements policy.Saver.
func (h *Hub) Restore(b []byte) error {
	var st saved
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("hub state: %w", err)
	}
	return h.loop.SetInterval(st.LoopInterval)
}
