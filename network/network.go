// Package network owns containers' bridge networking: the bridge cr keeps
// on the host (cr0 by default), the addresses it hands out from the
// bridge's subnet (a small allocator with a lock under the state
// directory), each container's network namespace with its veth pair,
// address and default route, and the optional outbound NAT rule (an
// nftables table of cr's own). Everything goes through netlink and
// nftables' netlink interface; nothing runs ip or nft.
//
// A container's network namespace is made here, not by CRIU: cr run hands
// it to the container init, and a restore makes a new one with the same
// address before CRIU restores the container into it as an external
// namespace (as Podman and runc do), so established TCP connections keep
// their address wherever the container goes.
package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Defaults, as Podman's.
const (
	DefaultBridge = "cr0"
	DefaultSubnet = "10.88.0.0/16"
	// ContainerIf is the container's end of its veth pair.
	ContainerIf = "eth0"
	// ModeBridge names bridge networking in configs and manifests.
	ModeBridge = "bridge"
	// CRIUKey names a bridge container's network namespace as CRIU's
	// external resource: dumped as net[INODE]:CRIUKey, restored into the
	// namespace given by inherit-fd under that key.
	CRIUKey = "crnet"
)

// CRIUExternal is CRIU's external-resource name of the network namespace
// with inode ino.
func CRIUExternal(ino uint64) string { return fmt.Sprintf("net[%d]:%s", ino, CRIUKey) }

// ErrConfig: the bridge, the subnet or an address cannot be used as asked.
var ErrConfig = errors.New("network")

// ErrAddrInUse: the address asked for belongs to another container here.
var ErrAddrInUse = errors.New("address in use")

// Config is this host's bridge network: the bridge's name and its subnet,
// whose first address is the bridge's own (the containers' gateway).
type Config struct {
	Bridge   string
	Subnet   netip.Prefix
	StateDir string // the allocator's records go under StateDir/net
}

// FromEnv reads CR_BRIDGE and CR_SUBNET (defaults cr0, 10.88.0.0/16).
func FromEnv(stateDir string) (Config, error) {
	return Parse(os.Getenv("CR_BRIDGE"), os.Getenv("CR_SUBNET"), stateDir)
}

// Parse checks a bridge name and an IPv4 subnet ("" for the defaults).
func Parse(bridge, subnet, stateDir string) (Config, error) {
	if bridge == "" {
		bridge = DefaultBridge
	}
	if subnet == "" {
		subnet = DefaultSubnet
	}
	if len(bridge) > unix.IFNAMSIZ-1 || strings.ContainsAny(bridge, "/ \t\n:") || bridge == "." || bridge == ".." {
		return Config{}, fmt.Errorf("%w: bad bridge name %q", ErrConfig, bridge)
	}
	p, err := netip.ParsePrefix(subnet)
	if err != nil || !p.Addr().Is4() || p.Bits() > 30 || p.Bits() < 8 {
		return Config{}, fmt.Errorf("%w: bad subnet %q: want an IPv4 prefix from /8 to /30, such as %s", ErrConfig, subnet, DefaultSubnet)
	}
	return Config{Bridge: bridge, Subnet: p.Masked(), StateDir: stateDir}, nil
}

// Gateway is the bridge's address: the subnet's first.
func (c Config) Gateway() netip.Addr { return c.Subnet.Addr().Next() }

// Table is the name of cr's nftables table for this bridge.
func (c Config) Table() string { return "cr_" + c.Bridge }

// broadcast is the subnet's last address.
func (c Config) broadcast() netip.Addr {
	a := c.Subnet.Addr().As4()
	host := uint32(1)<<(32-c.Subnet.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Usable reports why addr cannot be a container's address here ("" if it can).
func (c Config) Usable(addr netip.Addr) string {
	switch {
	case !addr.Is4():
		return "not an IPv4 address"
	case !c.Subnet.Contains(addr):
		return fmt.Sprintf("not in the subnet %s of bridge %s", c.Subnet, c.Bridge)
	case addr == c.Subnet.Addr(), addr == c.broadcast():
		return fmt.Sprintf("the network or broadcast address of %s", c.Subnet)
	case addr == c.Gateway():
		return fmt.Sprintf("the bridge's own address (%s)", c.Bridge)
	}
	return ""
}

// BridgeState says what the host has of the bridge: whether it exists and
// which IPv4 prefixes it has.
func (c Config) BridgeState() (exists bool, addrs []netip.Prefix, err error) {
	l, err := netlink.LinkByName(c.Bridge)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil, nil
		}
		return false, nil, fmt.Errorf("find bridge %s: %w", c.Bridge, err)
	}
	if l.Type() != "bridge" {
		return true, nil, fmt.Errorf("%w: %s exists and is not a bridge (a %s)", ErrConfig, c.Bridge, l.Type())
	}
	as, err := netlink.AddrList(l, unix.AF_INET)
	if err != nil {
		return true, nil, err
	}
	for _, a := range as {
		if p, ok := prefixOf(a.IPNet); ok {
			addrs = append(addrs, p)
		}
	}
	return true, addrs, nil
}

// Check says whether this host can put containers of subnet on its bridge:
// its own subnet must be the same, and the bridge, if it exists, must
// have the subnet's gateway address.
func (c Config) Check(subnet netip.Prefix) error {
	if subnet.Masked() != c.Subnet {
		return fmt.Errorf("%w: bridge %s here has the subnet %s, not %s", ErrConfig, c.Bridge, c.Subnet, subnet.Masked())
	}
	exists, addrs, err := c.BridgeState()
	if err != nil || !exists {
		return err
	}
	want := netip.PrefixFrom(c.Gateway(), c.Subnet.Bits())
	for _, a := range addrs {
		if a == want {
			return nil
		}
	}
	return fmt.Errorf("%w: bridge %s here does not have the address %s (it has %s)", ErrConfig, c.Bridge, want, showPrefixes(addrs))
}

func showPrefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a, ones), true
}

// EnsureBridge creates the bridge with the gateway address and brings it
// up; an existing bridge must already have that address.
func (c Config) EnsureBridge() error {
	exists, _, err := c.BridgeState()
	if err != nil {
		return err
	}
	if exists {
		if err := c.Check(c.Subnet); err != nil {
			return err
		}
		l, err := netlink.LinkByName(c.Bridge)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.Bridge}}
	if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create bridge %s: %w", c.Bridge, err)
	}
	l, err := netlink.LinkByName(c.Bridge)
	if err != nil {
		return fmt.Errorf("create bridge %s: %w", c.Bridge, err)
	}
	gw := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(c.Gateway(), c.Subnet.Bits()))}
	if err := netlink.AddrAdd(l, gw); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("address bridge %s: %w", c.Bridge, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", c.Bridge, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Endpoint is a container's network namespace, made by Attach: its end
// of a veth pair (eth0) with the address, the other end on the bridge.
type Endpoint struct {
	NS       *os.File // the namespace, held open until Close
	HostVeth string
	Addr     netip.Prefix
}

// VethName is the host end of the veth pair of the node with id.
func VethName(id string) string {
	n := "v" + id
	if len(n) > unix.IFNAMSIZ-1 {
		n = n[:unix.IFNAMSIZ-1]
	}
	return n
}

// NewNamespace creates a network namespace with no process in it, held
// by the returned file. It is made on a thread of its own, which ends
// with it if it cannot return to the host's namespace.
func NewNamespace() (*os.File, error) {
	type res struct {
		f   *os.File
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- res{nil, err}
			return // the locked thread ends with the goroutine
		}
		defer orig.Close()
		ns, err := netns.New() // unshare(CLONE_NEWNET) on this thread
		if err != nil {
			ch <- res{nil, fmt.Errorf("create network namespace: %w", err)}
			return
		}
		if err := netns.Set(orig); err != nil {
			ns.Close()
			ch <- res{nil, fmt.Errorf("create network namespace: return to the host's: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- res{os.NewFile(uintptr(ns), "netns"), nil}
	}()
	r := <-ch
	return r.f, r.err
}

// Attach makes a new network namespace for the node with id, with a veth
// pair: eth0 inside with addr (in the subnet), up, lo up and the default
// route through the bridge; the host end named VethName(id) on the
// bridge, up if up is set (a restore keeps it down until the container
// runs, so no peer's packet meets a namespace without its sockets).
func (c Config) Attach(id string, addr netip.Addr, up bool) (*Endpoint, error) {
	if why := c.Usable(addr); why != "" {
		return nil, fmt.Errorf("%w: address %s: %s", ErrConfig, addr, why)
	}
	br, err := netlink.LinkByName(c.Bridge)
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", c.Bridge, err)
	}
	nsf, err := NewNamespace()
	if err != nil {
		return nil, err
	}
	e := &Endpoint{NS: nsf, HostVeth: VethName(id), Addr: netip.PrefixFrom(addr, c.Subnet.Bits())}
	ok := false
	defer func() {
		if !ok {
			e.Remove()
		}
	}()
	peer := "t" + strings.TrimPrefix(e.HostVeth, "v")
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: e.HostVeth, MasterIndex: br.Attrs().Index}, PeerName: peer, PeerNamespace: netlink.NsFd(int(nsf.Fd()))}
	if err := netlink.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("create veth %s: %w", e.HostVeth, err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(int(nsf.Fd())))
	if err != nil {
		return nil, err
	}
	defer h.Close()
	in, err := h.LinkByName(peer)
	if err == nil {
		err = h.LinkSetName(in, ContainerIf)
	}
	if err == nil {
		in, err = h.LinkByName(ContainerIf)
	}
	if err == nil {
		err = h.AddrAdd(in, &netlink.Addr{IPNet: ipNet(e.Addr)})
	}
	if err == nil {
		err = h.LinkSetUp(in)
	}
	if err != nil {
		return nil, fmt.Errorf("set up %s of %s: %w", ContainerIf, id, err)
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return nil, fmt.Errorf("bring up lo: %w", err)
		}
	}
	gw := net.IP(c.Gateway().AsSlice())
	if err := h.RouteAdd(&netlink.Route{LinkIndex: in.Attrs().Index, Gw: gw, Scope: netlink.SCOPE_UNIVERSE}); err != nil {
		return nil, fmt.Errorf("default route of %s: %w", id, err)
	}
	if up {
		if err := SetLink(e.HostVeth, true); err != nil {
			return nil, err
		}
	}
	ok = true
	return e, nil
}

// Close lets go of the namespace: it goes once no process is in it.
func (e *Endpoint) Close() {
	if e != nil && e.NS != nil {
		e.NS.Close()
		e.NS = nil
	}
}

// Remove deletes the veth pair and lets go of the namespace.
func (e *Endpoint) Remove() {
	if e == nil {
		return
	}
	DeleteLink(e.HostVeth)
	e.Close()
}

// SetLink brings a host interface up or down.
func SetLink(name string, up bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if up {
		err = netlink.LinkSetUp(l)
	} else {
		err = netlink.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("set %s up=%v: %w", name, up, err)
	}
	return nil
}

// DeleteLink removes a host interface if it exists (a veth takes its peer).
func DeleteLink(name string) {
	if l, err := netlink.LinkByName(name); err == nil {
		_ = netlink.LinkDel(l)
	}
}

// NamespaceOf is the inode of the network namespace of process pid.
func NamespaceOf(pid int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join("/proc", fmt.Sprint(pid), "ns", "net"), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// IPForward reports net.ipv4.ip_forward of this network namespace.
func IPForward() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// NftablesWorks says whether nftables answers over netlink here (nil) or why not.
func NftablesWorks() error {
	conn, err := nftables.New()
	if err != nil {
		return err
	}
	_, err = conn.ListTables()
	return err
}
