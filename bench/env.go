package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/criubin"
)

// Addresses of the two "hosts": network namespaces made by the bench and
// joined by a veth pair. Nothing else is on that link.
const (
	addrA     = "192.0.2.1"
	addrB     = "192.0.2.2"
	servePort = "7400"
)

// tree is one private cr tree: the migration source or destination.
type tree struct {
	Name     string
	CgParent string   // CR_CGROUP_PARENT
	Env      []string // the CR_* settings
}

// env is the bench's private world: a work directory in tmpfs, two cr
// trees, two network namespaces with cr serve in the second.
type env struct {
	dir       string // work dir (tmpfs when there is one)
	dirTmpfs  bool
	cr        string
	criu      string
	testjob   string
	src, dst  *tree
	rawCg     string // cgroup parent of the raw CRIU restores
	nsA, nsB  string // names under /run/netns
	token     string
	serve     *exec.Cmd
	serveLog  string
	serveDone chan error
	// lastMaxRSS is the peak RSS (VmHWM) of the last command run, bytes.
	lastMaxRSS int64
	s3         *s3Server // SeaweedFS in namespace A, for the store rows
}

// newEnv builds the environment; on error it removes what it made.
func newEnv(ctx context.Context, o options) (_ *env, err error) {
	e := &env{}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.cr, err = filepath.Abs(o.CR); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(e.cr); err != nil || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("no cr binary at %s (run make build)", o.CR)
	}
	_ = criubin.PrepareCache() // as cr does: raw CRIU gets the same kernel-feature cache
	if e.criu, err = criubin.Find(o.CRIU); err != nil {
		return nil, err
	}
	base, tmpfs := workBase()
	if e.dir, err = os.MkdirTemp(base, "cr-bench-"); err != nil {
		return nil, fmt.Errorf("create work dir: %w", err)
	}
	e.dirTmpfs = tmpfs
	if !tmpfs {
		logf("warning: %s is not tmpfs: raw CRIU images and staging go to disk", base)
	}
	if e.testjob, err = buildTestJob(ctx, o.TestJob, e.dir); err != nil {
		return nil, err
	}
	pid := os.Getpid()
	mk := func(name string) *tree {
		d := filepath.Join(e.dir, name)
		cg := fmt.Sprintf("crbench-%d-%s", pid, name)
		return &tree{Name: name, CgParent: cg, Env: []string{
			"CR_STATE_DIR=" + filepath.Join(d, "state"),
			"CR_CGROUP_PARENT=" + cg,
			"CR_BIN_DIR=" + filepath.Join(e.dir, "bin"), // one cr installed on both "hosts"
			"CR_STAGING=" + filepath.Join(d, "staging"),
			"CR_CRIU=" + e.criu,
		}}
	}
	e.src, e.dst = mk("src"), mk("dst")
	e.rawCg = fmt.Sprintf("crbench-%d-raw", pid)
	if err := e.makeNetns(ctx, pid); err != nil {
		return nil, err
	}
	e.token = filepath.Join(e.dir, "token")
	if _, _, err := e.crCmd(ctx, e.src, "certs", "token", e.token); err != nil {
		return nil, err
	}
	if err := e.startServe(); err != nil {
		return nil, err
	}
	e.startS3(ctx)
	return e, nil
}

// workBase is where the work dir goes: /dev/shm when it is tmpfs.
func workBase() (string, bool) {
	for _, d := range []string{"/dev/shm", os.TempDir()} {
		var st unix.Statfs_t
		if unix.Statfs(d, &st) == nil && st.Type == unix.TMPFS_MAGIC {
			return d, true
		}
	}
	return os.TempDir(), false
}

// buildTestJob builds e2e/testjob of this module into dir, unless given.
func buildTestJob(ctx context.Context, prebuilt, dir string) (string, error) {
	if prebuilt != "" {
		return filepath.Abs(prebuilt)
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(out))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", errors.New("find the module to build e2e/testjob: run from the repository, or give -testjob")
	}
	bin := filepath.Join(dir, "testjob")
	c := exec.CommandContext(ctx, "go", "build", "-o", bin, "./e2e/testjob")
	c.Dir = filepath.Dir(mod)
	if b, err := c.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build e2e/testjob: %v\n%s", err, b)
	}
	return bin, nil
}

// makeNetns creates namespaces A and B joined by a veth pair.
func (e *env) makeNetns(ctx context.Context, pid int) error {
	a, b := fmt.Sprintf("crbench-%d-a", pid), fmt.Sprintf("crbench-%d-b", pid)
	va, vb := fmt.Sprintf("crb%da", pid), fmt.Sprintf("crb%db", pid)
	steps := [][]string{
		{"netns", "add", a},
		{"netns", "add", b},
		{"link", "add", va, "type", "veth", "peer", "name", vb},
		{"link", "set", va, "netns", a},
		{"link", "set", vb, "netns", b},
		{"-n", a, "addr", "add", addrA + "/24", "dev", va},
		{"-n", b, "addr", "add", addrB + "/24", "dev", vb},
		{"-n", a, "link", "set", "lo", "up"},
		{"-n", b, "link", "set", "lo", "up"},
		{"-n", a, "link", "set", va, "up"},
		{"-n", b, "link", "set", vb, "up"},
	}
	for i, s := range steps {
		if _, _, err := e.run(ctx, "ip", s, nil); err != nil {
			if i >= 3 {
				// A veth end left in this namespace; deleting it deletes both.
				_, _, _ = e.run(context.Background(), "ip", []string{"link", "del", va}, nil)
			}
			return fmt.Errorf("set up network namespaces: %w", err)
		}
		switch i {
		case 0:
			e.nsA = a
		case 1:
			e.nsB = b
		}
	}
	return nil
}

func netnsPath(name string) string { return filepath.Join("/run/netns", name) }

// startServe runs cr serve for the destination tree inside namespace B.
func (e *env) startServe() error {
	e.serveLog = filepath.Join(e.dir, "serve.log")
	logF, err := os.Create(e.serveLog)
	if err != nil {
		return err
	}
	defer logF.Close()
	c := exec.Command(e.cr, "serve", "--listen", addrB+":"+servePort, "--token-file", e.token, "--max-concurrent", "1")
	c.Env = append(os.Environ(), e.dst.Env...)
	c.Dir = e.dir
	c.Stdout, c.Stderr = logF, logF
	if err := inNetns(netnsPath(e.nsB), c.Start); err != nil {
		return fmt.Errorf("start cr serve: %w", err)
	}
	e.serve = c
	e.serveDone = make(chan error, 1)
	go func() { e.serveDone <- c.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(e.serveLog)
		if bytes.Contains(b, []byte("listening on")) {
			return nil
		}
		select {
		case err := <-e.serveDone:
			e.serveDone <- err
			return fmt.Errorf("cr serve exited: %v\n%s", err, b)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return errors.New("cr serve did not start listening within 15 s")
}

// cmdError is a command that failed: its exit status and what it said.
type cmdError struct {
	Cmd    string
	Code   int
	Stderr string
	Err    error
}

func (e *cmdError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("%s: exit %d: %s", e.Cmd, e.Code, msg)
}

func (e *cmdError) Unwrap() error { return e.Err }

// firstLine is the first line of a command's complaint, without "Error: ".
func (e *cmdError) firstLine() string {
	s := strings.TrimSpace(e.Stderr)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimPrefix(s, "Error: ")
}

// run runs a command to completion and measures its wall time (from the
// start of the process to its exit).
func (e *env) run(ctx context.Context, name string, args []string, extraEnv []string) ([]byte, time.Duration, error) {
	c := exec.CommandContext(ctx, name, args...)
	c.Env = append(os.Environ(), extraEnv...)
	c.Dir = e.dir
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	// Interrupted, cr gets to undo what it started (thaw, remove staging).
	c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) }
	c.WaitDelay = 10 * time.Second
	start := time.Now()
	err := c.Start()
	if err == nil {
		// The command's own peak RSS (VmHWM), sampled until it exits:
		// wait4's maxrss would count the bench's own memory, which a
		// child inherits at fork.
		done := make(chan struct{})
		hwm := make(chan int64, 1)
		go func() {
			var peak int64
			for {
				peak = max(peak, vmHWM(c.Process.Pid))
				select {
				case <-done:
					hwm <- peak
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		}()
		err = c.Wait()
		close(done)
		e.lastMaxRSS = <-hwm
	}
	wall := time.Since(start)
	if err != nil {
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return out.Bytes(), wall, &cmdError{Cmd: filepath.Base(name) + " " + strings.Join(args, " "), Code: code, Stderr: errb.String(), Err: err}
	}
	return out.Bytes(), wall, nil
}

// vmHWM is a process's peak resident set so far (bytes), 0 once it is gone.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}

// peakDirBytes polls dir (every 5 ms) until stop is closed and returns
// the most bytes of regular files it ever held.
func peakDirBytes(dir string, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		for {
			var n int64
			_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if fi, err := d.Info(); err == nil {
						n += fi.Size()
					}
				}
				return nil
			})
			peak = max(peak, n)
			select {
			case <-stop:
				out <- peak
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return out
}

// crCmd runs cr against one of the trees.
func (e *env) crCmd(ctx context.Context, t *tree, args ...string) ([]byte, time.Duration, error) {
	return e.run(ctx, e.cr, args, t.Env)
}

// Close stops cr serve, kills and removes whatever is left in the private
// cgroup trees, deletes the namespaces and the work dir. It returns what
// had been left behind, if anything (an empty cgroup parent is not).
func (e *env) Close() string {
	if e.serve != nil && e.serve.Process != nil {
		_ = e.serve.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.serveDone:
		case <-time.After(10 * time.Second):
			_ = e.serve.Process.Kill()
			<-e.serveDone
		}
	}
	e.stopS3()
	var left []string
	for _, t := range []*tree{e.src, e.dst} {
		if t != nil {
			left = append(left, removeCgroupTree(t.CgParent)...)
		}
	}
	if e.rawCg != "" {
		left = append(left, removeCgroupTree(e.rawCg)...)
	}
	for _, ns := range []string{e.nsA, e.nsB} {
		if ns != "" {
			// Deleting a namespace deletes the veth end in it.
			if _, _, err := e.run(context.Background(), "ip", []string{"netns", "del", ns}, nil); err != nil {
				left = append(left, "netns "+ns+": "+err.Error())
			}
		}
	}
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
	return strings.Join(left, ", ")
}

// cgroupMounts lists the mount points of cgroup hierarchies (v1 and v2).
func cgroupMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if mnt, fstype, _, ok := parseMountinfo(sc.Text()); ok && (fstype == "cgroup" || fstype == "cgroup2") {
			out = append(out, mnt)
		}
	}
	return out
}

// parseMountinfo splits a /proc/*/mountinfo line into its mount point,
// file system type and super options.
func parseMountinfo(line string) (mnt, fstype, superOpts string, ok bool) {
	f := strings.Fields(line)
	sep := -1
	for i, s := range f {
		if s == "-" {
			sep = i
			break
		}
	}
	if sep < 5 || len(f) < sep+4 {
		return "", "", "", false
	}
	return unescapeMount(f[4]), f[sep+1], f[sep+3], true
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// removeCgroupTree kills every process below the cgroup directory named
// parent in every hierarchy and removes the directories, deepest first. It
// returns what it found below parent (processes, directories).
func removeCgroupTree(parent string) []string {
	var left []string
	for _, mnt := range cgroupMounts() {
		base := filepath.Join(mnt, parent)
		if _, err := os.Stat(base); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		_ = os.WriteFile(filepath.Join(base, "cgroup.kill"), []byte("1"), 0)
		_ = os.WriteFile(filepath.Join(base, "cgroup.freeze"), []byte("0"), 0)
		_ = os.WriteFile(filepath.Join(base, "freezer.state"), []byte("THAWED"), 0)
		for _, d := range dirs {
			pids := cgroupProcs(d)
			if len(pids) > 0 {
				left = append(left, fmt.Sprintf("%d processes in %s", len(pids), d))
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			if dirs[i] != base {
				left = append(left, "cgroup "+dirs[i])
			}
			rmdirWait(dirs[i])
		}
	}
	return left
}

// cgroupProcs lists the pids in one cgroup directory.
func cgroupProcs(dir string) []int {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// rmdirWait removes a cgroup directory, waiting a little for exiting
// processes to leave it.
func rmdirWait(dir string) error {
	var err error
	for range 300 {
		err = unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}
