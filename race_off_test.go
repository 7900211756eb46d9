//go:build !race

package ipn_test

const raceEnabled = false
