package nstree

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/freeze"
)

// Freeze freezes the node's whole subtree atomically (one write to the
// subtree's cgroup) and returns once every task is frozen.
func (t *Tree) Freeze(ctx context.Context, n *Node) error {
	f, err := n.Freezer()
	if err != nil {
		return err
	}
	if err := f.Freeze(ctx); err != nil {
		return fmt.Errorf("freeze %s: %w", n.Path, err)
	}
	return nil
}

// Thaw thaws the node's subtree, and any container below it that was
// frozen on its own (by a checkpoint that failed half-way, say).
func (t *Tree) Thaw(ctx context.Context, n *Node) error {
	var first error
	n.Walk(func(m *Node) {
		for _, dir := range []string{m.Cgroup, m.Leaf()} {
			f, err := freeze.New(dir)
			if err != nil {
				continue
			}
			if s, _ := f.State(); s == freeze.Thawed {
				continue
			}
			if err := f.Thaw(ctx); err != nil && first == nil {
				first = fmt.Errorf("thaw %s: %w", n.Path, err)
			}
		}
	})
	return first
}

// KillOptions say how to end a subtree.
type KillOptions struct {
	Signal syscall.Signal // 0: terminate, wait Grace, kill, remove the nodes
	Grace  time.Duration
}

// Kill signals every process of the subtree. With no signal given it is the
// `rm -rf` of the tree: SIGTERM, a grace period, SIGKILL, and the nodes
// removed. A frozen subtree cannot act on SIGTERM, so it is killed at once.
func (t *Tree) Kill(ctx context.Context, n *Node, o KillOptions) error {
	if o.Signal != 0 {
		pids := SubtreeProcs(n)
		if k := signalAll(pids, o.Signal); k > 0 {
			return fmt.Errorf("signal %s: %w (%d of %d processes; their pid namespace is not below yours)", n.Path, ErrUnreachable, k, len(pids))
		}
		if o.Signal == unix.SIGKILL || o.Signal == unix.SIGCONT {
			_ = t.Thaw(ctx, n) // v1: frozen tasks die only once thawed
		}
		return nil
	}
	frozen := false
	n.Walk(func(m *Node) {
		if m.State() == "frozen" {
			frozen = true
		}
	})
	pids := SubtreeProcs(n)
	if !frozen && signalAll(pids, unix.SIGTERM) < len(pids) {
		if o.Grace <= 0 {
			o.Grace = 10 * time.Second
		}
		deadline := time.Now().Add(o.Grace)
		for len(SubtreeProcs(n)) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	killCgroup(n.Cgroup)
	_ = t.Thaw(context.Background(), n)
	if !waitEmpty(n, 10*time.Second) {
		return fmt.Errorf("kill %s: processes survived SIGKILL", n.Path)
	}
	return t.Remove(n.Path)
}

// Remove removes the node at abs and everything under it. Every process
// must be gone already.
func (t *Tree) Remove(abs string) error {
	unlock, err := t.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	f, err := t.Load()
	if err != nil {
		return err
	}
	n, ok := f.ByPath[abs]
	if !ok {
		return nil // already gone (its init removed it)
	}
	var nodes []*Node
	n.Walk(func(m *Node) { nodes = append(nodes, m) })
	for i := len(nodes) - 1; i >= 0; i-- {
		if err := t.removeNode(nodes[i]); err != nil {
			return fmt.Errorf("remove %s: %w", Quote(nodes[i].Path), err)
		}
	}
	if p := n.Parent; p != nil {
		p.Children = slices.DeleteFunc(p.Children, func(c *Node) bool { return c == n })
		t.pruneUp(p)
	}
	return nil
}

// Rename gives the node at old the path new. Only the last name may change:
// cgroup directories are named by id, so a rename touches one config and no
// process moves. Moving a container under another parent would mean moving
// its processes between cgroups, which cr does not do.
func (t *Tree) Rename(oldAbs, newAbs string) error {
	unlock, err := t.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	f, err := t.Load()
	if err != nil {
		return err
	}
	n, err := f.Lookup(oldAbs)
	if err != nil {
		return err
	}
	if err := ValidatePath(newAbs); err != nil {
		return err
	}
	if _, ok := f.ByPath[newAbs]; ok {
		return fmt.Errorf("%w: %s", ErrExists, newAbs)
	}
	op, np := Split(oldAbs), Split(newAbs)
	if len(op) != len(np) || Join(op[:len(op)-1]...) != Join(np[:len(np)-1]...) {
		return fmt.Errorf("rename %s to %s: only the last name can change (moving under another parent is not supported)", oldAbs, newAbs)
	}
	n.Name = np[len(np)-1]
	return t.WriteConfig(&n.Config)
}

// Enter runs cmd inside the node's namespaces and cgroup, attached to the
// caller's terminal, and returns its exit status.
func (t *Tree) Enter(n *Node, cmd []string) (int, error) {
	if n.InitPid == 0 || n.State() == "empty" {
		return 0, fmt.Errorf("%w: %s has no running processes", ErrState, n.Path)
	}
	if n.State() != "running" {
		by := FrozenBy(n)
		return 0, fmt.Errorf("%w: %s is frozen: thaw %s first", ErrState, n.Path, by)
	}
	if len(cmd) == 0 {
		cmd = []string{"/bin/sh"}
	}
	args := []string{"--target", strconv.Itoa(n.InitPid), "--pid", "--ipc", "--uts"}
	// The container's cgroup namespace (after the shell below joined the
	// leaf, its root): containers made before cr had them have none.
	if own, theirs := nsLink("self", "cgroup"), nsLink(strconv.Itoa(n.InitPid), "cgroup"); own != theirs && theirs != "" {
		args = append(args, "--cgroup")
	}
	for _, ns := range n.Namespaces {
		switch ns {
		case "mnt":
			args = append(args, "--mount")
		case "net":
			args = append(args, "--net")
		}
	}
	if n.Cwd != "" {
		args = append(args, "--wd="+n.Cwd)
	}
	args = append(args, "--")
	// On a terminal only (stdin and stdout): output redirected to a file
	// stays byte for byte, without a pty's line discipline.
	tty := isTerminal(os.Stdin) && isTerminal(os.Stdout)
	if tty {
		// A session of its own inside the container, with the new pty as
		// its controlling terminal (enterTerminal).
		args = append(args, "setsid", "--ctty", "--wait")
	}
	args = append(args, cmd...)
	// The shell joins the container's cgroup, then becomes nsenter, whose
	// child (the command) is born in the container's pid namespace.
	// It joins the mirrors of the leaf in the v1 controller hierarchies too
	// (the limits), listed with the leaf, separated by ":".
	script := `IFS=:; for d in $1; do echo $$ > "$d/cgroup.procs" || exit 125; done; unset IFS; shift; exec nsenter "$@"`
	leaves := n.Leaf()
	for _, m := range mirrors(n.Leaf()) {
		if _, err := os.Stat(m); err == nil {
			leaves += ":" + m
		}
	}
	c := exec.Command("/bin/sh", append([]string{"-c", script, "cr-enter", leaves}, args...)...)
	var err error
	if tty {
		err = enterTerminal(c, os.Stdin)
	} else {
		c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
		err = c.Run()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("enter %s: %w", n.Path, err)
	}
	return 0, nil
}

func nsLink(pid, ns string) string {
	l, _ := os.Readlink("/proc/" + pid + "/ns/" + ns)
	return l
}

// PendingPrune reports whether some node waits for PruneExited.
func (f *Forest) PendingPrune() bool {
	for _, n := range f.ByID {
		if prunable(n) {
			return true
		}
	}
	return false
}

func prunable(n *Node) bool {
	return n.Status == "exited" && n.OnEmpty == OnEmptyDelete && len(n.Children) == 0
}

// PruneExited removes the nodes whose job has exited and whose policy is
// delete, once nothing runs in them. A container's init removes its own
// node when it can; inside a container with its own mount namespace it
// sees no cgroup but its own and cannot, and the next cr that opens the
// tree does it here.
func (t *Tree) PruneExited() {
	unlock, err := t.Lock()
	if err != nil {
		return
	}
	defer unlock()
	f, err := t.Load()
	if err != nil {
		return
	}
	for _, n := range f.ByID {
		if prunable(n) {
			t.pruneUp(n)
		}
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// FrozenBy is the path to thaw for the node at n to run again: the
// highest of n and its ancestors whose cgroup is frozen (n itself when none
// is).
func FrozenBy(n *Node) string {
	by := n.Path
	for m := n; m != nil; m = m.Parent {
		if f, err := m.Freezer(); err == nil {
			if s, _ := f.State(); s != freeze.Thawed {
				by = m.Path
			}
		}
	}
	return by
}
