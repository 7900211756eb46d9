package daemon

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"github.com/ipn-project/ipn/engine"
	"github.com/ipn-project/ipn/internal/wire"
)

// doList answers OpList: the networks the client can see (a file it can
// reach by its path, or the one whose descriptor it passed), paged.
func (ss *session) doList(body []byte, fds []int) ([]byte, error) {
	off, err := wire.GetU32(body)
	if err != nil {
		return nil, err
	}
	return ss.page(wire.OpList, off, func() ([]byte, error) {
		var only *fileID
		if len(fds) > 0 {
			id, _, err := statNetFile(fds[0])
			if err != nil {
				return nil, err
			}
			only = &id
		}
		list, err := ss.list(only)
		if err != nil {
			return nil, err
		}
		return json.Marshal(list)
	})
}

// page answers a paged request of op: at offset 0 it makes the whole
// answer with make and keeps it, charged to the user's memory, until read
// to its end (or another is made); each reply is the answer's total length
// (u32) and its bytes from off, at most wire.ListChunk of them.
func (ss *session) page(op uint16, off uint32, make func() ([]byte, error)) ([]byte, error) {
	if off == 0 {
		ss.dropPaged()
		b, err := make()
		if err != nil {
			return nil, err
		}
		if err := ss.srv.acct.take(ss.cred.UID, usage{memory: int64(len(b))}); err != nil {
			return nil, err
		}
		ss.paged, ss.pagedOp = b, op
	}
	if ss.paged == nil || ss.pagedOp != op || int64(off) > int64(len(ss.paged)) {
		return nil, fmt.Errorf("offset %d past the end of the answer: %w", off, syscall.EINVAL)
	}
	end := min(int(off)+wire.ListChunk, len(ss.paged))
	reply := append(wire.U32(uint32(len(ss.paged))), ss.paged[off:end]...)
	if end == len(ss.paged) {
		ss.dropPaged()
	}
	return reply, nil
}

// dropPaged forgets the answer being read, and its charge.
func (ss *session) dropPaged() {
	if ss.paged != nil {
		ss.srv.acct.give(ss.cred.UID, usage{memory: int64(len(ss.paged))})
		ss.paged = nil
	}
}

// list returns what the session's user may see of the networks (of the one
// with file id only, if not nil), sorted by path.
func (ss *session) list(only *fileID) ([]wire.NetInfo, error) {
	list := []wire.NetInfo{}
	for _, n := range ss.srv.engine.Networks() {
		nf := netFileOf(n)
		if only != nil {
			if nf.id != *only {
				continue
			}
		} else if !nf.visibleTo(ss.cred) {
			continue
		}
		r, err := nf.rights(ss.cred)
		manager := err == nil && r.X || ss.cred.UID == 0
		list = append(list, netInfo(n, nf, manager, &ss.srv.devices))
	}
	if only != nil && len(list) == 0 {
		return nil, fmt.Errorf("no network on this file: %w", syscall.ENOENT)
	}
	slices.SortFunc(list, func(a, b wire.NetInfo) int { return strings.Compare(a.Path, b.Path) })
	return list, nil
}

// netInfo describes n; the peers of its ports are shown to managers only.
func netInfo(n *engine.Network, nf *netFile, manager bool, devs *devices) wire.NetInfo {
	cfg := n.Config()
	info := wire.NetInfo{
		Path: nf.path(), Proto: cfg.Proto.String(), Tag: uint16(cfg.Proto),
		MTU: cfg.MTU, NumPorts: cfg.NumPorts, PoolSize: cfg.PoolSize,
		Flags: flagNames(cfg.Flags), Dev: nf.id.dev, Ino: nf.id.ino,
	}
	if info.Path == "" {
		// Removed, or in another mount namespace: no path of the
		// daemon's leads there.
		info.Path = "(no path here) " + cfg.Name
	}
	if st, err := nf.stat(); err == nil {
		info.UID, info.GID, info.Mode = st.Uid, st.Gid, st.Mode&0o7777
	}
	info.Readers, info.Writers = n.Counts()
	ports := n.Ports()
	nums := make([]int, len(ports))
	for i, p := range ports {
		nums[i] = p.Num()
	}
	descrs := n.DescribePorts(nums) // one pass over the policy's tables
	for i, p := range ports {
		s := p.Stats()
		o := p.Options()
		pi := wire.PortInfo{
			Port: p.Num(), Descr: o.Description,
			Read: p.CanRead(), Write: p.CanWrite(),
			MsgsIn: s.MsgsIn, BytesIn: s.BytesIn, MsgsOut: s.MsgsOut, BytesOut: s.BytesOut,
			Drops: s.Drops, Errors: s.Errors,
			Policy: descrs[i], Monitor: o.Monitor, Link: o.Link,
		}
		peer := o.Peer
		if dev, persist, who := devs.describe(p); dev {
			// Who holds a device port changes (a plug exits, another
			// process joins): the devices know, not the port's options.
			pi.Persist, peer = persist, who
		}
		if manager {
			pi.Peer = peer
		}
		info.PortsInfo = append(info.PortsInfo, pi)
	}
	return info
}

func flagNames(f engine.Flags) []string {
	var names []string
	for _, x := range []struct {
		f    engine.Flags
		name string
	}{{engine.Lossless, "lossless"}, {engine.Excl, "excl"}, {engine.FlexMTU, "flexmtu"}} {
		if f&x.f != 0 {
			names = append(names, x.name)
		}
	}
	return names
}
