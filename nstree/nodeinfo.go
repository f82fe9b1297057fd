package nstree

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/freeze"
)

// nodeXattr is the extended attribute on every node's leaf cgroup that says
// which node it is and where that node's tree keeps its state. The cgroup
// is the one thing a restore connects to the restoring host's settings
// (CRIU puts the tasks into the leaf cr made for them), so a container
// init, and a cr run inside a container, learn from it at run time where
// their state is, rather than from anything baked into their memory.
const nodeXattr = "trusted.cr.node"

// NodeInfo is the content of nodeXattr.
type NodeInfo struct {
	ID           string `json:"id"`
	StateDir     string `json:"state_dir"`
	CgroupParent string `json:"cgroup_parent"`
	HierMount    string `json:"hier_mount"`
	HierVersion  int    `json:"hier_version"`
	Leaf         string `json:"leaf"` // the leaf cgroup, relative to HierMount
}

// Tree is the tree the node belongs to.
func (i NodeInfo) Tree() *Tree {
	return &Tree{StateDir: i.StateDir, CgroupParent: i.CgroupParent, Hier: freeze.Hierarchy{Mount: i.HierMount, Version: i.HierVersion}}
}

// tagLeaf writes the node's info on its leaf cgroup.
func (t *Tree) tagLeaf(n *Node) error {
	b, err := json.Marshal(NodeInfo{ID: n.ID, StateDir: t.StateDir, CgroupParent: t.CgroupParent,
		HierMount: t.Hier.Mount, HierVersion: t.Hier.Version, Leaf: strings.TrimPrefix(n.Leaf(), t.Hier.Mount)})
	if err != nil {
		return err
	}
	if err := unix.Setxattr(n.Leaf(), nodeXattr, b, 0); err != nil {
		return fmt.Errorf("tag cgroup %s: %w", n.Leaf(), err)
	}
	return nil
}

// ownNodeInfo reads the node info on the root of the caller's cgroup
// namespace: a cr container's init and everything in the container have
// their leaf cgroup as that root. It mounts the hierarchy (detached, never
// attached to any mount namespace: the root of such a mount is the root of
// the caller's cgroup namespace) just long enough to read the attribute.
// ok is false outside a cr container's cgroup namespace.
func ownNodeInfo(version int) (NodeInfo, bool) {
	var tries [][2]string // fs type, flag
	switch version {
	case 1:
		tries = [][2]string{{"cgroup", "freezer"}}
	case 2:
		tries = [][2]string{{"cgroup2", ""}}
	default:
		tries = [][2]string{{"cgroup2", ""}, {"cgroup", "freezer"}}
	}
	for _, tr := range tries {
		b, err := rootXattr(tr[0], tr[1])
		if err != nil {
			continue
		}
		var info NodeInfo
		if json.Unmarshal(b, &info) == nil && info.ID != "" {
			return info, true
		}
	}
	return NodeInfo{}, false
}

func rootXattr(fstype, flag string) ([]byte, error) {
	fs, err := unix.Fsopen(fstype, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fs)
	if flag != "" {
		if err := unix.FsconfigSetFlag(fs, flag); err != nil {
			return nil, err
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return nil, err
	}
	mfd, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOEXEC|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV)
	if err != nil {
		return nil, err
	}
	defer unix.Close(mfd)
	root, err := unix.Openat(mfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0) // mfd is O_PATH
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	buf := make([]byte, 4096)
	n, err := unix.Fgetxattr(root, nodeXattr, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// selfNodeInfo is ownNodeInfo of this process, read once.
var selfNodeInfo = sync.OnceValues(func() (NodeInfo, bool) { return ownNodeInfo(0) })

// resolveOwnCgroup turns a path of /proc/PID/cgroup, as this process sees
// it (relative to its cgroup namespace's root), into one relative to the
// hierarchy's root. Inside a container's cgroup namespace the root is the
// container's leaf; elsewhere the path is already the host's.
func resolveOwnCgroup(p string) string {
	if info, ok := selfNodeInfo(); ok {
		return path.Join(info.Leaf, p)
	}
	return p
}

// scopeCgroupMounts replaces, in the caller's (private) mount namespace,
// every cgroup file system mounted there by a read-only mount of the same
// hierarchy made from the caller's cgroup namespace: such a mount shows
// only the subtree of the namespace's root, the container's leaf. What the
// host had mounted there stays out of reach of the container's processes:
// they can neither move into a cgroup outside their own, nor change one.
func scopeCgroupMounts() error {
	all, err := freeze.ReadMountinfo(freeze.DefaultMountinfo)
	if err != nil {
		return err
	}
	var mnts []freeze.Mount
	for _, m := range all {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			mnts = append(mnts, m)
		}
	}
	for i := len(mnts) - 1; i >= 0; i-- {
		m := mnts[i]
		if err := unix.Unmount(m.Point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", m.Point, err)
		}
	}
	for _, m := range mnts {
		var opts []string
		for _, o := range strings.Split(m.SuperOpts, ",") {
			if o != "rw" && o != "ro" {
				opts = append(opts, o)
			}
		}
		if err := unix.Mount(m.FSType, m.Point, m.FSType, unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, strings.Join(opts, ",")); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Point, err)
		}
	}
	return nil
}

// unmountNamespaceFiles unmounts, in the caller's (private) mount
// namespace, the namespace files the host had bind-mounted (the nsfs
// mounts that `ip netns add` leaves under /run/netns): CRIU cannot dump a
// mount namespace holding them ("doesn't have a proper root mount"), and
// the container has no business with the host's namespaces.
func unmountNamespaceFiles() error {
	all, err := freeze.ReadMountinfo(freeze.DefaultMountinfo)
	if err != nil {
		return err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].FSType != "nsfs" {
			continue
		}
		if err := unix.Unmount(all[i].Point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", all[i].Point, err)
		}
	}
	return nil
}
