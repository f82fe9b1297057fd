package nstree

import (
	"fmt"
	"time"
)

// RestoreSpec is one container of an image to recreate: its path relative
// to the image's root ("/" for the root) and its config.
type RestoreSpec struct {
	Rel    string
	Config Config
}

// CreateRestored creates empty nodes for an image's containers under
// target, with fresh ids and cgroups, marked "restoring". The target must
// not exist; its missing ancestors are created as implicit nodes. The
// returned nodes match specs one to one. Specs must list parents first.
func (t *Tree) CreateRestored(target string, specs []RestoreSpec) ([]*Node, error) {
	unlock, err := t.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	f, err := t.Load()
	if err != nil {
		return nil, err
	}
	if _, ok := f.ByPath[target]; ok {
		return nil, fmt.Errorf("%w: %s", ErrExists, target)
	}
	var created []*Node
	out := make([]*Node, len(specs))
	for i, s := range specs {
		abs := target
		if s.Rel != "/" {
			abs = target + s.Rel
		}
		var news []*Node
		var n *Node
		news, n, err = t.createNodes(f, abs, orDefault(s.Config.OnEmpty))
		created = append(created, news...)
		if err != nil {
			t.removeCreated(created)
			return nil, err
		}
		if len(news) == 0 || news[len(news)-1] != n {
			t.removeCreated(created)
			return nil, fmt.Errorf("%w: %s", ErrExists, abs)
		}
		c := s.Config
		c.ID, c.Name, c.Parent = n.ID, n.Name, n.Config.Parent
		c.Status = "restoring"
		if c.Created.IsZero() {
			c.Created = time.Now().UTC()
		}
		n.Config = c
		if err := t.WriteConfig(&n.Config); err != nil {
			t.removeCreated(created)
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

func orDefault(p string) string {
	if p == "" {
		return OnEmptyDelete
	}
	return p
}

// RemoveRestored undoes CreateRestored after a failed restore: whatever
// runs in the nodes is killed and the nodes (and implicit ancestors that
// are left empty) are removed.
func (t *Tree) RemoveRestored(nodes []*Node) {
	unlock, err := t.Lock()
	if err != nil {
		return
	}
	defer unlock()
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		killCgroup(n.Cgroup)
		waitEmpty(n, 5*time.Second)
		_ = t.removeNode(n)
	}
	if f, err := t.Load(); err == nil && len(nodes) > 0 {
		if p := nodes[0].Parent; p != nil {
			if pn, ok := f.ByID[p.ID]; ok {
				t.pruneUp(pn)
			}
		}
	}
}
