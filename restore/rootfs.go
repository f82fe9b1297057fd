package restore

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
)

// MissingLowers lists the lowers of the image's --rootfs containers that
// neither this host's rootfs cache has nor the image carries, as an error
// naming each digest; nil when every one can be found.
func MissingLowers(t *nstree.Tree, m *images.Manifest) error {
	cache := rootfs.Cache{Dir: t.RootfsCache}
	var errs []error
	for _, c := range m.Containers {
		r := c.Rootfs
		if r == nil || c.Empty || r.LowerEntry != "" {
			continue
		}
		if _, err := cache.Lookup(r.Lower); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s needs the rootfs %s, which is not in this host's rootfs cache (%s); checkpoint with --with-rootfs to carry it", ErrIncompatible, path.Join(m.Root, c.Path), r.Lower, t.RootfsCache))
		}
	}
	return errors.Join(errs...)
}

// MissingDigests refuses lowers (digests) that this host's rootfs cache
// lacks, naming each: a migration asks before the source is frozen.
func MissingDigests(t *nstree.Tree, lowers []string) error {
	cache := rootfs.Cache{Dir: t.RootfsCache}
	var errs []error
	for _, d := range lowers {
		if _, err := cache.Lookup(d); err != nil {
			errs = append(errs, fmt.Errorf("%w: the rootfs %s is not in this host's rootfs cache (%s); migrate with --with-rootfs to send it", ErrIncompatible, d, t.RootfsCache))
		}
	}
	return errors.Join(errs...)
}

// rootfsLowers finds the lower of every --rootfs container of the image
// (by manifest index): in this host's rootfs cache, or put there from a
// migration's pre-copy or from the image. An upper that is a delta needs
// its pre-copy.
func rootfsLowers(t *nstree.Tree, dir string, m *images.Manifest, pre *rootfs.PreCopied) (map[int]string, error) {
	cache := rootfs.Cache{Dir: t.RootfsCache}
	for _, c := range m.Containers {
		r := c.Rootfs
		if r == nil || c.Empty {
			continue
		}
		if r.UpperDelta && (pre == nil || pre.Uppers[c.Path] == "") {
			return nil, fmt.Errorf("%w: %s: its image holds only what changed in its file system since a migration's pre-copy, which this host does not have", ErrIncompatible, path.Join(m.Root, c.Path))
		}
		if d := pre.Lower(r.Lower); d != "" && r.LowerEntry == "" {
			if _, err := cache.Adopt(r.Lower, d); err != nil {
				return nil, err
			}
		}
	}
	if err := MissingLowers(t, m); err != nil {
		return nil, err
	}
	lowers := map[int]string{}
	for i, c := range m.Containers {
		r := c.Rootfs
		if r == nil || c.Empty {
			continue
		}
		d, err := cache.Lookup(r.Lower)
		if err != nil {
			f, err := os.Open(filepath.Join(dir, r.LowerEntry))
			if err != nil {
				return nil, err
			}
			d, err = cache.Import(r.Lower, bufio.NewReaderSize(f, 1<<20))
			f.Close()
			if err != nil {
				return nil, err
			}
		}
		lowers[i] = d
	}
	return lowers, nil
}

// prepareRootfs rebuilds a restored --rootfs container's root on this
// host: its upper from the image, its init's executable among this host's,
// and the overlay mounted where CRIU takes it from (unmount it with the
// returned layout's Unmount once CRIU is done).
//
// An upper that is a delta (a migration's) is applied over the upper its
// pre-copy left in staging, moved into place first.
func prepareRootfs(t *nstree.Tree, dir string, c images.Container, n *nstree.Node, pre *rootfs.PreCopied) (rootfs.Layout, error) {
	l := t.RootfsLayout(&n.Config)
	if err := l.Prepare(); err != nil {
		return l, err
	}
	f, err := os.Open(filepath.Join(dir, c.Rootfs.Upper))
	if err != nil {
		return l, err
	}
	defer f.Close()
	read := rootfs.ReadLayer
	if c.Rootfs.UpperDelta {
		if err := rootfs.MoveTree(pre.Uppers[c.Path], l.Upper); err != nil {
			return l, fmt.Errorf("%s: pre-copied upper layer: %w", n.Path, err)
		}
		read = func(r io.Reader, dir string) (rootfs.LayerStats, error) {
			return rootfs.ApplyDelta(r, dir, rootfs.Limits{})
		}
	}
	if _, err := read(bufio.NewReaderSize(f, 1<<20), l.Upper); err != nil {
		return l, fmt.Errorf("%s: upper layer: %w", n.Path, err)
	}
	if err := rootfs.InstallInit(filepath.Join(dir, c.Rootfs.Init), t.BinDir); err != nil {
		return l, fmt.Errorf("%s: %w", n.Path, err)
	}
	if err := l.Mount(); err != nil {
		return l, fmt.Errorf("%s: %w", n.Path, err)
	}
	return l, nil
}

// rootfsOpts makes CRIU restore a --rootfs container on its rebuilt root,
// with this host's state and bin directories bound where the container
// had the source's.
func rootfsOpts(t *nstree.Tree, opts *rpc.CriuOpts, l rootfs.Layout) {
	opts.Root = proto.String(l.Merged)
	opts.ExtMnt = []*rpc.ExtMountMap{
		{Key: proto.String(rootfs.ExtState), Val: proto.String(t.StateDir)},
		{Key: proto.String(rootfs.ExtBin), Val: proto.String(t.BinDir)},
	}
}
