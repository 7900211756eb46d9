package wire

// NetInfo describes a network in the reply to OpList (JSON).
type NetInfo struct {
	Path      string     `json:"path"`
	Proto     string     `json:"proto"`
	Tag       uint16     `json:"tag"`
	UID       uint32     `json:"uid"`
	GID       uint32     `json:"gid"`
	Mode      uint32     `json:"mode"` // permission bits of the network file
	Dev       uint64     `json:"dev"`  // the network file's device and inode
	Ino       uint64     `json:"ino"`
	MTU       int        `json:"mtu"`
	NumPorts  int        `json:"ports"`
	PoolSize  int        `json:"pool"`
	Flags     []string   `json:"flags"`
	Readers   int        `json:"readers"`
	Writers   int        `json:"writers"`
	PortsInfo []PortInfo `json:"port_list"`
}

// PortInfo describes a connected port in a NetInfo.
type PortInfo struct {
	Port     int    `json:"port"`
	Descr    string `json:"descr,omitempty"`
	Peer     string `json:"peer,omitempty"` // shown to managers and root only
	Read     bool   `json:"read"`
	Write    bool   `json:"write"`
	MsgsIn   uint64 `json:"msgs_in"`
	BytesIn  uint64 `json:"bytes_in"`
	MsgsOut  uint64 `json:"msgs_out"`
	BytesOut uint64 `json:"bytes_out"`
	Drops    uint64 `json:"drops"`
	Errors   uint64 `json:"errors"`
	// Policy is the policy's own description of the port (VLAN, MACs).
	Policy string `json:"policy,omitempty"`
	// Persist marks a device port (tap, grab) that outlives its session.
	Persist bool `json:"persist,omitempty"`
	// Monitor marks a monitor port: it gets a copy of what every member
	// sends (shown to everyone who lists the network).
	Monitor bool `json:"monitor,omitempty"`
	// Link marks a link to another network (a cable, a VDE client, a
	// device), which loop protection probes.
	Link bool `json:"link,omitempty"`
}
