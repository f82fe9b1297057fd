package nstree

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/rootfs"
)

// forwarded are the signals the init passes on to the job. The init of a
// pid namespace ignores signals from outside unless it handles them, so
// installing handlers is what makes `kill` on the container work.
var forwarded = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2}

// InitMain is the container init: pid 1 of a new pid namespace, started by
// Tree.Run with fd 3 as its sync pipe. It returns the process exit status.
//
// It runs in two stages. The first, as started, gives itself stdio of its
// own mount namespace (the caller's /dev/null belongs to the host's, where
// CRIU cannot find it for a --mount container), joins the container's leaf
// cgroup before anything can fork (a child forked earlier would stay
// outside and make the container undumpable), and creates the container's
// cgroup namespace, rooted at that leaf. A cgroup namespace is per thread,
// so it then re-executes itself from that thread: the second stage starts
// with every thread inside, and with no descriptor but stdio and the sync
// pipe (everything else was marked close-on-exec).
func InitMain(args []string) int {
	c, err := parseInitArgs(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cr init:", err)
		return 2
	}
	syncPipe := os.NewFile(3, "sync")
	fail := func(format string, a ...any) int {
		fmt.Fprintf(syncPipe, "error "+format+"\n", a...)
		syncPipe.Close()
		return 127
	}
	if c.Stage == 1 {
		return fail("%v", initStage1(c))
	}
	if c.Stage == 2 && c.Rootfs != "" {
		return fail("%v", enterRootfs(c))
	}
	unix.CloseOnExec(3)
	if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
		return fail("set hostname: %v", err)
	}
	if c.Mount && c.Rootfs == "" {
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fail("make mounts private: %v", err)
		}
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fail("mount /proc: %v", err)
		}
		if err := unmountNamespaceFiles(); err != nil {
			return fail("namespace files: %v", err)
		}
		if err := scopeCgroupMounts(); err != nil {
			return fail("cgroup mounts: %v", err)
		}
	}
	if c.Net {
		if err := loopbackUp(); err != nil {
			return fail("bring up lo: %v", err)
		}
	}
	in := &initProc{cfg: c}
	if _, _, err := in.node(); err != nil {
		return fail("%v", err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, append([]os.Signal{unix.SIGCHLD}, forwarded...)...)

	path, err := exec.LookPath(c.Command[0])
	if err != nil {
		return fail("%v", err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail("%v", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return fail("%v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return fail("%v", err)
	}
	job, err := os.StartProcess(path, c.Command, &os.ProcAttr{
		Dir:   c.Cwd,
		Env:   os.Environ(),
		Files: []*os.File{devnull, outW, errW},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return fail("%v", err)
	}
	devnull.Close()
	outW.Close()
	errW.Close()
	// Recorded here, before cr run hears of it, so that it comes before
	// anything the job does.
	if t, id, err := in.node(); err == nil {
		t.Record(events.Event{Type: events.Started, Path: t.pathOf(id), ID: id})
	}
	fmt.Fprintf(syncPipe, "ok %d\n", job.Pid)
	syncPipe.Close()

	var copiers sync.WaitGroup
	for _, r := range []*os.File{outR, errR} {
		copiers.Add(1)
		go func() {
			defer copiers.Done()
			in.copyToLog(r)
		}()
	}
	stopWatch := make(chan struct{})
	go in.watchLimits(stopWatch)
	code := in.supervise(job.Pid, sigs)
	in.checkLimits() // what led to the end (an OOM kill) comes before it
	in.recordExit(code)
	if in.jobExited(code) == UntilEmpty {
		untilEmpty(sigs)
	}
	close(stopWatch)
	in.checkLimits()
	// The job (under --until empty: the last process) is gone: end what
	// it left behind, then drain its output.
	_ = unix.Kill(-1, unix.SIGKILL)
	reapAll(true)
	done := make(chan struct{})
	go func() { copiers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	in.finish(code)
	return code
}

// initStage1 prepares the init and re-executes it as stage 2; it returns
// only on failure.
func initStage1(c InitConfig) error {
	runtime.LockOSThread() // the cgroup namespace is the calling thread's
	if c.JoinNet {
		// The network namespace cr made, with its veth and address: the
		// re-executed init and the job are born in it.
		if err := unix.Setns(4, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("join network namespace: %w", err)
		}
		unix.Close(4)
		c.JoinNet = false
	}
	if err := unix.CloseRange(4, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close inherited descriptors: %w", err)
	}
	if err := nullStdio(); err != nil {
		return err
	}
	if err := JoinCgroup(c.Leaf); err != nil {
		return err
	}
	if err := joinMirrors(c.Leaf); err != nil { // the limits' v1 controllers
		return err
	}
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		return fmt.Errorf("create cgroup namespace: %w", err)
	}
	c.Stage, c.Leaf = 2, ""
	if err := unix.Exec("/proc/self/exe", append([]string{"cr-init"}, c.args()...), os.Environ()); err != nil {
		return fmt.Errorf("re-execute the init: %w", err)
	}
	return nil
}

// enterRootfs builds a --rootfs container's root, pivots into it and
// re-executes the init from inside it as stage 3 (stage 2 without the
// mount set-up): what CRIU records of the init, its executable and its
// stdio, must be inside the container's root. It returns only on failure.
func enterRootfs(c InitConfig) error {
	spec, err := rootfs.ParseSpec(c.Rootfs)
	if err != nil {
		return err
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return err
	}
	if err := rootfs.Enter(*spec); err != nil {
		return err
	}
	if err := nullStdio(); err != nil {
		return err
	}
	c.Stage = 3
	self := filepath.Join(rootfs.BinDir, filepath.Base(exe))
	if err := unix.Exec(self, append([]string{"cr-init"}, c.args()...), os.Environ()); err != nil {
		return fmt.Errorf("re-execute the init from %s: %w", self, err)
	}
	return nil
}

// nullStdio points descriptors 0, 1 and 2 at /dev/null, as the init
// wants them before it re-executes itself: both re-executions (stage 2,
// and stage 3 inside a --rootfs root, whose /dev/null is the container's)
// do it the same way.
func nullStdio() error {
	null, err := unix.Open(os.DevNull, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	for fd := 0; fd < 3; fd++ {
		if err := unix.Dup3(null, fd, 0); err != nil {
			return fmt.Errorf("stdio: %w", err)
		}
	}
	unix.Close(null)
	return nil
}

type initProc struct {
	cfg InitConfig
	mu  sync.Mutex // serialises writes to the log and the node lookups

	// What node() found, and in which cgroup namespace: a restore (or a
	// copy restored beside the original) runs in a new one.
	ns   string
	info NodeInfo

	limits    limitWatch     // the limit hits recorded so far (checkLimits)
	jobSignal syscall.Signal // the signal that killed the job, if one did
}

// node returns the tree and id of the init's container. It reads them from
// its leaf cgroup (NodeInfo) again whenever the container may have been
// restored since: when its cgroup namespace changed, or its node's state
// is gone. So a rename, a restore under another path or a migration to a
// host with other settings is followed without being told. The caller
// holds in.mu, or runs before any other goroutine uses in.
func (in *initProc) node() (*Tree, string, error) {
	ns, _ := os.Readlink("/proc/thread-self/ns/cgroup")
	if in.info.ID != "" && ns == in.ns {
		t := in.info.Tree()
		if _, err := os.Stat(filepath.Join(t.nodeDir(in.info.ID), configFile)); err == nil {
			return t, in.info.ID, nil
		}
	}
	info, ok := ownNodeInfo(in.cfg.HierVersion)
	if !ok {
		return nil, "", errors.New("find own container: its cgroup does not say")
	}
	if in.cfg.Rootfs != "" {
		// The host's state directory, whichever it is, is bound there.
		info.StateDir = rootfs.StateDir
	}
	in.ns, in.info = ns, info
	return info.Tree(), info.ID, nil
}

// supervise reaps children and forwards signals until the job exits, and
// returns its exit status (128+signal for a killed job).
func (in *initProc) supervise(job int, sigs <-chan os.Signal) int {
	for s := range sigs {
		if s != unix.SIGCHLD {
			_ = unix.Kill(job, s.(syscall.Signal))
			continue
		}
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if pid <= 0 || err != nil {
				break
			}
			if pid == job {
				if ws.Signaled() {
					in.jobSignal = ws.Signal()
					return 128 + int(ws.Signal())
				}
				return ws.ExitStatus()
			}
		}
	}
	return 0
}

// jobExited reads the container's mode from its config, where cr run and
// a restore put it (so a restored container follows its image), and under
// UntilEmpty records the job's exit status at once: the container itself
// runs on. A config that cannot be read means UntilJob.
func (in *initProc) jobExited(code int) string {
	in.mu.Lock()
	t, id, err := in.node()
	in.mu.Unlock()
	if err != nil {
		return UntilJob
	}
	unlock, err := t.Lock()
	if err != nil {
		return UntilJob
	}
	defer unlock()
	c, err := t.readConfig(id)
	if err != nil || c.Until != UntilEmpty {
		return UntilJob
	}
	c.ExitCode = &code
	_ = t.WriteConfig(c)
	return UntilEmpty
}

// untilEmpty reaps orphans until no process but the init is left in the
// container's pid namespace. kill(-1, 0) from the init of a pid namespace
// reaches every other process in it, zombies included, and fails with
// ESRCH when there is none. A process that joined the namespace from
// outside (cr enter's command) is not the init's child until its parent
// exits, so the namespace is looked at every second as well as on SIGCHLD.
// No signal is forwarded once the job is gone: cr kill signals every
// process of the container itself.
func untilEmpty(sigs <-chan os.Signal) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		reapAll(false)
		if err := unix.Kill(-1, 0); err == unix.ESRCH {
			return
		}
		select {
		case <-sigs:
		case <-tick.C:
		}
	}
}

// reapAll reaps children until none is left (block) or none is ready.
func reapAll(block bool) {
	opt := unix.WNOHANG
	if block {
		opt = 0
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, opt, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}

// copyToLog copies r into the container's log, opening the log only for each
// write: CRIU refuses to restore a file whose size changed since the dump,
// so the init must not hold the log open.
func (in *initProc) copyToLog(r *os.File) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			in.appendLog(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

func (in *initProc) appendLog(b []byte) {
	in.mu.Lock()
	defer in.mu.Unlock()
	t, id, err := in.node()
	if err != nil {
		return
	}
	f, err := os.OpenFile(t.LogPath(id), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	_, _ = f.Write(b)
	f.Close()
}

// finish records the job's exit and applies the on-empty policy. Under
// UntilEmpty it runs when the last process is gone, and the exit status
// it records is still the job's.
func (in *initProc) finish(code int) {
	in.mu.Lock()
	t, id, err := in.node()
	in.mu.Unlock()
	if err != nil {
		return
	}
	unlock, err := t.Lock()
	if err != nil {
		return
	}
	c, err := t.readConfig(id)
	if err != nil {
		unlock()
		return
	}
	c.Status, c.ExitCode, c.Exited = "exited", &code, time.Now().UTC()
	_ = t.WriteConfig(c)
	p := t.pathOf(id)
	t.Record(events.Event{Type: events.Empty, Path: p, ID: id, ExitCode: &code, OnEmpty: c.OnEmpty})
	// Leave the container's cgroup so that it can be removed, or be seen
	// empty while the --on-empty-exec command runs. Inside its own mount
	// namespace the init sees only its own cgroup (read-only): there the
	// next cr that opens the tree removes the node (PruneExited), and the
	// command runs in the container's cgroup.
	left := false
	if c.OnEmpty == OnEmptyDelete || c.OnEmptyExec != "" {
		if JoinCgroup(t.Hier.Mount) == nil {
			leaveMirrors()
			left = true
		}
	}
	if left && c.OnEmpty == OnEmptyDelete {
		if f, err := t.Load(); err == nil {
			if n, ok := f.ByID[id]; ok {
				t.pruneUp(n)
			}
		}
	}
	unlock() // the command may well run cr
	if c.OnEmptyExec != "" {
		runEmptyExec(t, c, p, code)
	}
}

// pruneUp removes n if it is empty and its policy says so, then its
// ancestors likewise. The caller holds the lock.
func (t *Tree) pruneUp(n *Node) {
	for ; n != nil; n = n.Parent {
		if len(n.Children) > 0 || n.OnEmpty != OnEmptyDelete || (!n.Implicit && n.Status != "exited") {
			return
		}
		if pids, _ := Procs(n.Leaf()); len(pids) > 0 {
			return
		}
		if err := t.removeNode(n); err != nil {
			return
		}
		if p := n.Parent; p != nil {
			p.Children = slices.DeleteFunc(p.Children, func(c *Node) bool { return c == n })
		}
	}
}

// removeNode removes one node's cgroups and state. Its processes must be
// gone and it must have no children.
func (t *Tree) removeNode(n *Node) error {
	if err := removeCgroups(n.Cgroup); err != nil {
		return err
	}
	// The namespace may outlive its processes for minutes (a closed
	// connection's socket still sending its FIN keeps it): its veth goes
	// now, so that its address cannot answer beside a new owner's.
	if n.Network != nil && n.Network.Veth != "" {
		network.DeleteLink(n.Network.Veth)
		if len(n.Network.Publish) > 0 {
			network.Config{Bridge: n.Network.Bridge, StateDir: t.StateDir}.Unpublish(n.ID)
		}
	}
	// Remove the config first so that a crash leaves no half-visible node.
	if err := os.Remove(filepath.Join(t.nodeDir(n.ID), configFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(t.nodeDir(n.ID)); err != nil {
		return err
	}
	t.Record(events.Event{Type: events.Removed, Path: n.Path, ID: n.ID})
	return nil
}

// loopbackUp sets IFF_UP on lo in the current network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
