//go:build !race

package vnet_test

// raceOn says the race detector is on: the pumps run several times slower.
const raceOn = false
