package network

import (
	"bytes"
	"fmt"
	"net"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// NAT chain and its one rule: traffic from the subnet that leaves through
// another interface than the bridge is masqueraded, as Podman's default
// network does.
const natChain = "postrouting"

func ifname(s string) []byte {
	b := make([]byte, 16)
	copy(b, s)
	return b
}

// natRule is the masquerade rule's expressions:
// ip saddr SUBNET oifname != BRIDGE masquerade.
func (c Config) natRule() []expr.Any {
	mask := net.CIDRMask(c.Subnet.Bits(), 32)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: c.Subnet.Addr().AsSlice()},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(c.Bridge)},
		&expr.Masq{},
	}
}

// EnsureNAT installs outbound NAT for the subnet: the table Table() (ip
// family) with a postrouting nat chain holding the masquerade rule, made
// afresh, and IPv4 forwarding on (without it nothing is forwarded to be
// masqueraded). It changes nothing else.
func (c Config) EnsureNAT() error {
	conn, err := nftables.New()
	if err != nil {
		return err
	}
	t := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: c.Table()})
	ch := conn.AddChain(&nftables.Chain{
		Name: natChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	conn.FlushChain(ch)
	conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: c.natRule()})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", c.Table(), err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}

// HasNAT reports whether the masquerade rule is in place.
func (c Config) HasNAT() (bool, error) {
	conn, err := nftables.New()
	if err != nil {
		return false, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: c.Table()}
	rules, err := conn.GetRules(t, &nftables.Chain{Name: natChain, Table: t})
	if err != nil {
		return false, nil // no table, or no chain
	}
	want := c.natRule()
	for _, r := range rules {
		if len(r.Exprs) != len(want) {
			continue
		}
		same := true
		for i := range want {
			if !sameExpr(r.Exprs[i], want[i]) {
				same = false
			}
		}
		if same {
			return true, nil
		}
	}
	return false, nil
}

// sameExpr compares the fields of the expressions natRule uses.
func sameExpr(a, b expr.Any) bool {
	switch x := b.(type) {
	case *expr.Meta:
		y, ok := a.(*expr.Meta)
		return ok && y.Key == x.Key
	case *expr.Cmp:
		y, ok := a.(*expr.Cmp)
		return ok && y.Op == x.Op && bytes.Equal(y.Data, x.Data)
	case *expr.Payload:
		y, ok := a.(*expr.Payload)
		return ok && y.Base == x.Base && y.Offset == x.Offset && y.Len == x.Len
	case *expr.Bitwise:
		y, ok := a.(*expr.Bitwise)
		return ok && bytes.Equal(y.Mask, x.Mask)
	case *expr.Masq:
		_, ok := a.(*expr.Masq)
		return ok
	}
	return false
}

// RemoveNAT deletes cr's table for this bridge, if there is one.
func (c Config) RemoveNAT() error {
	conn, err := nftables.New()
	if err != nil {
		return err
	}
	conn.DelTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: c.Table()})
	return conn.Flush()
}
