package nstree

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/freeze"
)

// makeCgroups creates the node's cgroup directory and its ".tasks" leaf,
// and the same in each v1 controller hierarchy the limits use (mirrors).
// A mirror that cannot be made (a read-only hierarchy) is left out: then
// limits cannot be set there (Apply fails) and the node has none.
func makeCgroups(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, TasksLeaf), 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	for _, m := range mirrors(dir) {
		_ = os.MkdirAll(filepath.Join(m, TasksLeaf), 0o755)
	}
	return nil
}

// removeCgroups removes dir and everything below it, deepest first, and
// its mirrors in the v1 controller hierarchies. Cgroup directories can only
// be removed once empty of processes; it waits a little for exiting
// processes to leave.
func removeCgroups(dir string) error {
	for _, d := range append([]string{dir}, mirrors(dir)...) {
		if err := removeCgroupTree(d); err != nil {
			return err
		}
	}
	return nil
}

func removeCgroupTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove cgroup: %w", err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for try := 0; try < 200; try++ {
			err = unix.Rmdir(dirs[i])
			if err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			if !errors.Is(err, unix.EBUSY) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
		}
	}
	return nil
}

// Procs lists the host pids in one cgroup directory (not below it).
func Procs(cgroupDir string) ([]int, error) {
	if inChildPidNS() {
		return scanProcs(cgroupDir)
	}
	b, err := os.ReadFile(filepath.Join(cgroupDir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// inChildPidNS reports whether cr runs inside a container's pid namespace
// while seeing the host's /proc: there, cgroup.procs lists only the pids
// of its own namespace, which hides sibling containers.
var inChildPidNS = sync.OnceValue(func() bool {
	self, err := os.Readlink("/proc/self")
	return err == nil && self != strconv.Itoa(os.Getpid())
})

// scanProcs finds the processes of a cgroup through /proc, which lists
// every host process whatever the reader's pid namespace.
func scanProcs(cgroupDir string) ([]int, error) {
	if _, err := os.Stat(cgroupDir); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			parts := strings.SplitN(l, ":", 3)
			if len(parts) == 3 && (parts[1] == "" || strings.Contains(","+parts[1]+",", ",freezer,")) {
				parts[2] = resolveOwnCgroup(parts[2]) // the line of cr's hierarchy
			}
			if len(parts) == 3 && parts[2] != "/" && strings.HasSuffix(cgroupDir, parts[2]) && isCgroupMount(strings.TrimSuffix(cgroupDir, parts[2])) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

func isCgroupMount(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && (st.Type == unix.CGROUP2_SUPER_MAGIC || st.Type == unix.CGROUP_SUPER_MAGIC) &&
		unix.Access(filepath.Join(dir, "cgroup.procs"), unix.R_OK) == nil && isMountRoot(dir)
}

// isMountRoot reports whether dir is the root of its cgroup hierarchy.
func isMountRoot(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cgroup.controllers"))
	if err == nil {
		_, err2 := os.Stat(filepath.Join(dir, "cgroup.events")) // absent at a v2 root only
		return err2 != nil
	}
	_, err = os.Stat(filepath.Join(dir, "release_agent")) // v1 roots only
	return err == nil
}

// SubtreeProcs lists the host pids of every leaf under the node's cgroup.
func SubtreeProcs(n *Node) []int {
	var all []int
	n.Walk(func(m *Node) {
		p, _ := Procs(m.Leaf())
		all = append(all, p...)
	})
	return all
}

// JoinCgroup moves the calling process (all its threads) into dir.
func JoinCgroup(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0); err != nil {
		return fmt.Errorf("join cgroup %s: %w", dir, err)
	}
	return nil
}

// Freezer returns the freezer of the node's whole subtree.
func (n *Node) Freezer() (freeze.Freezer, error) { return freeze.New(n.Cgroup) }

// LeafFreezer returns the freezer of the node's own processes only.
func (n *Node) LeafFreezer() (freeze.Freezer, error) { return freeze.New(n.Leaf()) }

// State is a node's live state: "running", "frozen", "freezing" or "empty".
// A node whose subtree is frozen (by itself or an ancestor) is frozen
// whether or not it has processes of its own; otherwise a node without
// processes is empty, and one whose own leaf is frozen (as a checkpoint
// leaves it) is frozen.
func (n *Node) State() string {
	if f, err := n.Freezer(); err == nil {
		switch s, _ := f.State(); s {
		case freeze.Frozen:
			return "frozen"
		case freeze.Freezing:
			return "freezing"
		}
	}
	pids, _ := Procs(n.Leaf())
	if len(pids) == 0 {
		return "empty"
	}
	f, err := n.LeafFreezer()
	if err != nil {
		return "running"
	}
	switch s, _ := f.State(); s {
	case freeze.Frozen:
		return "frozen"
	case freeze.Freezing:
		return "freezing"
	}
	return "running"
}

// ErrUnreachable: a process is in a pid namespace the caller cannot
// signal (a sibling container's, when cr runs inside a container).
var ErrUnreachable = errors.New("process not reachable from this pid namespace")

// signalAll sends sig to every pid through a pidfd, so that a pid read
// from /proc is never taken for another process of the caller's pid
// namespace. Processes that are gone are skipped; it returns how many
// could not be reached.
func signalAll(pids []int, sig syscall.Signal) (unreachable int) {
	for _, p := range pids {
		fd, err := unix.Open("/proc/"+strconv.Itoa(p), unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // gone
		}
		err = unix.PidfdSendSignal(fd, sig, nil, 0)
		unix.Close(fd)
		if err == unix.EINVAL || err == unix.EPERM {
			unreachable++
		}
	}
	return unreachable
}

// killCgroup kills every process in the cgroup subtree at dir: with
// cgroup.kill where the kernel has it (v2), else by signalling each pid
// until none is left.
func killCgroup(dir string) {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err == nil {
		return
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			pids, _ := Procs(p)
			signalAll(pids, unix.SIGKILL)
		}
		return nil
	})
}

// waitEmpty waits until no process is left in any leaf of the subtree.
func waitEmpty(n *Node, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if len(SubtreeProcs(n)) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
