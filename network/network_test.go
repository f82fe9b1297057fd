package network

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := Parse("", "", "/s")
	if err != nil || c.Bridge != DefaultBridge || c.Subnet.String() != DefaultSubnet || c.Table() != "cr_cr0" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	if c.Gateway().String() != "10.88.0.1" {
		t.Errorf("gateway %s", c.Gateway())
	}
	if c, err := Parse("br1", "10.1.2.3/24", ""); err != nil || c.Subnet.String() != "10.1.2.0/24" {
		t.Errorf("a host address is masked to its subnet: %+v %v", c, err)
	}
	for _, bad := range [][2]string{
		{"a-very-long-bridge-name", ""}, {"a/b", ""}, {"x", "fd00::/64"}, {"x", "10.0.0.0/31"},
		{"x", "10.0.0.0/4"}, {"x", "10.0.0.0"}, {"x", "nonsense"},
	} {
		if _, err := Parse(bad[0], bad[1], ""); !errors.Is(err, ErrConfig) {
			t.Errorf("Parse(%q, %q): %v, want ErrConfig", bad[0], bad[1], err)
		}
	}
}

func TestUsable(t *testing.T) {
	c, _ := Parse("crx", "10.9.8.0/24", "")
	for a, want := range map[string]string{
		"10.9.8.2":   "",
		"10.9.8.254": "",
		"10.9.8.0":   "the network or broadcast address of 10.9.8.0/24",
		"10.9.8.255": "the network or broadcast address of 10.9.8.0/24",
		"10.9.8.1":   "the bridge's own address (crx)",
		"10.9.9.2":   "not in the subnet 10.9.8.0/24 of bridge crx",
		"::1":        "not an IPv4 address",
	} {
		if got := c.Usable(netip.MustParseAddr(a)); got != want {
			t.Errorf("Usable(%s) = %q, want %q", a, got, want)
		}
	}
}

// The allocator gives the lowest free address, the one asked for if free,
// refuses one another live owner has, and reclaims those of gone owners.
func TestAllocate(t *testing.T) {
	c, _ := Parse("crunit0", "10.9.8.0/29", t.TempDir()) // .2 to .6 usable
	live := map[string]bool{"a": true, "b": true, "c": true}
	alive := func(o string) bool { return live[o] }
	get := func(owner, want string) (string, error) {
		var w netip.Addr
		if want != "" {
			w = netip.MustParseAddr(want)
		}
		a, err := c.Allocate(owner, w, alive)
		return a.String(), err
	}
	if a, err := get("a", ""); a != "10.9.8.2" || err != nil {
		t.Fatalf("first: %s %v", a, err)
	}
	if a, err := get("b", "10.9.8.5"); a != "10.9.8.5" || err != nil {
		t.Fatalf("asked: %s %v", a, err)
	}
	if _, err := get("c", "10.9.8.5"); !errors.Is(err, ErrAddrInUse) || !strings.Contains(err.Error(), "10.9.8.5 belongs to another container here (b)") {
		t.Errorf("taken: %v", err)
	}
	if a, _ := get("c", ""); a != "10.9.8.3" {
		t.Errorf("next free: %s", a)
	}
	if o := c.Owner(netip.MustParseAddr("10.9.8.3")); o != "c" {
		t.Errorf("owner of .3: %q", o)
	}
	// b goes without a word: its address is free again.
	delete(live, "b")
	live["d"] = true
	if a, err := get("d", "10.9.8.5"); a != "10.9.8.5" || err != nil {
		t.Errorf("reclaimed: %s %v", a, err)
	}
	// Release by another owner is a no-op; by the owner frees it.
	c.Release(netip.MustParseAddr("10.9.8.5"), "a")
	if o := c.Owner(netip.MustParseAddr("10.9.8.5")); o != "d" {
		t.Errorf("released by a non-owner: owner %q", o)
	}
	c.Release(netip.MustParseAddr("10.9.8.5"), "d")
	if o := c.Owner(netip.MustParseAddr("10.9.8.5")); o != "" {
		t.Errorf("released: owner %q", o)
	}
	for _, o := range []string{"e", "f", "g"} {
		live[o] = true
		if _, err := get(o, ""); err != nil {
			t.Fatalf("%s: %v", o, err)
		}
	}
	live["h"] = true
	if _, err := get("h", ""); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "no free address left in 10.9.8.0/29") {
		t.Errorf("full: %v", err)
	}
	if _, err := get("h", "10.9.9.1"); !errors.Is(err, ErrConfig) {
		t.Errorf("outside the subnet: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(c.StateDir, "net", "crunit0"))
	if len(ents) != 5 {
		t.Errorf("%d records, want 5", len(ents))
	}
}

// Check compares subnets first; a missing bridge is no obstacle.
func TestCheck(t *testing.T) {
	c, _ := Parse("crunitnone0", "10.9.8.0/24", "")
	if err := c.Check(netip.MustParsePrefix("10.9.8.7/24")); err != nil {
		t.Errorf("same subnet, no bridge: %v", err)
	}
	err := c.Check(netip.MustParsePrefix("10.9.7.7/24"))
	if !errors.Is(err, ErrConfig) || err.Error() != "network: bridge crunitnone0 here has the subnet 10.9.8.0/24, not 10.9.7.0/24" {
		t.Errorf("other subnet: %v", err)
	}
	if err := c.Check(netip.MustParsePrefix("10.9.8.7/16")); err == nil {
		t.Errorf("another prefix length is another subnet")
	}
}

func TestVethName(t *testing.T) {
	if n := VethName("c0123456789ab"); n != "vc0123456789ab" || len(n) > 15 {
		t.Errorf("VethName: %q", n)
	}
	if n := VethName("c0123456789abcdef"); len(n) != 15 {
		t.Errorf("long id: %q", n)
	}
}

func TestParsePort(t *testing.T) {
	for s, want := range map[string]string{"8080:80": "8080:80/tcp", "53:5353/udp": "53:5353/udp", "1:65535/tcp": "1:65535/tcp"} {
		p, err := ParsePort(s)
		if err != nil || p.String() != want {
			t.Errorf("ParsePort(%q) = %v, %v; want %s", s, p, err, want)
		}
	}
	for _, bad := range []string{"80", "0:80", "80:0", "80:65536", "a:b", "80:80/sctp", "80:80/", ":80", "80:", "-1:80"} {
		if _, err := ParsePort(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("ParsePort(%q): %v, want ErrConfig", bad, err)
		}
	}
}
