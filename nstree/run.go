package nstree

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/limits"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/rootfs"
)

// RootfsLayout is where the overlay of a --rootfs container lives: its
// upper and work directories are in its node's state directory, and go
// with it.
func (t *Tree) RootfsLayout(c *Config) rootfs.Layout {
	return rootfs.NodeLayout(c.Rootfs, t.nodeDir(c.ID))
}

// RunOptions say what job to start and how.
type RunOptions struct {
	Path    string   // absolute host path of the new container; "" = a generated name under Under
	Under   string   // where a generated name goes (the viewer's root)
	Command []string // the job
	Cwd     string
	Env     []string
	Mount   bool // own mount namespace (with its own /proc)
	Net     bool // own network namespace (only lo, unless Bridge)
	// Bridge, if set, puts the container on this bridge network, at IP
	// (or the next free address), with outbound NAT if NAT is set.
	Bridge  *network.Config
	IP      netip.Addr
	NAT     bool
	Publish []network.Port // with Bridge
	OnEmpty string
	// OnEmptyExec is run by the init when the container becomes empty.
	OnEmptyExec string
	Until       string        // UntilJob (default) or UntilEmpty
	Limits      limits.Limits // for the new node's subtree, set before the job starts
	// Rootfs, an absolute host path, is the read-only lower of the
	// container's root (an overlay with an upper of its own): see package
	// rootfs. It implies Mount; Cwd is then a path inside it.
	Rootfs string
}

// InitArg is argv[1] of the container init: main dispatches on it before
// any CLI parsing, so the init stays small and fast.
const InitArg = "__cr_init"

// Run creates the container (and any missing ancestors) and starts its init,
// which starts the job. It returns the new node's absolute path once the job
// has been exec'd; on any error nothing it created is left.
func (t *Tree) Run(o RunOptions) (string, error) {
	if len(o.Command) == 0 {
		return "", errors.New("no command given")
	}
	if o.OnEmpty == "" {
		o.OnEmpty = OnEmptyDelete
	}
	if !ValidOnEmpty(o.OnEmpty) {
		return "", fmt.Errorf("invalid --on-empty %q (want delete, keep or notify)", o.OnEmpty)
	}
	if o.Until == "" {
		o.Until = UntilJob
	}
	if o.Until != UntilJob && o.Until != UntilEmpty {
		return "", fmt.Errorf("invalid --until %q (want job or empty)", o.Until)
	}
	if o.Rootfs != "" {
		if err := rootfs.CheckLower(o.Rootfs); err != nil {
			return "", err
		}
		if !filepath.IsAbs(t.StateDir) || !filepath.IsAbs(t.BinDir) {
			return "", errors.New("--rootfs needs absolute CR_STATE_DIR and CR_BIN_DIR")
		}
		o.Mount = true
	}
	exe, err := t.initBinary()
	if err != nil {
		return "", err
	}
	if o.Rootfs != "" {
		if err := rootfs.CheckStatic(exe); err != nil {
			return "", err
		}
	}
	unlock, err := t.Lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	f, err := t.Load()
	if err != nil {
		return "", err
	}
	if o.Path == "" {
		o.Path = generatedName(f, o.Under)
	}
	if _, ok := f.ByPath[o.Path]; ok {
		return "", fmt.Errorf("%w: %s", ErrExists, o.Path)
	}
	created, node, err := t.createNodes(f, o.Path, o.OnEmpty)
	if err != nil {
		return "", err
	}
	var ep *network.Endpoint
	undo := func() {
		if ep != nil {
			t.DetachNetwork(node, *o.Bridge, ep)
		}
		t.removeCreated(created)
	}
	node.Command, node.Cwd, node.Env, node.Until, node.OnEmptyExec = o.Command, o.Cwd, o.Env, o.Until, o.OnEmptyExec
	node.Namespaces = []string{"pid", "ipc", "uts"}
	if o.Mount {
		node.Namespaces = append(node.Namespaces, "mnt")
	}
	if o.Net || o.Bridge != nil {
		node.Namespaces = append(node.Namespaces, "net")
	}
	if o.Bridge != nil {
		if ep, err = t.AttachNetwork(node, *o.Bridge, o.IP, true); err != nil {
			undo()
			return "", err
		}
		if o.NAT {
			if err := o.Bridge.EnsureNAT(); err != nil {
				undo()
				return "", err
			}
		}
		if err := t.PublishPorts(node, *o.Bridge, o.Publish); err != nil {
			undo()
			return "", err
		}
	}
	if err := t.applyLimits(node, o.Limits); err != nil {
		undo()
		return "", err
	}
	node.Limits = o.Limits.Map()
	if o.Rootfs != "" {
		node.Rootfs = o.Rootfs
		if err := t.RootfsLayout(&node.Config).Prepare(); err != nil {
			undo()
			return "", err
		}
	}
	node.Status = "starting"
	if err := t.WriteConfig(&node.Config); err != nil {
		undo()
		return "", err
	}
	pid, err := t.startInit(exe, node, o, ep)
	ep.Close() // the init holds the namespace now, if it started
	if err != nil {
		undo()
		return "", err
	}
	node.InitPid, node.Status = pid, "running"
	if err := t.WriteConfig(&node.Config); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		undo()
		return "", err
	}
	return node.Path, nil
}

// ValidOnEmpty reports whether p is an on-empty policy.
func ValidOnEmpty(p string) bool {
	return p == OnEmptyDelete || p == OnEmptyKeep || p == OnEmptyNotify
}

// generatedName finds the first free unnamedN under dir.
func generatedName(f *Forest, dir string) string {
	taken := map[string]bool{}
	for _, c := range f.ChildrenOf(dir) {
		taken[c.Name] = true
	}
	for i := 1; ; i++ {
		n := "unnamed" + strconv.Itoa(i)
		if !taken[n] {
			return strings.TrimSuffix(dir, "/") + "/" + n
		}
	}
}

// createNodes creates the node at abs and any missing ancestors (as
// implicit nodes). It returns the nodes it created, outermost first, and
// the new node. The caller holds the lock.
func (t *Tree) createNodes(f *Forest, abs, onEmpty string) ([]*Node, *Node, error) {
	// Every node enters the tree here: whoever computed abs (a command
	// line, an image's manifest, a migration request), it follows the
	// names' rules.
	if err := ValidatePath(abs); err != nil {
		return nil, nil, err
	}
	parts := Split(abs)
	if len(parts) == 0 {
		return nil, nil, fmt.Errorf("%w: the root is not a container", ErrExists)
	}
	var created []*Node
	var parent *Node
	for i := range parts {
		p := Join(parts[:i+1]...)
		if n, ok := f.ByPath[p]; ok {
			parent = n
			continue
		}
		policy := onEmpty
		if i < len(parts)-1 {
			policy = OnEmptyDelete // a node made on demand goes when its last child goes
		}
		n := &Node{Config: Config{ID: NewID(), Name: parts[i], OnEmpty: policy, Created: time.Now().UTC(), Status: "running"}, Path: p}
		if parent != nil {
			n.Config.Parent = parent.ID
			n.Parent = parent
			n.Cgroup = filepath.Join(parent.Cgroup, n.ID)
		} else {
			n.Cgroup = filepath.Join(t.CgroupBase(), n.ID)
		}
		if i < len(parts)-1 {
			n.Implicit = true
		}
		if err := makeCgroups(n.Cgroup); err != nil {
			t.removeCreated(created)
			return nil, nil, err
		}
		created = append(created, n)
		if err := t.tagLeaf(n); err != nil {
			t.removeCreated(created)
			return nil, nil, err
		}
		if err := t.WriteConfig(&n.Config); err != nil {
			t.removeCreated(created)
			return nil, nil, err
		}
		f.ByPath[p], f.ByID[n.ID] = n, n
		parent = n
	}
	return created, parent, nil
}

// removeCreated undoes createNodes.
func (t *Tree) removeCreated(created []*Node) {
	for i := len(created) - 1; i >= 0; i-- {
		killCgroup(created[i].Cgroup)
		_ = removeCgroups(created[i].Cgroup)
		_ = os.RemoveAll(t.nodeDir(created[i].ID))
	}
}

// initBinary returns a content-addressed copy of the running executable:
// the init's executable is mapped into every container and CRIU needs the
// very same file at restore, so it must outlive rebuilds of cr.
func (t *Tree) initBinary() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	if strings.HasPrefix(self, t.BinDir+"/") {
		return self, nil // already running from the copy (e.g. inside a container)
	}
	in, err := os.Open(self)
	if err != nil {
		return "", fmt.Errorf("read own executable: %w", err)
	}
	defer in.Close()
	h := sha256.New()
	if _, err := io.Copy(h, in); err != nil {
		return "", fmt.Errorf("hash own executable: %w", err)
	}
	dst := filepath.Join(t.BinDir, "cr-"+hex.EncodeToString(h.Sum(nil))[:24])
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	if err := installFile(dst, in, h.Sum(nil)); err != nil {
		return "", fmt.Errorf("install init binary: %w", err)
	}
	return dst, nil
}

// installFile copies r into dst, atomically: dst appears only with the whole
// content, synced, and only if that content has the sha256 sum. dst is named
// by its content, so anything less would be reused as if it were complete.
func installFile(dst string, r io.Reader, sum []byte) error {
	dir := filepath.Dir(dst)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".cr-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(tmp, h), r)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got := h.Sum(nil); !bytes.Equal(got, sum) {
		return fmt.Errorf("copy has sha256 %x, expected %x (was the executable replaced meanwhile?)", got, sum)
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// InitConfig is what the init is told on its command line. It stays in the
// init's memory across checkpoint and restore, so it holds nothing that a
// restore elsewhere would make wrong: the init learns its node, the state
// directory and the cgroup hierarchy at run time from its leaf cgroup
// (NodeInfo), which the restoring cr made.
type InitConfig struct {
	Stage       int    // 1: as started by cr run; 2: re-executed in its cgroup namespace
	Leaf        string // leaf cgroup to join (stage 1)
	HierVersion int    // the kind of cgroup hierarchy cr uses (1 or 2)
	Hostname    string
	Mount, Net  bool
	JoinNet     bool // fd 4 is the network namespace to join (stage 1)
	Cwd         string
	Rootfs      string // a rootfs.Spec, "" without --rootfs
	Command     []string
}

func (c InitConfig) args() []string {
	net := strconv.FormatBool(c.Net)
	if c.JoinNet {
		net = "join"
	}
	a := []string{InitArg, strconv.Itoa(c.Stage), c.Leaf, strconv.Itoa(c.HierVersion), c.Hostname,
		strconv.FormatBool(c.Mount), net, c.Cwd, c.Rootfs, "--"}
	return append(a, c.Command...)
}

func parseInitArgs(a []string) (InitConfig, error) {
	if len(a) < 11 || a[0] != InitArg || a[9] != "--" {
		return InitConfig{}, errors.New("bad init arguments")
	}
	st, _ := strconv.Atoi(a[1])
	v, _ := strconv.Atoi(a[3])
	m, _ := strconv.ParseBool(a[5])
	n, _ := strconv.ParseBool(a[6])
	if st < 1 || st > 3 {
		return InitConfig{}, errors.New("bad init arguments")
	}
	return InitConfig{Stage: st, Leaf: a[2], HierVersion: v, Hostname: a[4], Mount: m, Net: n, JoinNet: a[6] == "join", Cwd: a[7], Rootfs: a[8], Command: a[10:]}, nil
}

// startInit starts the container init in new namespaces and waits until it
// has joined its cgroup and exec'd the job (or failed to).
func (t *Tree) startInit(exe string, n *Node, o RunOptions, ep *network.Endpoint) (int, error) {
	ic := InitConfig{Stage: 1, Leaf: n.Leaf(), HierVersion: t.Hier.Version, Hostname: n.Name, Mount: o.Mount, Net: o.Net && ep == nil, JoinNet: ep != nil, Cwd: o.Cwd, Command: o.Command}
	if o.Rootfs != "" {
		ic.Rootfs = rootfs.Spec{Layout: t.RootfsLayout(&n.Config), HostState: t.StateDir, HostBin: t.BinDir}.String()
	}
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer syncR.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		syncW.Close()
		return 0, err
	}
	defer devnull.Close()
	flags := uintptr(unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS)
	if o.Mount {
		flags |= unix.CLONE_NEWNS
	}
	if o.Net && ep == nil {
		flags |= unix.CLONE_NEWNET
	}
	env := o.Env
	if env == nil {
		env = os.Environ()
	}
	dir := o.Cwd
	if dir == "" || o.Rootfs != "" { // the job's cwd is inside the rootfs
		dir = "/"
	}
	files := []*os.File{devnull, devnull, devnull, syncW}
	if ep != nil {
		files = append(files, ep.NS) // fd 4: joined by the init's first stage
	}
	attr := &os.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Cloneflags: flags, Setsid: true},
	}
	// Descriptors cr inherited from its caller (Go opens its own
	// close-on-exec) must not reach the init, nor through it the job: a
	// socket or a file of the caller's would be dumped with the container,
	// or make it undumpable.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		syncW.Close()
		return 0, fmt.Errorf("start container init: %w", err)
	}
	p, err := os.StartProcess(exe, append([]string{"cr-init"}, ic.args()...), attr)
	syncW.Close()
	if err != nil {
		return 0, fmt.Errorf("start container init: %w", err)
	}
	type reply struct {
		line string
		err  error
	}
	ch := make(chan reply, 1)
	go func() {
		l, err := bufio.NewReader(syncR).ReadString('\n')
		ch <- reply{l, err}
	}()
	var r reply
	select {
	case r = <-ch:
	case <-time.After(30 * time.Second):
		r.err = errors.New("timed out waiting for the container init")
	}
	if r.err != nil || !strings.HasPrefix(r.line, "ok") {
		_ = p.Kill()
		_, _ = p.Wait()
		msg := strings.TrimSpace(strings.TrimPrefix(r.line, "error "))
		if msg == "" && r.err != nil {
			msg = r.err.Error()
		}
		return 0, fmt.Errorf("start %s: %s", o.Command[0], msg)
	}
	pid := p.Pid
	// The init outlives us: it is reparented to the host's init (or the
	// nearest subreaper) when we exit.
	_ = p.Release()
	return pid, nil
}
