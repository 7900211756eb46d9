package endpoint

import (
	"errors"
	"os"
)

// Pauser is implemented by endpoints that can stop moving messages for a
// while, losing none, so that their port can pass to another daemon (a
// takeover) or resume where it stopped.
type Pauser interface {
	// PauseRead makes a blocked Read, and every later one, return
	// ErrPaused once it has no message to return, until Resume.
	PauseRead()
	// PauseWrite makes Write return ErrPaused, with the number of
	// messages it delivered, instead of waiting for room, until Resume;
	// a message not delivered is kept by the caller, not dropped.
	PauseWrite()
	// Resume undoes PauseRead and PauseWrite.
	Resume()
}

// ErrPaused is the error of a Read or Write stopped by a Pauser's pause.
var ErrPaused = errors.New("endpoint paused")

// Paused reports whether err is a pause's: ErrPaused, or the expired
// deadline by which an endpoint on a socket or file pauses.
func Paused(err error) bool {
	return errors.Is(err, ErrPaused) || errors.Is(err, os.ErrDeadlineExceeded)
}
