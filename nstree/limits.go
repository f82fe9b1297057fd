package nstree

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/limits"
)

// hostLayout is where this host's memory, cpu and pids controllers live.
// On a hybrid or v1 host each node's cgroup has a mirror at the same
// relative path in each v1 controller hierarchy, created, joined and
// removed with it (makeCgroups, joinMirrors, removeCgroups).
var hostLayout = sync.OnceValue(func() limits.Layout {
	h, err := freeze.Detect()
	if err != nil {
		return limits.Layout{}
	}
	l, err := limits.Detect(h)
	if err != nil {
		return limits.Layout{Base: h.Mount}
	}
	return l
})

// Layout is where the tree's resource controllers live.
func (t *Tree) Layout() limits.Layout { return hostLayout() }

// CgroupBases is CgroupBase and its mirrors in the v1 controller
// hierarchies: every directory the tree's cgroups are under.
func (t *Tree) CgroupBases() []string {
	return append([]string{t.CgroupBase()}, mirrors(t.CgroupBase())...)
}

// mirrors returns dir's mirrors in the v1 controller hierarchies.
func mirrors(dir string) []string {
	l := hostLayout()
	rel, ok := l.Rel(dir)
	if !ok || l.Base == "" {
		return nil
	}
	return l.Mirrors(rel)
}

// joinMirrors moves the calling process into the mirrors of the cgroup
// leaf it joined, where they exist.
func joinMirrors(leaf string) error {
	for _, m := range mirrors(leaf) {
		if _, err := os.Stat(m); err != nil {
			continue
		}
		if err := JoinCgroup(m); err != nil {
			return err
		}
	}
	return nil
}

// leaveMirrors moves the calling process to the roots of the v1
// controller hierarchies, so that its mirrors can be removed.
func leaveMirrors() {
	seen := map[string]bool{}
	for _, m := range hostLayout().V1 {
		if !seen[m] {
			seen[m] = true
			_ = JoinCgroup(m)
		}
	}
}

// JoinMirrors puts the process pid into the mirrors of the cgroup leaf.
// A restore calls it for the restored root task at CRIU's
// setup-namespaces notification: the task exists, and CRIU has not yet
// created its cgroup namespace, which it roots at the task's cgroups of
// the moment (criu/cgroup.c prepare_cgns). CRIU restores the cgroups of
// cr's own hierarchy only, so without this the namespace of a hybrid
// host's job would be rooted at CRIU's own v1 cgroups, and the mirrors
// would lie outside it. Every task CRIU forks afterwards inherits them.
func JoinMirrors(leaf string, pid int) error {
	return moveToMirrors(leaf, []int{pid})
}

// MoveToMirrors puts the processes of the cgroup leaf into its mirrors,
// where JoinMirrors has not already put them, so that the limits cover
// every restored process before it resumes.
func MoveToMirrors(leaf string) error {
	if len(mirrors(leaf)) == 0 {
		return nil
	}
	pids, err := Procs(leaf)
	if err != nil {
		return err
	}
	return moveToMirrors(leaf, pids)
}

// PrepareMirrors creates the mirrors of the cgroup leaf where they are
// missing, makes their memory controller take the charges of the tasks
// that move in (v1 memory: the restored pages' charges move with the
// tasks), and returns them: the directories a restored root task joins
// (JoinMirrors, or CRIU's action script for a restore on its command line).
func PrepareMirrors(leaf string) ([]string, error) {
	ms := mirrors(leaf)
	for _, m := range ms {
		if err := os.MkdirAll(m, 0o755); err != nil {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		_ = os.WriteFile(filepath.Join(m, "memory.move_charge_at_immigrate"), []byte("3"), 0)
	}
	return ms, nil
}

func moveToMirrors(leaf string, pids []int) error {
	ms, err := PrepareMirrors(leaf)
	if err != nil {
		return err
	}
	for _, m := range ms {
		for _, p := range pids {
			if err := os.WriteFile(filepath.Join(m, "cgroup.procs"), []byte(fmt.Sprint(p)), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("move %d to %s: %w", p, m, err)
			}
		}
	}
	return nil
}

// NodeLimits is the node's configured limits.
func (n *Node) NodeLimits() limits.Limits {
	l, _ := limits.FromMap(n.Limits)
	return l
}

// checkLimits refuses limits for n that exceed an ancestor's, or that
// would leave one of n's descendants above them.
func checkLimits(n *Node, l limits.Limits) error {
	anc := map[string]limits.Limits{}
	for p := n.Parent; p != nil; p = p.Parent {
		if pl := p.NodeLimits(); !pl.IsZero() {
			anc[p.Path] = pl
		}
	}
	desc := map[string]limits.Limits{}
	for _, c := range n.Children {
		c.Walk(func(m *Node) {
			if ml := m.NodeLimits(); !ml.IsZero() {
				desc[m.Path] = ml
			}
		})
	}
	if err := limits.CheckNested(l, anc); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrLimit, n.Path, err)
	}
	if err := limits.CheckChildren(n.Path, l, desc); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrLimit, n.Path, err)
	}
	return nil
}

// applyLimits writes l to the node's cgroup (and mirrors). It does not
// record them in the config.
func (t *Tree) applyLimits(n *Node, l limits.Limits) error {
	if err := checkLimits(n, l); err != nil {
		return err
	}
	lay := t.Layout()
	if err := lay.Supports(l); err != nil {
		return fmt.Errorf("set limits of %s: %w", n.Path, err)
	}
	if l.IsZero() && n.NodeLimits().IsZero() {
		return nil // nothing to write or reset
	}
	rel, ok := lay.Rel(n.Cgroup)
	if !ok {
		return fmt.Errorf("set limits of %s: cgroup %s is outside %s", n.Path, n.Cgroup, lay.Base)
	}
	if err := lay.Apply(rel, l); err != nil {
		return fmt.Errorf("set limits of %s: %w", n.Path, err)
	}
	return nil
}

// SetLimits sets the limits of the node at abs (assignments on top of its
// current ones, as `cr set` takes them), records them and returns them.
func (t *Tree) SetLimits(abs string, assign []string) (limits.Limits, error) {
	unlock, err := t.Lock()
	if err != nil {
		return limits.Limits{}, err
	}
	defer unlock()
	f, err := t.Load()
	if err != nil {
		return limits.Limits{}, err
	}
	n, ok := f.ByPath[abs]
	if !ok {
		return limits.Limits{}, fmt.Errorf("%w: %s", ErrNotFound, abs)
	}
	l, err := limits.ParseAssignments(n.NodeLimits(), assign)
	if err != nil {
		return limits.Limits{}, fmt.Errorf("%w: %v", ErrLimit, err)
	}
	if err := t.applyLimits(n, l); err != nil {
		return limits.Limits{}, err
	}
	n.Limits = l.Map()
	if err := t.WriteConfig(&n.Config); err != nil {
		return limits.Limits{}, err
	}
	return l, nil
}

// ApplyRestoredLimits writes the limits recorded in the restored nodes'
// configs to their cgroups, parents first.
func (t *Tree) ApplyRestoredLimits(nodes []*Node) error {
	for _, n := range nodes {
		l, err := limits.FromMap(n.Limits)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrLimit, n.Path, err)
		}
		if l.IsZero() {
			continue
		}
		if err := t.applyLimits(n, l); err != nil {
			return err
		}
	}
	return nil
}
