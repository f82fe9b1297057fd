package network

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Port is a published port: traffic to Host (on any of the host's own
// addresses) goes to Container on the container's address.
type Port struct {
	Host, Container uint16
	Proto           string // "tcp" or "udp"
}

// ParsePort reads HOSTPORT:PORT[/tcp|/udp].
func ParsePort(s string) (Port, error) {
	spec, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = "tcp"
	}
	h, c, ok := strings.Cut(spec, ":")
	hp, err1 := strconv.ParseUint(h, 10, 16)
	cp, err2 := strconv.ParseUint(c, 10, 16)
	if !ok || err1 != nil || err2 != nil || hp == 0 || cp == 0 || (proto != "tcp" && proto != "udp") {
		return Port{}, fmt.Errorf("%w: bad port %q: want HOSTPORT:PORT, or HOSTPORT:PORT/udp", ErrConfig, s)
	}
	return Port{Host: uint16(hp), Container: uint16(cp), Proto: proto}, nil
}

func (p Port) String() string { return fmt.Sprintf("%d:%d/%s", p.Host, p.Container, p.Proto) }

func (p Port) record() string { return fmt.Sprintf("%s-%d", p.Proto, p.Host) }

// The chains of published ports: from other hosts (prerouting) and from
// this host itself (output), each only for traffic to one of the host's
// own addresses.
var publishChains = []struct {
	name string
	hook *nftables.ChainHook
}{{"prerouting", nftables.ChainHookPrerouting}, {"output", nftables.ChainHookOutput}}

func ownerTag(owner string) []byte { return []byte(ownerTagPrefix + owner) }

// ownerTagPrefix starts the user data of every rule cr publishes a port with.
const ownerTagPrefix = "cr-node:"

// dnatRule: fib daddr type local PROTO dport HOST dnat to ADDR:CONTAINER.
func dnatRule(addr netip.Addr, p Port) []expr.Any {
	proto := byte(unix.IPPROTO_TCP)
	if p.Proto == "udp" {
		proto = unix.IPPROTO_UDP
	}
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Host)},
		&expr.Immediate{Register: 1, Data: addr.AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(p.Container)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2},
	}
}

func (c Config) portsDir() string { return filepath.Join(c.ipamDir(), "ports") }

// PortOwner is the id of the node that published host port p, or "".
func (c Config) PortOwner(p Port) string {
	b, err := os.ReadFile(filepath.Join(c.portsDir(), p.record()))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Publish forwards each of ports to owner's address addr: a record per
// host port (refused if another live owner has it) and a DNAT rule per
// port in each of the table's publishing chains, tagged with the owner.
func (c Config) Publish(owner string, addr netip.Addr, ports []Port, live func(string) bool) error {
	if len(ports) == 0 {
		return nil
	}
	unlock, err := c.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.MkdirAll(c.portsDir(), 0o700); err != nil {
		return err
	}
	for _, p := range ports {
		if o := c.PortOwner(p); o != "" && o != owner && live(o) {
			return fmt.Errorf("%w: host port %d/%s is published by another container here (%s)", ErrAddrInUse, p.Host, p.Proto, o)
		}
	}
	conn, err := nftables.New()
	if err != nil {
		return err
	}
	c.unpublishLocked(conn, owner)
	// Rules of owners that went without a word (an init that removed its
	// own node cannot reach the host's table) go too.
	c.forgetGone(conn, live)
	t := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: c.Table()})
	for _, pc := range publishChains {
		ch := conn.AddChain(&nftables.Chain{Name: pc.name, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: pc.hook, Priority: nftables.ChainPriorityNATDest})
		for _, p := range ports {
			conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: dnatRule(addr, p), UserData: ownerTag(owner)})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("publish ports in nftables table %s: %w", c.Table(), err)
	}
	for _, p := range ports {
		if err := os.WriteFile(filepath.Join(c.portsDir(), p.record()), []byte(owner+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Unpublish removes owner's published ports: its rules and records.
func (c Config) Unpublish(owner string) {
	unlock, err := c.lock()
	if err != nil {
		return
	}
	defer unlock()
	if conn, err := nftables.New(); err == nil {
		c.unpublishLocked(conn, owner)
		_ = conn.Flush()
	}
}

// unpublishLocked queues the deletion of owner's rules on conn and removes
// its records. The caller holds the lock and flushes conn.
func (c Config) unpublishLocked(conn *nftables.Conn, owner string) {
	ents, _ := os.ReadDir(c.portsDir())
	for _, e := range ents {
		p := filepath.Join(c.portsDir(), e.Name())
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == owner {
			_ = os.Remove(p)
		}
	}
	c.delPublishRules(conn, func(r *nftables.Rule) bool { return bytes.Equal(r.UserData, ownerTag(owner)) })
}

// forgetGone queues the deletion of the rules whose owner is not live.
func (c Config) forgetGone(conn *nftables.Conn, live func(string) bool) {
	c.delPublishRules(conn, func(r *nftables.Rule) bool {
		o, ok := strings.CutPrefix(string(r.UserData), ownerTagPrefix)
		return ok && !live(o)
	})
}

// delPublishRules queues on conn the deletion of the rules of the
// table's publish chains that match says to delete.
func (c Config) delPublishRules(conn *nftables.Conn, match func(*nftables.Rule) bool) {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: c.Table()}
	for _, pc := range publishChains {
		rules, err := conn.GetRules(t, &nftables.Chain{Name: pc.name, Table: t})
		if err != nil {
			continue
		}
		for _, r := range rules {
			if match(r) {
				_ = conn.DelRule(r)
			}
		}
	}
}

// Published lists the host ports whose rules are in the table's prerouting
// chain, as "HOSTPORT->ADDR:PORT/PROTO" (for cr check and the tests).
func (c Config) Published() ([]string, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: c.Table()}
	rules, err := conn.GetRules(t, &nftables.Chain{Name: "prerouting", Table: t})
	if err != nil {
		return nil, nil
	}
	var out []string
	for _, r := range rules {
		var cmps [][]byte
		var imms [][]byte
		for _, x := range r.Exprs {
			switch e := x.(type) {
			case *expr.Cmp:
				cmps = append(cmps, e.Data)
			case *expr.Immediate:
				imms = append(imms, e.Data)
			}
		}
		if len(cmps) != 3 || len(imms) != 2 || len(imms[0]) != 4 || len(imms[1]) != 2 || len(cmps[2]) != 2 || len(cmps[1]) != 1 {
			continue
		}
		proto := "tcp"
		if cmps[1][0] == unix.IPPROTO_UDP {
			proto = "udp"
		}
		a, _ := netip.AddrFromSlice(imms[0])
		out = append(out, fmt.Sprintf("%d->%s:%d/%s", binaryutil.BigEndian.Uint16(cmps[2]), a, binaryutil.BigEndian.Uint16(imms[1]), proto))
	}
	return out, nil
}
