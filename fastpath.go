package ipn

// fastPath is a connected socket's shared-memory rings.
type fastPath struct{}
