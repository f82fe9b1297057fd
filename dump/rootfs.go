package dump

import (
	"fmt"
	"slices"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"

	"github.com/cr-dev/cr/hostcheck"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
)

// stageRootfs puts what a --rootfs container's file system needs that
// does not change while it runs into the staging directory, before the
// freeze: its lower's digest (and with WithRootfs the lower itself), and
// its init's executable. The lower is registered in this host's rootfs
// cache, so that an image restores here by digest.
func (c *Checkpoint) stageRootfs(o Options, i int, m *member) error {
	if o.Lazy {
		return fmt.Errorf("%s: a --rootfs container cannot migrate lazily yet; migrate it without --lazy", m.node.Path)
	}
	lower := m.node.Rootfs
	digest, err := rootfs.Digest(lower)
	if err != nil {
		return fmt.Errorf("%s: %w", m.node.Path, err)
	}
	if err := (rootfs.Cache{Dir: c.tree.RootfsCache}).Register(digest, lower); err != nil {
		return err
	}
	r := &images.Rootfs{Lower: digest}
	if o.WithRootfs {
		if r.LowerEntry, err = rootfs.StageLower(c.Dir, digest, lower); err != nil {
			return fmt.Errorf("%s: %w", m.node.Path, err)
		}
	}
	exe, err := rootfs.InitExe(m.node.InitPid, c.tree.BinDir)
	if err != nil {
		return fmt.Errorf("%s: %w", m.node.Path, err)
	}
	if r.Init, err = rootfs.StageInit(c.Dir, exe); err != nil {
		return fmt.Errorf("%s: %w", m.node.Path, err)
	}
	m.ic.Rootfs = r
	return nil
}

// Lowers are the digests of the lowers of the --rootfs containers in the
// subtree at root, each once.
func Lowers(root *nstree.Node) ([]string, error) {
	var out []string
	var err error
	seen := map[string]bool{}
	root.Walk(func(n *nstree.Node) {
		if n.Rootfs == "" || err != nil || seen[n.Rootfs] {
			return
		}
		seen[n.Rootfs] = true
		var d string
		if d, err = rootfs.Digest(n.Rootfs); err == nil {
			out = append(out, d)
		}
	})
	return out, err
}

// HostFiles are the files that the processes of the subtree's containers
// on the host's file system have open or mapped: in the host's mount
// namespace, or with --mount in a copy of it (whose tmpfs contents CRIU
// carries: those are left out), not --rootfs: the host contract of a
// migration (package hostcheck).
func HostFiles(root *nstree.Node) ([]hostcheck.File, error) {
	var host, mountNS []int
	root.Walk(func(n *nstree.Node) {
		if n.Rootfs != "" {
			return
		}
		p, _ := nstree.Procs(n.Leaf())
		if slices.Contains(n.Namespaces, "mnt") {
			mountNS = append(mountNS, p...)
		} else {
			host = append(host, p...)
		}
	})
	return hostcheck.CollectAll(host, mountNS)
}

// stageUpper archives the container's upper layer once CRIU has dumped it,
// the container still frozen: only what changed since its pre-copy, if
// a migration sent it before the freeze.
func (c *Checkpoint) stageUpper(o Options, i int, m *member) error {
	l := c.tree.RootfsLayout(&m.node.Config)
	if snap := o.PreCopied[m.ic.Path]; snap != nil {
		name, st, err := rootfs.StageDelta(c.Dir, i, l.Upper, snap, writingIn(m.node))
		if err != nil {
			return fmt.Errorf("%s: %w", m.node.Path, err)
		}
		r := m.ic.Rootfs
		r.Upper, r.UpperFiles, r.UpperBytes, r.Removed, r.UpperDelta = name, st.Files, st.Bytes, st.Removed, true
		return nil
	}
	name, st, err := rootfs.StageUpper(c.Dir, i, l.Upper)
	if err != nil {
		return fmt.Errorf("%s: %w", m.node.Path, err)
	}
	r := m.ic.Rootfs
	r.Upper, r.UpperFiles, r.UpperBytes, r.Deleted = name, st.Files, st.Bytes, st.Whiteout
	return nil
}

// rootfsExtMounts name cr's own bind mounts in a --rootfs container
// for CRIU: a restore binds that host's directories there.
func rootfsExtMounts() []*rpc.ExtMountMap {
	return []*rpc.ExtMountMap{
		{Key: proto.String(rootfs.StateDir), Val: proto.String(rootfs.ExtState)},
		{Key: proto.String(rootfs.BinDir), Val: proto.String(rootfs.ExtBin)},
	}
}
