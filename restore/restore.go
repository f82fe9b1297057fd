// Package restore brings a checkpointed subtree back: it verifies the
// image before touching anything, recreates the nodes (at their original
// paths or under another one), restores every container through CRIU with
// its pids, and resumes them all together.
//
// Every container is restored by its own CRIU run, held at CRIU's
// post-restore notification (tasks created, not yet running) until all of
// them got there; only then do they resume. A failure anywhere aborts every
// held restore (CRIU kills what it created) and removes the nodes, so a
// restore is all or nothing.
package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/rpc"
	"google.golang.org/protobuf/proto"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/hostcheck"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
	"github.com/cr-dev/cr/scratch"
)

// Options say how to restore.
type Options struct {
	CRIU        string
	CRIUVersion int
	StagingDir  string
	Limits      images.Limits
	// CheckFiles makes the restore refuse, before it creates anything, an
	// image whose containers on the host's file system need files this
	// host lacks or has with another size (HostFiles): cr restore sets
	// it; cr serve checked them before the source was frozen.
	CheckFiles bool
	// Pages, set for a lazy migration, receives cr's end of the socket
	// through which the lazy-pages daemon of manifest container i reaches
	// the page server that holds its memory (see dump.PageLink), before
	// the daemon says a word. The restored tasks resume before their
	// memory is here; Result.WaitPages follows the rest of it.
	Pages func(i int, conn *os.File)
	// Exe is cr's own binary, which a streamed restore gives CRIU as its
	// action script (criubin.HookCommand); FromStream without it extracts
	// the image first.
	Exe string
	// Network is this host's bridge network, where containers that had an
	// address get it again (nil: such an image is refused).
	Network *network.Config
	// PreCopied is what a migration sent before the freeze (cr serve):
	// uppers that the image's deltas apply to, lowers it may need.
	PreCopied *rootfs.PreCopied

	netLock criubin.NetLock // chosen by FromDir
}

// Result is a restored subtree.
type Result struct {
	Root       string         // absolute host path of the restored subtree's root
	Pids       map[string]int // absolute path -> host pid of the container init
	Containers []string       // absolute paths, parents first
	Elapsed    time.Duration
	// Phases of a restore from the stream (FromStream); zero otherwise.
	Phases   Phases
	Streamed bool // fed to CRIU as it was read (image format 2)
	Manifest *images.Manifest

	tree    *nstree.Tree
	nodes   []*nstree.Node
	daemons []*lazyDaemon
	journal *journal // a lazy restore's, ended by WaitPages
}

// Phases are how long the parts of a restore took: reading the image's
// head and extracting its small files (Extract), restoring every
// container up to the point where all are held (Restore: for a stream,
// CRIU reading the pages as they arrive), and reading the rest of the
// image to its verified end while they are held (Verify).
type Phases struct {
	Extract, Restore, Verify time.Duration
}

// lazyDaemon is the `criu lazy-pages` of one container of a lazy restore.
type lazyDaemon struct {
	path string
	proc *criubin.PageProc
	work *scratch.Entry
}

// stop kills the daemon and removes its work directory.
func (d *lazyDaemon) stop() {
	d.proc.Kill()
	d.work.Remove()
}

// ErrIncompatible: the image cannot be restored on this host.
var ErrIncompatible = errors.New("image not restorable here")

// Prefixes of the staging entries (see package scratch): an extracted
// image, and CRIU's work directory for one container.
const (
	stagingPrefix = "rst-"
	workPrefix    = "rstwork-"
)

// Extract verifies the image read from r (the file name, for messages) and
// unpacks it into a fresh staging directory, owned by this process until
// the caller removes it. Nothing else is touched. The staging directories
// of restores that were killed are removed first.
func Extract(ctx context.Context, r io.Reader, name string, o Options) (*scratch.Entry, *images.Manifest, error) {
	dir, err := scratch.Mkdir(o.StagingDir, stagingPrefix)
	if err != nil {
		return nil, nil, fmt.Errorf("create staging area: %w", err)
	}
	// Every entry's declared size is checked against the free space before
	// it is written, as cr serve checks a sender's declared size.
	lim := o.Limits
	if free, err := images.FreeSpace(dir.Path); err == nil {
		lim.Free = free
	}
	m, err := images.Extract(ctx, r, dir.Path, lim)
	if err != nil {
		dir.Remove()
		return nil, nil, fmt.Errorf("%s: %w", name, err)
	}
	return dir, m, nil
}

// Check refuses an image this host cannot restore.
func Check(m *images.Manifest, o Options) error {
	if m.Arch != runtime.GOARCH {
		return fmt.Errorf("%w: image is for %s, this host is %s", ErrIncompatible, m.Arch, runtime.GOARCH)
	}
	if o.CRIUVersion != 0 && m.CRIUVersion/100 > o.CRIUVersion/100 {
		return fmt.Errorf("%w: image was dumped by CRIU %s, this host has the older %s", ErrIncompatible, ver(m.CRIUVersion), ver(o.CRIUVersion))
	}
	if len(m.Containers) == 0 || m.Containers[0].Path != "/" {
		return fmt.Errorf("%w: image has no root container", images.ErrCorrupt)
	}
	return nil
}

func ver(v int) string { return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100) }

// Target is where an image goes: its original root, or as.
func Target(m *images.Manifest, as string) string {
	if as != "" {
		return as
	}
	return m.Root
}

// FromDir restores the verified, extracted image in dir at target (an
// absolute host path). ready, if set, is called once every container is
// restored and before any resumes; if it fails, the restore is undone.
func FromDir(ctx context.Context, t *nstree.Tree, dir string, m *images.Manifest, target string, o Options, ready func(*Result) error) (*Result, error) {
	return fromDir(ctx, t, dir, m, target, o, ready, nil)
}

// fromDir restores the image whose small files are in dir, its pages
// there too, or (feed not nil) fed to CRIU from the stream as it arrives:
// the tree then resumes only once feed has verified the whole image.
func fromDir(ctx context.Context, t *nstree.Tree, dir string, m *images.Manifest, target string, o Options, ready func(*Result) error, feed *pageFeed) (*Result, error) {
	start := time.Now()
	if err := Check(m, o); err != nil {
		return nil, err
	}
	// This CPU is checked against the dumping one before anything is
	// created.
	if err := checkCPU(ctx, dir, m, o); err != nil {
		return nil, err
	}
	// So are the files that containers on the host's file system need.
	if o.CheckFiles {
		files, err := HostFiles(dir, m)
		if err != nil {
			return nil, err
		}
		if err := hostcheck.Check(files); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrIncompatible, err)
		}
	}
	// So are the lowers of --rootfs containers.
	lowers, err := rootfsLowers(t, dir, m, o.PreCopied)
	if err != nil {
		return nil, err
	}
	// The journal lets the next cr remove what this restore made if it
	// dies before the end.
	j, err := beginJournal(t, target, o.Pages != nil)
	if err != nil {
		return nil, err
	}
	nodes, err := t.CreateRestored(target, toSpecs(m, lowers))
	if err != nil {
		j.end()
		return nil, err
	}
	res := &Result{Root: target, Pids: map[string]int{}, Manifest: m, tree: t, nodes: nodes}
	for _, n := range nodes {
		res.Containers = append(res.Containers, n.Path)
	}
	ok := false
	eps := map[int]*network.Endpoint{} // bridge containers' namespaces, by manifest index
	defer func() {
		for i, ep := range eps {
			if !ok {
				defer t.DetachNetwork(nodes[i], *o.Network, ep) // after the tasks are gone
			}
			ep.Close()
		}
		if !ok {
			for _, d := range res.daemons {
				d.stop()
			}
			t.RemoveRestored(nodes)
			j.end()
		}
	}()
	if err := j.created(nodes); err != nil {
		return nil, err
	}
	// The limits are in place before any process is restored.
	if err := t.ApplyRestoredLimits(nodes); err != nil {
		return nil, err
	}
	// Rebuild the roots of --rootfs containers; once CRIU has bound each
	// into its container, the host's mount goes (before any node could be
	// removed: deferred after the removal, it runs first).
	layouts := map[int]rootfs.Layout{}
	defer func() {
		for _, l := range layouts {
			l.Unmount()
		}
	}()
	for i, c := range m.Containers {
		if _, ok := lowers[i]; ok {
			l, err := prepareRootfs(t, dir, c, nodes[i], o.PreCopied)
			if err != nil {
				return nil, err
			}
			layouts[i] = l
		}
	}
	// Bridge containers get their address back, in a new namespace whose
	// veth stays unplugged until they run.
	for i, c := range m.Containers {
		if c.Empty || c.Network == nil {
			continue
		}
		ep, err := attachRestored(t, o, c, nodes[i])
		if err != nil {
			return nil, err
		}
		eps[i] = ep
		if err := t.WriteConfig(&nodes[i].Config); err != nil {
			return nil, err
		}
	}
	// Carry each container's log over.
	for i, c := range m.Containers {
		if c.Empty {
			continue
		}
		copyFile(filepath.Join(dir, images.LogName(c)), t.LogPath(nodes[i].ID))
	}
	// CRIU locks the network of containers with their own while it
	// restores them; say how, or it takes iptables.
	for _, c := range m.Containers {
		if !c.Empty && slices.Contains(c.Namespaces, "net") {
			o.netLock, _ = criubin.ChooseNetLock(ctx, o.CRIU)
			break
		}
	}
	// Restore every container, each held at post-restore.
	type held struct {
		restored chan int32 // the init's pid, once restored
		decide   chan error // nil: resume; else abort
		done     chan error
	}
	var hs []*held
	abortAll := func(err error) {
		for _, h := range hs {
			select {
			case h.decide <- err:
			default:
			}
		}
		for _, h := range hs {
			<-h.done
		}
	}
	for i, c := range m.Containers {
		if c.Empty {
			continue
		}
		n := nodes[i]
		work := ""
		if o.Pages != nil {
			d, err := startLazyDaemon(t, o, dir, c, n)
			if err != nil {
				abortAll(err)
				return nil, err
			}
			res.daemons = append(res.daemons, d)
			o.Pages(i, d.proc.Conn)
			work = d.work.Path
		}
		h := &held{restored: make(chan int32, 1), decide: make(chan error, 1), done: make(chan error, 1)}
		hs = append(hs, h)
		go func() {
			l, hasRootfs := layouts[i]
			h.done <- restoreOne(ctx, t, o, dir, work, c, n, l, hasRootfs, eps[i], feed, func(pid int32) error {
				// CRIU restored the cgroups of cr's own hierarchy only:
				// any task not already in the limits' v1 controllers
				// (JoinMirrors at setup-namespaces) gets there here,
				// before it resumes.
				if err := nstree.MoveToMirrors(n.Leaf()); err != nil {
					return err
				}
				h.restored <- pid
				return <-h.decide
			})
		}()
		select {
		case pid := <-h.restored:
			res.Pids[n.Path] = int(pid)
			n.InitPid = int(pid)
		case err := <-h.done:
			h.done <- err // for abortAll's wait
			abortAll(errors.New("another container failed to restore"))
			return nil, err
		}
	}
	res.Phases.Restore = time.Since(start)
	if feed != nil {
		// Every byte of the image checked before anything runs: what CRIU
		// did not ask for, and the end of the archive.
		if err := feed.finish(); err != nil {
			abortAll(err)
			return nil, err
		}
	}
	res.Phases.Verify = time.Since(start) - res.Phases.Restore
	if ready != nil {
		if err := ready(res); err != nil {
			abortAll(err)
			return nil, err
		}
	}
	if err := j.resuming(); err != nil {
		abortAll(err)
		return nil, err
	}
	for _, h := range hs {
		h.decide <- nil
	}
	var firstErr error
	for _, h := range hs {
		if err := <-h.done; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		for _, n := range nodes {
			if n.InitPid != 0 {
				_ = t.Kill(context.Background(), n, nstree.KillOptions{Signal: 9})
			}
		}
		return nil, firstErr
	}
	// Running: their peers may reach them now.
	for _, ep := range eps {
		if err := network.SetLink(ep.HostVeth, true); err != nil {
			return nil, err
		}
	}
	now := time.Now().UTC()
	for _, n := range nodes {
		n.Restored = now
		n.Status = "running"
		if n.InitPid == 0 {
			n.Status = "exited"
		}
		if err := t.WriteConfig(&n.Config); err != nil {
			return nil, err
		}
	}
	ok = true
	if len(res.daemons) > 0 {
		res.journal = j // until every page is here: see WaitPages
	} else {
		j.end()
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

func toSpecs(m *images.Manifest, lowers map[int]string) []nstree.RestoreSpec {
	var specs []nstree.RestoreSpec
	for i, c := range m.Containers {
		specs = append(specs, nstree.RestoreSpec{Rel: c.Path, Config: nstree.Config{
			Command: c.Command, Cwd: c.Cwd, Env: c.Env, Namespaces: c.Namespaces, OnEmpty: c.OnEmpty, OnEmptyExec: c.OnEmptyExec, Until: c.Until,
			Created: c.Created, Implicit: c.Empty && len(c.Command) == 0, Limits: c.Limits, Rootfs: lowers[i],
		}})
	}
	return specs
}

// startLazyDaemon starts the lazy-pages daemon of container c, in the
// work directory its restore will use (where the daemon's socket is).
func startLazyDaemon(t *nstree.Tree, o Options, dir string, c images.Container, n *nstree.Node) (*lazyDaemon, error) {
	work, err := scratch.Mkdir(o.StagingDir, workPrefix)
	if err != nil {
		return nil, err
	}
	log := filepath.Join(work.Path, "lazy-pages.log")
	args := []string{"lazy-pages", "--page-server", "-D", filepath.Join(dir, c.Dir), "-W", work.Path, "-o", log, "-v4"}
	p, err := criubin.StartPageProc(o.CRIU, "lazy-pages", args, log)
	if err != nil {
		err = criuError(t, n.Path, log, err)
		work.Remove()
		return nil, err
	}
	return &lazyDaemon{path: n.Path, proc: p, work: work}, nil
}

// WaitPages follows a lazy restore until every page of every container has
// arrived, and returns nil then. If a lazy-pages daemon fails, or ctx ends
// first (the sender is lost), the restored tree cannot go on without its
// memory: it is killed, its nodes removed, and the error says why.
func (r *Result) WaitPages(ctx context.Context) error {
	if len(r.daemons) == 0 {
		return nil
	}
	defer r.journal.end()
	errs := make(chan error, len(r.daemons))
	for _, d := range r.daemons {
		go func() {
			if err := d.proc.Wait(); err != nil {
				criubin.KeepErrorLog(err, criubin.LogDir(r.tree.StateDir), d.path)
				errs <- fmt.Errorf("%s: memory transfer failed: %w", d.path, err)
				return
			}
			errs <- nil
		}()
	}
	var err error
	for range r.daemons {
		select {
		case err = <-errs:
		case <-ctx.Done():
			err = fmt.Errorf("memory transfer interrupted: %w", context.Cause(ctx))
		}
		if err != nil {
			break
		}
	}
	if err != nil {
		// Kill before the daemons go: a daemon that goes leaves its pages
		// unmapped, and the job would read zeros there.
		r.tree.RemoveRestored(r.nodes)
	}
	for _, d := range r.daemons {
		d.stop()
	}
	if err != nil {
		return fmt.Errorf("%w; the restored tree was killed", err)
	}
	return nil
}

// attachRestored gives the node of container c its address again, on this
// host's bridge, in a new network namespace (the host end of its veth down).
func attachRestored(t *nstree.Tree, o Options, c images.Container, n *nstree.Node) (*network.Endpoint, error) {
	p, err := netip.ParsePrefix(c.Network.Address)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: address %q", images.ErrCorrupt, c.Path, c.Network.Address)
	}
	if o.Network == nil {
		return nil, fmt.Errorf("%w: %s has the address %s and this host has no bridge network", ErrIncompatible, n.Path, p)
	}
	if err := o.Network.Check(p); err != nil {
		return nil, fmt.Errorf("%w: %s has the address %s: %v", ErrIncompatible, n.Path, p, err)
	}
	var ports []network.Port
	for _, s := range c.Network.Publish {
		pp, err := network.ParsePort(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", images.ErrCorrupt, c.Path, err)
		}
		ports = append(ports, pp)
	}
	ep, err := t.AttachNetwork(n, *o.Network, p.Addr(), false)
	if err != nil {
		return nil, err
	}
	if err := t.PublishPorts(n, *o.Network, ports); err != nil {
		t.DetachNetwork(n, *o.Network, ep)
		return nil, err
	}
	return ep, nil
}

func restoreOne(ctx context.Context, t *nstree.Tree, o Options, dir, work string, c images.Container, n *nstree.Node, l rootfs.Layout, hasRootfs bool, ep *network.Endpoint, feed *pageFeed, onRestored func(int32) error) error {
	if feed != nil {
		return restoreStreamed(ctx, t, o, dir, c, n, l, hasRootfs, ep, feed, onRestored)
	}
	imgF, err := os.Open(filepath.Join(dir, c.Dir))
	if err != nil {
		return fmt.Errorf("restore %s: %w", n.Path, err)
	}
	defer imgF.Close()
	lazy := o.Pages != nil // work is then the lazy-pages daemon's
	if !lazy {
		w, err := scratch.Mkdir(o.StagingDir, workPrefix)
		if err != nil {
			return err
		}
		defer w.Remove()
		work = w.Path
	}
	workF, err := os.Open(work)
	if err != nil {
		return err
	}
	defer workF.Close()
	opts, extra := criuOptions(t, o, c, n, l, hasRootfs, ep, 4) // swrk passes extra files from fd 4 on
	opts.ImagesDirFd = proto.Int32(int32(imgF.Fd()))
	opts.WorkDirFd = proto.Int32(int32(workF.Fd()))
	opts.LazyPages = proto.Bool(lazy)
	_, err = criubin.Swrk(ctx, o.CRIU, rpc.CriuReqType_RESTORE, opts, func(script string, pid int32) error {
		switch script {
		case "setup-namespaces":
			// The root task waits here for CRIU to create its cgroup
			// namespace, rooted at its cgroups of the moment: it joins
			// the limits' v1 controllers first, so that it (and every
			// task forked from it) sees them as "/" as a fresh container
			// does.
			return nstree.JoinMirrors(n.Leaf(), int(pid))
		case "post-restore":
			return onRestored(pid)
		}
		return nil
	}, extra...)
	if err != nil {
		return criuError(t, n.Path, filepath.Join(work, "restore.log"), err)
	}
	return nil
}

// criuOptions are CRIU's options to restore container c into node n, the
// same for a swrk run and (criuArgs) a run on CRIU's command line; extra
// are the files the options name, as the fds from firstFd on.
func criuOptions(t *nstree.Tree, o Options, c images.Container, n *nstree.Node, l rootfs.Layout, hasRootfs bool, ep *network.Endpoint, firstFd int32) (*rpc.CriuOpts, []*os.File) {
	leaf := strings.TrimPrefix(n.Leaf(), t.Hier.Mount)
	opts := &rpc.CriuOpts{
		LogFile:           proto.String("restore.log"),
		LogLevel:          proto.Int32(4),
		ManageCgroups:     proto.Bool(true),
		ManageCgroupsMode: rpc.CriuCgMode_SOFT.Enum(),
		CgRoot:            []*rpc.CgroupRoot{{Ctrl: proto.String(t.CRIUController()), Path: proto.String(leaf)}},
		FileLocks:         proto.Bool(true),
	}
	if slices.Contains(c.Namespaces, "mnt") {
		// The container's mount namespace is rebuilt on the host's root.
		// Without a root CRIU empties a copy of its own namespace first,
		// and 4.2.1 trips over its own cgroup yard there (BUG at mount.c:48).
		opts.Root = proto.String("/")
	}
	if hasRootfs {
		rootfsOpts(t, opts, l)
	}
	if o.netLock != "" {
		opts.NetworkLock = o.netLock.RPC()
	}
	var extra []*os.File
	if slices.Contains(c.Namespaces, "net") {
		// Connections dumped established come back established.
		opts.TcpEstablished = proto.Bool(true)
	}
	if ep != nil {
		// The namespace cr made, as the external one the dump named.
		opts.InheritFd = []*rpc.InheritFd{{Key: proto.String(network.CRIUKey), Fd: proto.Int32(firstFd)}}
		extra = append(extra, ep.NS)
	}
	return opts, extra
}

// criuError is the error of a failed CRIU run for the container at path,
// its log kept out of the work directory, which goes.
func criuError(t *nstree.Tree, path, log string, err error) error {
	return criubin.Failed("restore", path, log, criubin.LogDir(t.StateDir), err)
}

func copyFile(src, dst string) {
	in, err := os.Open(src)
	if err != nil {
		return
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return
	}
	defer out.Close()
	_, _ = io.Copy(out, in)
}
