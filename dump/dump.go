// Package dump checkpoints a subtree of containers: it freezes the subtree
// as one consistent cut, dumps every container through CRIU into a staging
// directory laid out as an image (see docs/image-format.md), and then
// resumes, or ends, the source.
//
// The cut: the subtree's cgroup is frozen in one write, every container's
// own leaf cgroup is then frozen on its own and the subtree thawed, so each
// container stays frozen by its own leaf. CRIU dumps each container with
// freeze_cgroup on that leaf: it finds it frozen, seizes the tasks, thaws,
// dumps, and freezes it again (design fact 4), so no container resumes
// before the last one is dumped.
package dump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
	"github.com/cr-dev/cr/scratch"
)

// Options say how to checkpoint.
type Options struct {
	CRIU         string // CRIU binary
	CRIUVersion  int
	CRVersion    string
	StagingDir   string // parent of the staging directory
	LeaveRunning bool   // thaw the subtree after the dump
	// Lazy dumps for post-copy migration: CRIU keeps the processes'
	// private memory back, and after the images are written serves it
	// on demand through Checkpoint.Pages until the destination has it
	// all. The source stays frozen meanwhile; Finish waits for the pages
	// to be served, Resume ends the serving.
	Lazy bool
	// NoTCPEstablished leaves out CRIU's tcp_established for containers
	// with a network namespace of their own (on by default: their
	// established TCP connections are dumped and restored with them).
	NoTCPEstablished bool
	// Stream dumps through CRIU's image streamer (criu dump --stream):
	// the pages are hashed and compressed as CRIU writes them, as
	// Compression (images.CompressionZstd when empty), and kept
	// compressed outside Dir (Checkpoint.Precompressed), so the only
	// uncompressed images staged are the small ones. The archive must
	// then be written with the same compression.
	Stream      bool
	Compression string
	// Progress, if set, is called about every 200 ms with the bytes of
	// images written so far.
	Progress func(written int64)
	// WithRootfs carries the lower layers of --rootfs containers in the
	// image too (else only their digests).
	WithRootfs bool
	// PreCopied are the snapshots of the uppers a migration sent before
	// the freeze (PreCopy), by the container's path relative to the
	// subtree's root: for those the image carries only what changed
	// since (images.Rootfs.UpperDelta).
	PreCopied map[string]*rootfs.Snapshot
	// Dumped, if set, is called by Take between the dump and the sink;
	// Stored once the sink has the image, before the source is settled.
	Dumped, Stored func(*Checkpoint)

	// pagesTo, set by Take for a StreamSink, takes the pages images of a
	// streamed dump instead of the spill directory.
	pagesTo func(name string, mode uint32) (io.WriteCloser, error)
}

// Checkpoint is a dumped subtree, still frozen (or running again with
// LeaveRunning), with its images staged in Dir.
type Checkpoint struct {
	Dir      string
	Manifest *images.Manifest
	Frozen   time.Duration // how long the source was frozen (so far, when still frozen)
	Dump     time.Duration

	tree       *nstree.Tree
	root       *nstree.Node
	frozenAt   time.Time
	leaves     []freeze.Freezer // frozen by us
	userFrozen []freeze.Freezer // subtree cgroups the user had frozen
	resumed    bool
	pages      []PageLink // lazy dumps serving their pages
	netLock    criubin.NetLock
	downed     []string // host ends of bridge containers' veths taken down by us
	staging    *scratch.Entry
	logs       *scratch.Entry // the lazy dumps' logs, beside staging
	stream     streamState
}

// Prefixes of the staging entries (see package scratch).
const (
	stagingPrefix = "ckpt-"
	logsPrefix    = "ckpt-logs-"
)

// PageLink is a lazy dump's page server: CRIU, still running, holding the
// memory of one container back, reached through Proc.Conn.
type PageLink struct {
	// Container is the container's index in the manifest.
	Container int
	Path      string
	Proc      *criubin.PageProc
}

// Pages returns the page servers of a lazy checkpoint, one per container
// with a job.
func (c *Checkpoint) Pages() []PageLink { return c.pages }

// ErrBusy: another cr is checkpointing the same container.
var ErrBusy = errors.New("another checkpoint of this container is in progress")

// Run checkpoints the subtree at root. On error the subtree is running
// exactly as before (or frozen, if the user had frozen it) and nothing is
// left in the staging area.
func Run(ctx context.Context, t *nstree.Tree, root *nstree.Node, o Options) (*Checkpoint, error) {
	if err := checkAncestors(root); err != nil {
		return nil, err
	}
	if err := checkNetns(root); err != nil {
		return nil, err
	}
	if o.Lazy && o.Stream {
		return nil, errStreamLazy
	}
	unlock, err := lockDump(t, root)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// A staging directory of a checkpoint that was killed is removed here.
	dir, err := scratch.Mkdir(o.StagingDir, stagingPrefix)
	if err != nil {
		return nil, fmt.Errorf("create staging area: %w", err)
	}
	c := &Checkpoint{Dir: dir.Path, staging: dir, tree: t, root: root}
	c.stream.gate = make(chan struct{})
	m, err := c.run(ctx, o)
	close(c.stream.gate) // the compressors of --leave-running may start
	if err != nil {
		c.stream.abort(err)
		c.Resume()
		c.Cleanup()
		return nil, err
	}
	c.Manifest = m
	if o.LeaveRunning {
		c.Resume()
		m.Stats.FrozenMicros = c.Frozen.Microseconds()
	}
	// A source left running runs while its pages are still compressed.
	stop := context.AfterFunc(ctx, func() { c.stream.abort(ctx.Err()) })
	err = c.stream.wait()
	stop()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		c.Resume()
		c.Cleanup()
		return nil, err
	}
	return c, nil
}

// checkAncestors refuses a subtree whose ancestors are frozen: CRIU could
// not thaw the containers to dump them and would hang.
func checkAncestors(root *nstree.Node) error {
	if root.Parent == nil {
		return nil
	}
	if by := nstree.FrozenBy(root.Parent); by != root.Parent.Path || frozen(root.Parent) {
		return fmt.Errorf("%w: %s is frozen: thaw %s first, or checkpoint %s instead", nstree.ErrState, by, by, by)
	}
	return nil
}

func frozen(n *nstree.Node) bool {
	f, err := n.Freezer()
	if err != nil {
		return false
	}
	s, _ := f.State()
	return s != freeze.Thawed
}

// checkNetns refuses containers that share a network namespace other
// than cr's: CRIU would take it for one of the job's own, try to lock it
// with iptables-restore and fail obscurely (or, if it dumped it, a restore
// would make a copy of a namespace the container never owned).
func checkNetns(root *nstree.Node) error {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return nil
	}
	var bad *nstree.Node
	root.Walk(func(n *nstree.Node) {
		if bad != nil || n.InitPid == 0 || slices.Contains(n.Namespaces, "net") {
			return
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", n.InitPid)); err == nil && ns != self {
			bad = n
		}
	})
	if bad != nil {
		return fmt.Errorf("%w: %s shares the network namespace it was started in, and cr runs in another one; run cr from that namespace (nsenter --net=/proc/%d/ns/net cr ...)", nstree.ErrState, bad.Path, bad.InitPid)
	}
	return nil
}

type member struct {
	node *nstree.Node
	ic   images.Container
	dir  string // staging dir of this container ("" for the root: Dir itself)
}

func (c *Checkpoint) run(ctx context.Context, o Options) (*images.Manifest, error) {
	// Plan: which containers have a job to dump, where each goes.
	var members []*member
	n := 0
	c.root.Walk(func(nd *nstree.Node) {
		rel := strings.TrimPrefix(nd.Path, c.root.Path)
		if rel == "" {
			rel = "/"
		}
		ic := images.Container{
			Path: rel, Command: nd.Command, Cwd: nd.Cwd, Env: nd.Env, Namespaces: nd.Namespaces,
			OnEmpty: nd.OnEmpty, OnEmptyExec: nd.OnEmptyExec, Until: nd.Until, Created: nd.Created, InitPid: nd.InitPid,
			Limits: nd.NodeLimits().Map(),
		}
		if nd.Network != nil {
			ic.Network = &images.Network{Mode: nd.Network.Mode, Address: nd.Network.Address, Publish: nd.Network.Publish}
		}
		pids, _ := nstree.Procs(nd.Leaf())
		m := &member{node: nd}
		if len(pids) == 0 || nd.InitPid == 0 {
			ic.Empty = true
		} else if nd == c.root {
			ic.Dir = "checkpoint"
		} else {
			n++
			m.dir = filepath.Join("containers", strconv.Itoa(n))
			ic.Dir = m.dir + "/checkpoint"
		}
		m.ic = ic
		members = append(members, m)
	})
	// The file systems' parts that do not change while the job runs go
	// in before the freeze.
	hasRootfs := false
	for i, m := range members {
		if !m.ic.Empty && m.node.Rootfs != "" {
			hasRootfs = true
			if err := c.stageRootfs(o, i, m); err != nil {
				return nil, err
			}
		}
	}
	// The consistent cut. One container left running needs no cut of ours:
	// CRIU freezes its cgroup, dumps and thaws it by itself, so the job is
	// frozen exactly as long as CRIU needs, and thawed even if cr dies.
	start := time.Now()
	jobs := 0
	for _, m := range members {
		if !m.ic.Empty {
			jobs++
		}
	}
	c.netLock = netLockFor(ctx, o.CRIU, members)
	// An upper layer is copied after CRIU's dump, and must not change
	// before it is: a --rootfs container stays frozen until then.
	selfFreeze := !(o.LeaveRunning && jobs == 1 && !anyFrozen(c.root) && !hasRootfs)
	if selfFreeze {
		if err := c.freeze(ctx, members); err != nil {
			return nil, err
		}
		c.frozenAt = time.Now()
		if !o.LeaveRunning {
			c.unplug(members)
		}
	}
	stopProgress := c.progress(o.Progress)
	defer stopProgress()
	for i, m := range members {
		if m.ic.Empty {
			continue
		}
		m.ic.Processes = processes(m.node)
		var err error
		if o.Lazy {
			// No stats: CRIU writes them once the pages are served.
			err = c.dumpLazy(o, i, m)
		} else if o.Stream {
			m.ic.Dump, err = c.dumpStream(ctx, o, m)
		} else {
			m.ic.Dump, err = c.dumpOne(ctx, o, m)
		}
		if err != nil {
			return nil, err
		}
		if m.ic.Rootfs != nil {
			if err := c.stageUpper(o, i, m); err != nil {
				return nil, err
			}
		}
		if err := c.copyLog(m); err != nil {
			return nil, err
		}
	}
	c.Dump = time.Since(start)
	if !selfFreeze {
		for _, m := range members {
			if m.ic.Dump != nil {
				c.Frozen = time.Duration(m.ic.Dump.FrozenTime) * time.Microsecond
			}
		}
	}
	kernel, arch, cpu := images.HostInfo()
	man := &images.Manifest{
		Format: images.FormatName, Version: images.FormatVersion, Created: time.Now().UTC(),
		CRVersion: o.CRVersion, CRIUVersion: o.CRIUVersion, Kernel: kernel, Arch: arch, CPUFeatures: cpu,
		Root: c.root.Path, Stats: &images.Stats{DumpMicros: c.Dump.Microseconds()},
	}
	for _, m := range members {
		man.Containers = append(man.Containers, m.ic)
		if d := m.ic.Dump; d != nil {
			man.Stats.PagesScanned += int64(d.PagesScanned)
			man.Stats.PagesWritten += int64(d.PagesWritten)
		}
	}
	if len(members) == 1 && !members[0].ic.Empty {
		if err := images.WriteCheckpointctlFiles(c.Dir, man, c.root.Name); err != nil {
			return nil, err
		}
	}
	// Until an archive is written (images.WriteOptions), what is staged.
	man.Stats.RawBytes = c.Bytes()
	return man, nil
}

// netLockFor chooses how CRIU locks the network of the containers that
// have a network namespace of their own ("" when none has: CRIU locks
// nothing then).
func netLockFor(ctx context.Context, criu string, members []*member) criubin.NetLock {
	for _, m := range members {
		if !m.ic.Empty && slices.Contains(m.ic.Namespaces, "net") {
			l, _ := criubin.ChooseNetLock(ctx, criu)
			return l
		}
	}
	return ""
}

// unplug takes down the host end of every bridge container's veth before
// a dump that ends the source: the source's sockets, closed when it is
// killed, then reset no peer, and no peer's packet reaches them
// meanwhile (a peer retransmits until the restored copy answers).
// Resume plugs them in again.
func (c *Checkpoint) unplug(members []*member) {
	for _, m := range members {
		if m.ic.Empty || m.node.Network == nil || m.node.Network.Veth == "" {
			continue
		}
		if network.SetLink(m.node.Network.Veth, false) == nil {
			c.downed = append(c.downed, m.node.Network.Veth)
		}
	}
}

// criuNet adds what CRIU needs for a container with a network namespace
// of its own to the dump options: established TCP connections (unless
// turned off) and, for a bridge container, its namespace as external (cr
// makes a new one with the same address at restore).
func (c *Checkpoint) criuNet(o Options, m *member) (tcp bool, external []string, err error) {
	if !slices.Contains(m.ic.Namespaces, "net") {
		return false, nil, nil
	}
	if m.node.Network != nil {
		ino, err := network.NamespaceOf(m.node.InitPid)
		if err != nil {
			return false, nil, fmt.Errorf("network namespace of %s: %w", m.node.Path, err)
		}
		external = []string{network.CRIUExternal(ino)}
	}
	return !o.NoTCPEstablished, external, nil
}

// freeze makes the cut: the subtree frozen in one write, then each member's
// leaf frozen on its own, then every non-leaf cgroup of the subtree thawed
// (remembering those the user had frozen) so that CRIU can thaw each leaf.
func (c *Checkpoint) freeze(ctx context.Context, members []*member) error {
	sub, err := c.root.Freezer()
	if err != nil {
		return err
	}
	c.root.Walk(func(nd *nstree.Node) {
		if f, err := nd.Freezer(); err == nil {
			if s, _ := f.State(); s == freeze.Frozen && selfFrozen(nd.Cgroup) {
				c.userFrozen = append(c.userFrozen, f)
			}
		}
	})
	fctx, cancel := context.WithTimeout(ctx, freeze.DefaultTimeout)
	defer cancel()
	if err := sub.Freeze(fctx); err != nil {
		return fmt.Errorf("freeze %s: %w", c.root.Path, err)
	}
	for _, m := range members {
		if m.ic.Empty {
			continue
		}
		lf, err := m.node.LeafFreezer()
		if err == nil {
			err = lf.Freeze(fctx)
		}
		if err != nil {
			_ = sub.Thaw(context.Background())
			return fmt.Errorf("freeze %s: %w", m.node.Path, err)
		}
		c.leaves = append(c.leaves, lf)
	}
	var thawErr error
	c.root.Walk(func(nd *nstree.Node) {
		if f, err := nd.Freezer(); err == nil && selfFrozen(nd.Cgroup) {
			if err := f.Thaw(fctx); err != nil && thawErr == nil {
				thawErr = err
			}
		}
	})
	return thawErr
}

// selfFrozen reports whether the cgroup itself (not an ancestor) is set
// to frozen: v2 cgroup.freeze, v1 freezer.self_freezing.
func selfFrozen(dir string) bool {
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze")); err == nil {
		return strings.TrimSpace(string(b)) == "1"
	}
	if b, err := os.ReadFile(filepath.Join(dir, "freezer.self_freezing")); err == nil {
		return strings.TrimSpace(string(b)) == "1"
	}
	return false
}

func (c *Checkpoint) dumpOne(ctx context.Context, o Options, m *member) (*images.DumpStats, error) {
	work := filepath.Join(c.Dir, m.dir)
	imgDir := filepath.Join(c.Dir, m.ic.Dir)
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return nil, err
	}
	imgF, err := os.Open(imgDir)
	if err != nil {
		return nil, err
	}
	defer imgF.Close()
	workF, err := os.Open(work)
	if err != nil {
		return nil, err
	}
	defer workF.Close()
	opts := &rpc.CriuOpts{
		Pid:           proto.Int32(int32(m.node.InitPid)),
		ImagesDirFd:   proto.Int32(int32(imgF.Fd())),
		WorkDirFd:     proto.Int32(int32(workF.Fd())),
		LogFile:       proto.String("dump.log"),
		LogLevel:      proto.Int32(4),
		LeaveRunning:  proto.Bool(true),
		FreezeCgroup:  proto.String(m.node.Leaf()),
		ManageCgroups: proto.Bool(true),
		// Only cr's own hierarchy: in the others the job sits at the root,
		// and CRIU would record (and a restore recreate) every cgroup of
		// this host there.
		CgroupDumpController: []string{c.tree.CRIUController()},
		FileLocks:            proto.Bool(true),
		// Any cpu_cap makes CRIU write cpuinfo.img: a restore checks this
		// CPU against its own before it creates anything.
		CpuCap: proto.Uint32(criubin.CPUCapDefault),
	}
	if m.node.Rootfs != "" {
		opts.ExtMnt = rootfsExtMounts()
	}
	if c.netLock != "" {
		opts.NetworkLock = c.netLock.RPC()
	}
	tcp, ext, err := c.criuNet(o, m)
	if err != nil {
		return nil, err
	}
	opts.TcpEstablished = proto.Bool(tcp)
	opts.External = ext
	// A notify callback lets an interrupt abort at post-dump: CRIU then
	// resumes the tasks instead of the dump going on to completion.
	check := func(string, int32) error { return ctx.Err() }
	if _, err := criubin.Swrk(ctx, o.CRIU, rpc.CriuReqType_DUMP, opts, check); err != nil {
		return nil, c.criuError("dump", m.node.Path, filepath.Join(work, "dump.log"), err)
	}
	return dumpStats(work), nil
}

// dumpLazy dumps a container with CRIU's lazy pages. It runs CRIU on the
// command line, because its RPC interface cannot keep the page server off
// the network (it listens on every address there): here the page server
// talks over a socket pair, and returns once CRIU wrote the images and
// waits to serve the memory. CRIU's log goes beside the staging dir, as
// CRIU writes it until the pages are served, after the image is sent.
func (c *Checkpoint) dumpLazy(o Options, index int, m *member) error {
	work := filepath.Join(c.Dir, m.dir)
	imgDir := filepath.Join(c.Dir, m.ic.Dir)
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return err
	}
	if c.logs == nil {
		logs, err := scratch.Mkdir(filepath.Dir(c.Dir), logsPrefix)
		if err != nil {
			return err
		}
		c.logs = logs
	}
	log := filepath.Join(c.logs.Path, fmt.Sprintf("dump-%d.log", index))
	args := []string{"dump", "-t", strconv.Itoa(m.node.InitPid), "-D", imgDir, "-W", work,
		"-o", log, "-v4", "--leave-running", "--freeze-cgroup", m.node.Leaf(), "--manage-cgroups",
		"--cgroup-dump-controller", c.tree.CRIUController(), "--file-locks", "--lazy-pages"}
	if c.netLock != "" {
		args = append(args, c.netLock.Args()...)
	}
	tcp, ext, err := c.criuNet(o, m)
	if err != nil {
		return err
	}
	if tcp {
		args = append(args, "--tcp-established")
	}
	for _, e := range ext {
		args = append(args, "--external", e)
	}
	p, err := criubin.StartPageProc(o.CRIU, "dump", args, log)
	if err != nil {
		return c.criuError("dump", m.node.Path, log, err)
	}
	c.pages = append(c.pages, PageLink{Container: index, Path: m.node.Path, Proc: p})
	return nil
}

// endPages ends the page servers of a lazy dump: each CRIU sees its
// socket close, lets go of its tasks (leaving them frozen) and exits.
func (c *Checkpoint) endPages() error {
	var first error
	for _, pl := range c.pages {
		err := pl.Proc.Close()
		criubin.KeepErrorLog(err, criubin.LogDir(c.tree.StateDir), pl.Path)
		if err != nil && first == nil {
			first = fmt.Errorf("%s: %w", pl.Path, err)
		}
	}
	c.pages = nil
	return first
}

// criuError builds the error a user sees: CRIU's own reason and lines, and
// where the full log was kept (out of the staging area, which goes).
func (c *Checkpoint) criuError(op, path, log string, err error) error {
	return criubin.Failed(op, path, log, criubin.LogDir(c.tree.StateDir), err)
}

// processes lists a container's processes with their pids inside it.
func processes(n *nstree.Node) []images.Process {
	pids, _ := nstree.Procs(n.Leaf())
	var out []images.Process
	for _, pid := range pids {
		p, ok := nstree.ProcessInfo(pid)
		if !ok {
			continue
		}
		out = append(out, images.Process{Pid: p.Pid, PPid: nsPPid(pid), Command: p.Command})
	}
	return out
}

// nsPPid is a process's parent pid as seen inside its pid namespace.
func nsPPid(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			pp, _ := strconv.Atoi(strings.TrimSpace(v))
			if p, ok := nstree.ProcessInfo(pp); ok && pp != 0 {
				return p.Pid
			}
			return 0
		}
	}
	return 0
}

// progress reports the staging area's size until stopped.
func (c *Checkpoint) progress(f func(int64)) (stop func()) {
	if f == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				f(c.Bytes())
			}
		}
	}()
	return func() { close(done) }
}

// FrozenSoFar is how long the source has been frozen: until now while it
// still is, else until it was resumed.
func (c *Checkpoint) FrozenSoFar() time.Duration {
	if !c.resumed && !c.frozenAt.IsZero() {
		return time.Since(c.frozenAt)
	}
	return c.Frozen
}

// Bytes is the size of the staged images: an upper bound of what the image
// holds once extracted.
func (c *Checkpoint) Bytes() int64 { return dirSize(c.Dir) + c.stream.raw.Load() }

func dirSize(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// Resume lets the source run again: the leaves cr froze are thawed and
// the cgroups the user had frozen are frozen again. It is idempotent.
func (c *Checkpoint) Resume() {
	if c.resumed {
		return
	}
	c.resumed = true
	// Lazy: CRIU must let go of the tasks before they can run.
	_ = c.endPages()
	ctx, cancel := context.WithTimeout(context.Background(), freeze.DefaultTimeout)
	defer cancel()
	for _, f := range c.userFrozen {
		_ = f.Freeze(ctx)
	}
	for _, f := range c.leaves {
		_ = f.Thaw(ctx)
	}
	for _, v := range c.downed {
		_ = network.SetLink(v, true)
	}
	c.downed = nil
	if !c.frozenAt.IsZero() {
		c.Frozen = time.Since(c.frozenAt)
	}
}

// Finish ends the source after its image is safely written (for a lazy
// dump: after the destination has every page): every process is killed
// (while still frozen, so it never runs again here) and the nodes are
// removed.
func (c *Checkpoint) Finish(ctx context.Context) error {
	c.resumed = true
	// The destination has every page: a page server that fails to end
	// cleanly changes nothing.
	_ = c.endPages()
	err := c.tree.Kill(ctx, c.root, nstree.KillOptions{})
	// The source's sockets, killed on an unplugged link, keep its
	// namespace for minutes: its veth goes now.
	for _, v := range c.downed {
		network.DeleteLink(v)
	}
	c.downed = nil
	return err
}

// Cleanup removes the staging directory. A lazy dump's page servers still
// running (a migration in doubt) end first: they write into the staging
// directory, and a CRIU writing there while it goes leaves it behind.
func (c *Checkpoint) Cleanup() {
	_ = c.endPages()
	_ = c.staging.Remove()
	_ = c.logs.Remove()
	_ = c.stream.spill.Remove()
}

// copyLog keeps the container's output so far beside its images, so that
// its log continues after a restore.
func (c *Checkpoint) copyLog(m *member) error {
	in, err := os.Open(c.tree.LogPath(m.node.ID))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(filepath.Join(c.Dir, images.LogName(m.ic)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	_, err = io.Copy(out, in)
	return err
}

// lockDump makes sure only one cr dumps a container at a time (two
// snapshots from cron that overlap, say): the second waits a little, then
// gives up with ErrBusy.
func lockDump(t *nstree.Tree, n *nstree.Node) (func(), error) {
	fd, err := unix.Open(filepath.Join(t.StateDir, "c", n.ID, "dump.lock"), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", n.Path, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Close(fd) }, nil
		}
		if err != unix.EWOULDBLOCK || time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("%s: %w", n.Path, ErrBusy)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// anyFrozen reports whether some cgroup of the subtree is frozen.
func anyFrozen(root *nstree.Node) bool {
	frozen := false
	root.Walk(func(n *nstree.Node) {
		for _, dir := range []string{n.Cgroup, n.Leaf()} {
			if f, err := freeze.New(dir); err == nil {
				if s, _ := f.State(); s != freeze.Thawed {
					frozen = true
				}
			}
		}
	})
	return frozen
}

// dumpStats reads the statistics CRIU wrote into work (stats-dump), the
// same for a dump to files and a streamed one; nil if there are none:
// they are informational, a dump without them has not failed.
func dumpStats(work string) *images.DumpStats {
	st, err := crit.GetDumpStats(work)
	if err != nil {
		return nil
	}
	return &images.DumpStats{
		FreezingTime: st.GetFreezingTime(), FrozenTime: st.GetFrozenTime(), MemdumpTime: st.GetMemdumpTime(),
		MemwriteTime: st.GetMemwriteTime(), PagesScanned: st.GetPagesScanned(), PagesSkippedParent: st.GetPagesSkippedParent(),
		PagesWritten: st.GetPagesWritten(), PagesLazy: st.GetPagesLazy(),
	}
}
