package network

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// The address allocator keeps one file per address given out,
// StateDir/net/BRIDGE/ADDR, holding the id of the node that owns it, and
// works under an flock on StateDir/net/BRIDGE.lock. An address is free
// again once its owner is gone: Allocate reclaims records whose owner the
// caller says is not alive, so a node that goes (however it goes, by
// cr kill, its init's on-empty policy or a crash) needs no hook here.

func (c Config) ipamDir() string { return filepath.Join(c.StateDir, "net", c.Bridge) }

func (c Config) lock() (func(), error) {
	if err := os.MkdirAll(c.ipamDir(), 0o700); err != nil {
		return nil, err
	}
	fd, err := unix.Open(c.ipamDir()+".lock", unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock addresses of %s: %w", c.Bridge, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock addresses of %s: %w", c.Bridge, err)
	}
	return func() { unix.Close(fd) }, nil
}

// Allocate gives owner an address: want if it is valid (not zero), else
// the lowest free one after the gateway. live says whether the owner of
// an existing record still exists; records of owners that do not are
// reclaimed.
func (c Config) Allocate(owner string, want netip.Addr, live func(owner string) bool) (netip.Addr, error) {
	unlock, err := c.lock()
	if err != nil {
		return netip.Addr{}, err
	}
	defer unlock()
	var gone []string // owners whose records were reclaimed
	defer func() {
		if len(gone) == 0 {
			return
		}
		// Their published ports must not reach the address's next owner.
		if conn, err := nftables.New(); err == nil {
			for _, o := range gone {
				c.unpublishLocked(conn, o)
			}
			_ = conn.Flush()
		}
	}()
	taken := func(a netip.Addr) (string, bool) {
		b, err := os.ReadFile(filepath.Join(c.ipamDir(), a.String()))
		if err != nil {
			return "", false
		}
		o := strings.TrimSpace(string(b))
		if o == owner || !live(o) {
			// A namespace of a gone owner that lingers must not answer
			// for the address beside its new owner.
			if o != owner {
				DeleteLink(VethName(o))
				gone = append(gone, o)
			}
			_ = os.Remove(filepath.Join(c.ipamDir(), a.String()))
			return "", false
		}
		return o, true
	}
	if want.IsValid() {
		if why := c.Usable(want); why != "" {
			return netip.Addr{}, fmt.Errorf("%w: address %s: %s", ErrConfig, want, why)
		}
		if o, ok := taken(want); ok {
			return netip.Addr{}, fmt.Errorf("%w: %s belongs to another container here (%s)", ErrAddrInUse, want, o)
		}
		return want, c.record(want, owner)
	}
	for a := c.Gateway().Next(); c.Subnet.Contains(a) && a != c.broadcast(); a = a.Next() {
		if _, ok := taken(a); !ok {
			return a, c.record(a, owner)
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: no free address left in %s", ErrConfig, c.Subnet)
}

func (c Config) record(a netip.Addr, owner string) error {
	p := filepath.Join(c.ipamDir(), a.String())
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(owner+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// Release frees owner's address a (a no-op if someone else has it).
func (c Config) Release(a netip.Addr, owner string) {
	unlock, err := c.lock()
	if err != nil {
		return
	}
	defer unlock()
	p := filepath.Join(c.ipamDir(), a.String())
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == owner {
		_ = os.Remove(p)
	}
}

// Owner is the id of the node that holds a, or "".
func (c Config) Owner(a netip.Addr) string {
	b, err := os.ReadFile(filepath.Join(c.ipamDir(), a.String()))
	if errors.Is(err, os.ErrNotExist) || err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
