package nstree

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/cr-dev/cr/network"
)

// NetInfo is a container's bridge network, in its config: the address
// (with the subnet's length, "10.88.0.5/16"), the bridge and the host end
// of its veth pair.
type NetInfo struct {
	Mode    string `json:"mode"` // network.ModeBridge
	Address string `json:"address"`
	Bridge  string `json:"bridge,omitempty"`
	Veth    string `json:"veth,omitempty"`
	// Publish are its published ports, HOSTPORT:PORT/PROTO.
	Publish []string `json:"publish,omitempty"`
}

// Ports parses Publish.
func (n *NetInfo) Ports() ([]network.Port, error) {
	var ps []network.Port
	for _, s := range n.Publish {
		p, err := network.ParsePort(s)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// PublishPorts publishes ports of node n (attached to c) and records them
// in its config (not written).
func (t *Tree) PublishPorts(n *Node, c network.Config, ports []network.Port) error {
	if len(ports) == 0 {
		return nil
	}
	addr, err := netip.ParsePrefix(n.Network.Address)
	if err != nil {
		return err
	}
	if err := c.Publish(n.ID, addr.Addr(), ports, t.Alive); err != nil {
		return err
	}
	n.Network.Publish = nil
	for _, p := range ports {
		n.Network.Publish = append(n.Network.Publish, p.String())
	}
	return nil
}

// Addr is the container's address without the prefix length ("" if none).
func (n *NetInfo) Addr() string {
	if n == nil {
		return ""
	}
	if p, err := netip.ParsePrefix(n.Address); err == nil {
		return p.Addr().String()
	}
	return n.Address
}

// Alive reports whether the node with id still exists: an address whose
// owner is gone is free again.
func (t *Tree) Alive(id string) bool {
	_, err := os.Stat(t.nodeDir(id))
	return err == nil
}

// AttachNetwork gives node n an address on the bridge of c (want, or the
// next free one), creating the bridge if needed, and a network namespace
// with its veth pair (the host end up if up is set). It records the
// network in n's config (not written). On error nothing is left.
func (t *Tree) AttachNetwork(n *Node, c network.Config, want netip.Addr, up bool) (*network.Endpoint, error) {
	if err := c.EnsureBridge(); err != nil {
		return nil, err
	}
	addr, err := c.Allocate(n.ID, want, t.Alive)
	if err != nil {
		return nil, err
	}
	ep, err := c.Attach(n.ID, addr, up)
	if err != nil {
		c.Release(addr, n.ID)
		return nil, fmt.Errorf("network of %s: %w", n.Path, err)
	}
	n.Network = &NetInfo{Mode: network.ModeBridge, Address: ep.Addr.String(), Bridge: c.Bridge, Veth: ep.HostVeth}
	return ep, nil
}

// DetachNetwork undoes AttachNetwork: the veth pair goes, the address is
// released.
func (t *Tree) DetachNetwork(n *Node, c network.Config, ep *network.Endpoint) {
	if ep == nil {
		return
	}
	ep.Remove()
	c.Unpublish(n.ID)
	c.Release(ep.Addr.Addr(), n.ID)
}
