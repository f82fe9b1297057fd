package rootfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// DefaultCache is where a host keeps lower layers by digest
// (CR_ROOTFS_CACHE).
const DefaultCache = "/var/lib/cr/rootfs"

// Cache is a host's lower layers by digest: <dir>/<hex> is a lower, a
// directory unpacked from an image (Import), or a symbolic link to a
// directory a container was started on (Register).
type Cache struct{ Dir string }

// ErrNoLower: the lower a container needs is not in the cache.
var ErrNoLower = errors.New("lower not in the rootfs cache")

func (c Cache) path(digest string) (string, error) {
	if !ValidDigest(digest) {
		return "", fmt.Errorf("bad rootfs digest %q", digest)
	}
	return filepath.Join(c.Dir, strings.TrimPrefix(digest, DigestPrefix)), nil
}

// Lookup returns the directory of the lower with that digest.
func (c Cache) Lookup(digest string) (string, error) {
	p, err := c.path(digest)
	if err != nil {
		return "", err
	}
	d, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("%w: %s (in %s)", ErrNoLower, digest, c.Dir)
	}
	if st, err := os.Stat(d); err != nil || !st.IsDir() {
		return "", fmt.Errorf("%w: %s (in %s)", ErrNoLower, digest, c.Dir)
	}
	return d, nil
}

// Register records dir, whose digest is digest, as that lower, unless the
// cache has it already.
func (c Cache) Register(digest, dir string) error {
	if _, err := c.Lookup(digest); err == nil {
		return nil
	}
	p, err := c.path(digest)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return fmt.Errorf("rootfs cache: %w", err)
	}
	_ = os.Remove(p) // a dangling link
	if err := os.Symlink(dir, p); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("rootfs cache: %w", err)
	}
	return nil
}

// slot returns the cached lower with that digest if there is one, or
// else the path where it goes, the cache directory made.
func (c Cache) slot(digest string) (cached, p string, err error) {
	if d, err := c.Lookup(digest); err == nil {
		return d, "", nil
	}
	if p, err = c.path(digest); err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return "", "", fmt.Errorf("rootfs cache: %w", err)
	}
	return "", p, nil
}

// Import unpacks the layer archive r as the lower with that digest, and
// keeps it only if its content has that digest. It returns its directory.
func (c Cache) Import(digest string, r io.Reader) (string, error) {
	d, p, err := c.slot(digest)
	if d != "" || err != nil {
		return d, err
	}
	tmp, err := os.MkdirTemp(c.Dir, ".import-")
	if err != nil {
		return "", fmt.Errorf("rootfs cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := ReadLayer(r, tmp); err != nil {
		return "", fmt.Errorf("unpack rootfs %s: %w", digest, err)
	}
	got, err := Digest(tmp)
	if err != nil {
		return "", err
	}
	if got != digest {
		return "", fmt.Errorf("unpack rootfs %s: content has digest %s", digest, got)
	}
	if err := os.Rename(tmp, p); err != nil {
		if d, err2 := c.Lookup(digest); err2 == nil {
			return d, nil // another cr imported it meanwhile
		}
		return "", fmt.Errorf("rootfs cache: %w", err)
	}
	return p, nil
}

// Adopt moves the tree at dir, whose digest the caller verified, into the
// cache as the lower with that digest (unless the cache has it already),
// and returns its directory.
func (c Cache) Adopt(digest, dir string) (string, error) {
	d, p, err := c.slot(digest)
	if d != "" || err != nil {
		return d, err
	}
	_ = os.Remove(p) // a dangling link
	if err := MoveTree(dir, p); err != nil {
		if d, err2 := c.Lookup(digest); err2 == nil {
			return d, nil // another cr put it there meanwhile
		}
		return "", fmt.Errorf("rootfs cache: %w", err)
	}
	return p, nil
}
