// Package nstree owns the tree of named containers: names and
// viewer-relative paths, the state kept under /run/cr, each container's
// cgroup, and the container init that runs as pid 1 of every container.
//
// A node /a/b is kept in two places that change together under one lock:
// its state directory <state>/c/<id>/ (config.json, log) and its cgroup
// <hier>/<parent>/<id-of-a>/<id-of-b>/, whose leaf ".tasks" holds the node's
// own processes. Cgroups are named by immutable ids because cgroup v2
// directories cannot be renamed; names live only in the configs.
package nstree

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/rootfs"
)

// Defaults for the places cr keeps things; each can be overridden by an
// environment variable so that tests never touch a user's containers.
const (
	DefaultStateDir     = "/run/cr"         // CR_STATE_DIR
	DefaultCgroupParent = "cr"              // CR_CGROUP_PARENT
	DefaultBinDir       = "/var/lib/cr/bin" // CR_BIN_DIR
	TasksLeaf           = ".tasks"          // a node's own processes
	configFile          = "config.json"
	logFile             = "log"
)

// On-empty policies: what happens to a node when its last process is gone
// (an `empty` event is recorded whatever the policy). delete removes it;
// keep leaves it, empty, with its exit status; notify leaves it too, and
// is the policy that asks to be told: cr events shows its `empty` event
// with on_empty "notify", and --on-empty-exec (any policy) runs a command.
const (
	OnEmptyDelete = "delete"
	OnEmptyKeep   = "keep"
	OnEmptyNotify = "notify"
)

// How long a container lives (cr run --until): UntilJob, the default, ends
// it when its job (the first process) exits; UntilEmpty when the last
// process in its pid namespace is gone, so that daemons the job started
// keep it alive. A config or manifest without the field means UntilJob.
const (
	UntilJob   = "job"
	UntilEmpty = "empty"
)

// Tree is the tree of containers of this host.
type Tree struct {
	StateDir     string
	CgroupParent string
	BinDir       string
	Hier         freeze.Hierarchy
	// RootfsCache holds the lower layers of --rootfs containers by
	// digest (rootfs.Cache).
	RootfsCache string
}

// Open finds the cgroup hierarchy and the state directory. It does not
// create anything.
func Open() (*Tree, error) {
	h, err := freeze.Detect()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoCgroups, err)
	}
	t := &Tree{
		StateDir:     envOr("CR_STATE_DIR", DefaultStateDir),
		CgroupParent: envOr("CR_CGROUP_PARENT", DefaultCgroupParent),
		BinDir:       envOr("CR_BIN_DIR", DefaultBinDir),
		RootfsCache:  envOr("CR_ROOTFS_CACHE", rootfs.DefaultCache),
		Hier:         h,
	}
	if strings.ContainsAny(t.CgroupParent, "/\x00") || t.CgroupParent == "" || t.CgroupParent[0] == '.' {
		return nil, fmt.Errorf("invalid CR_CGROUP_PARENT %q", t.CgroupParent)
	}
	return t, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// RequireRoot fails with ErrNotRoot unless the process is root.
func RequireRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w (cgroups, namespaces and CRIU need it)", ErrNotRoot)
	}
	return nil
}

// CRIUController is how CRIU names the hierarchy cr keeps containers in:
// "" for cgroup v2 (its /proc/PID/cgroup line is "0::/path"), "freezer" for
// the v1 freezer.
func (t *Tree) CRIUController() string {
	if t.Hier.Version == 1 {
		return "freezer"
	}
	return ""
}

// CgroupBase is the cgroup directory all containers live under.
func (t *Tree) CgroupBase() string { return filepath.Join(t.Hier.Mount, t.CgroupParent) }

func (t *Tree) containersDir() string    { return filepath.Join(t.StateDir, "c") }
func (t *Tree) nodeDir(id string) string { return filepath.Join(t.containersDir(), id) }

// LogPath is the file a container's output is captured in.
func (t *Tree) LogPath(id string) string { return filepath.Join(t.nodeDir(id), logFile) }

// Config is what cr knows of a container, kept in <state>/c/<id>/config.json.
type Config struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	Parent     string   `json:"parent,omitempty"` // parent's id; "" at the top
	Command    []string `json:"command,omitempty"`
	Cwd        string   `json:"cwd,omitempty"`
	Env        []string `json:"env,omitempty"`
	Namespaces []string `json:"namespaces,omitempty"`
	OnEmpty    string   `json:"on_empty"`
	// OnEmptyExec is a shell command the init runs once when the
	// container becomes empty (runEmptyExec).
	OnEmptyExec string    `json:"on_empty_exec,omitempty"`
	Until       string    `json:"until,omitempty"`    // UntilJob ("" too) or UntilEmpty
	Implicit    bool      `json:"implicit,omitempty"` // created on demand as an intermediate node; has no job
	Created     time.Time `json:"created"`
	InitPid     int       `json:"init_pid,omitempty"` // host pid of the container init
	Status      string    `json:"status"`             // "starting", "running", "exited", "restoring"
	ExitCode    *int      `json:"exit_code,omitempty"`
	Exited      time.Time `json:"exited,omitzero"`
	Restored    time.Time `json:"restored,omitzero"` // when it was last restored from an image
	// Limits are the node's resource limits by name (limits.Limits.Map),
	// for its whole subtree.
	Limits map[string]string `json:"limits,omitempty"`
	// Rootfs is the lower of a --rootfs container's root (a host path).
	Rootfs string `json:"rootfs,omitempty"`
	// Network is the container's bridge network (cr run --net bridge).
	Network *NetInfo `json:"network,omitempty"`
}

// Node is a container in a loaded tree.
type Node struct {
	Config
	Path     string // absolute host path, "/a/b"
	Cgroup   string // the node's cgroup directory
	Parent   *Node
	Children []*Node // sorted by name
}

// Leaf is the cgroup of the node's own processes.
func (n *Node) Leaf() string { return filepath.Join(n.Cgroup, TasksLeaf) }

// Walk visits n and its descendants, parents first.
func (n *Node) Walk(f func(*Node)) {
	f(n)
	for _, c := range n.Children {
		c.Walk(f)
	}
}

// Forest is the whole tree as loaded at one moment.
type Forest struct {
	Top    []*Node // nodes without a parent, sorted by name
	ByPath map[string]*Node
	ByID   map[string]*Node
}

// Load reads every container's config and builds the tree. Configs whose
// parent is missing (a crash in the middle of a removal) are ignored.
func (t *Tree) Load() (*Forest, error) {
	f := &Forest{ByPath: map[string]*Node{}, ByID: map[string]*Node{}}
	ents, err := os.ReadDir(t.containersDir())
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read container state: %w", err)
	}
	for _, e := range ents {
		c, err := t.readConfig(e.Name())
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // being created or removed
			}
			return nil, err
		}
		f.ByID[c.ID] = &Node{Config: *c}
	}
	var link func(n *Node, seen int) bool
	link = func(n *Node, seen int) bool {
		if n.Path != "" {
			return true
		}
		if seen > len(f.ByID) {
			return false // a cycle: never produced by cr
		}
		if n.Config.Parent == "" {
			n.Path = Join(n.Name)
			n.Cgroup = filepath.Join(t.CgroupBase(), n.ID)
			f.Top = append(f.Top, n)
			return true
		}
		p, ok := f.ByID[n.Config.Parent]
		if !ok || !link(p, seen+1) {
			return false
		}
		n.Parent = p
		n.Path = p.Path + "/" + n.Name
		n.Cgroup = filepath.Join(p.Cgroup, n.ID)
		p.Children = append(p.Children, n)
		return true
	}
	for id, n := range f.ByID {
		if !link(n, 0) {
			delete(f.ByID, id)
			continue
		}
	}
	for _, n := range f.ByID {
		if n.Path != "" {
			f.ByPath[n.Path] = n
		}
	}
	byName := func(s []*Node) {
		sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	}
	byName(f.Top)
	for _, n := range f.ByID {
		byName(n.Children)
	}
	return f, nil
}

// Lookup finds the node at an absolute host path.
func (f *Forest) Lookup(abs string) (*Node, error) {
	n, ok := f.ByPath[abs]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, abs)
	}
	return n, nil
}

// ChildrenOf lists the nodes directly under abs ("/" for the top).
func (f *Forest) ChildrenOf(abs string) []*Node {
	if abs == "/" {
		return f.Top
	}
	if n, ok := f.ByPath[abs]; ok {
		return n.Children
	}
	return nil
}

func (t *Tree) readConfig(id string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(t.nodeDir(id), configFile))
	if err != nil {
		return nil, err
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("read config of %s: %w", id, err)
	}
	return &c, nil
}

// WriteConfig replaces a container's config atomically.
func (t *Tree) WriteConfig(c *Config) error {
	dir := t.nodeDir(c.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".config.tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, configFile)); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// UpdateConfig applies f to the current config of id under the tree lock.
func (t *Tree) UpdateConfig(id string, f func(*Config)) error {
	unlock, err := t.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	c, err := t.readConfig(id)
	if err != nil {
		return err
	}
	f(c)
	return t.WriteConfig(c)
}

// NewID returns a fresh container id.
func NewID() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "c" + hex.EncodeToString(b)
}

// Lock takes the tree's lock (flock on <state>/lock), waiting for it.
func (t *Tree) Lock() (unlock func(), err error) {
	if err := os.MkdirAll(t.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("lock tree: %w", err)
	}
	fd, err := unix.Open(filepath.Join(t.StateDir, "lock"), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock tree: %w", err)
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock tree: %w", err)
	}
	return func() { unix.Close(fd) }, nil
}

// Viewer finds the container the calling process runs in, from its own
// cgroup: a process inside /vserver1 sees /vserver1 as its root. Inside a
// container's cgroup namespace its cgroup reads as "/"; the root of that
// namespace, the container's leaf, says which node it is (NodeInfo).
func (t *Tree) Viewer(f *Forest) (Viewer, error) {
	var id string
	if info, ok := selfNodeInfo(); ok {
		if info.CgroupParent == t.CgroupParent {
			id = info.ID
		}
	} else {
		b, err := os.ReadFile("/proc/self/cgroup")
		if err != nil {
			return Viewer{}, fmt.Errorf("find own container: %w", err)
		}
		id = t.containerOfCgroup(t.cgroupOf(string(b)))
	}
	if id == "" {
		return HostViewer, nil
	}
	n, ok := f.ByID[id]
	if !ok {
		// Our container's node is gone (being removed): see nothing.
		return Viewer{}, fmt.Errorf("%w: this process's container %s no longer exists", ErrOutside, id)
	}
	return Viewer{Root: n.Path}, nil
}

// cgroupOf picks this tree's hierarchy's line out of /proc/PID/cgroup.
func (t *Tree) cgroupOf(procCgroup string) string {
	for _, line := range strings.Split(procCgroup, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if t.Hier.Version == 2 && parts[0] == "0" && parts[1] == "" {
			return parts[2]
		}
		if t.Hier.Version == 1 {
			for _, c := range strings.Split(parts[1], ",") {
				if c == "freezer" {
					return parts[2]
				}
			}
		}
	}
	return ""
}

// containerOfCgroup returns the id of the container whose leaf is cg (a
// path relative to the hierarchy's mount), or "".
func (t *Tree) containerOfCgroup(cg string) string {
	prefix := "/" + t.CgroupParent + "/"
	if !strings.HasPrefix(cg, prefix) {
		return ""
	}
	parts := strings.Split(strings.TrimPrefix(cg, prefix), "/")
	if len(parts) >= 2 && parts[len(parts)-1] == TasksLeaf {
		return parts[len(parts)-2]
	}
	if len(parts) >= 1 && parts[len(parts)-1] != "" {
		return parts[len(parts)-1]
	}
	return ""
}
