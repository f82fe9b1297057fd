// Package e2e drives the built cr binary as a user would, as root, against
// the real kernel and the real CRIU, and checks the jobs' own state
// afterwards. Every test runs in a private tree (its own state directory and
// cgroup parent), and TestMain removes whatever a test left behind.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/e2e/jobreport"
	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/network"
)

var (
	cgBase  string // the private tree's cgroup directory, in the hierarchy cr uses
	crBin   string // the cr binary under test
	jobBin  string // the test workload
	workDir string
	env     []string // CR_* settings of the private tree
	cgName  string
	// The private tree's bridge network (cr run --net=bridge): a bridge
	// name and a subnet of this run's own, so that no test touches a cr0
	// (or a subnet) the machine may have.
	testBridge string
	testSubnet netip.Prefix
)

func TestMain(m *testing.M) {
	// Nothing this test binary inherited (the shared lock's descriptor
	// from flock, say) reaches the processes the tests start: a cr serve
	// or container a test leaks would otherwise hold it after the run.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: the end-to-end tests must run as root (cgroups, namespaces, CRIU)")
		return 1
	}
	// Fail loudly rather than skip everything when CRIU is missing.
	criu, err := criubin.Find("")
	if err == nil {
		err = criubin.Check(context.Background(), criu)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: no working CRIU: %v\nrun scripts/provision.sh first\n", err)
		return 1
	}
	if err := checkWeed(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "cr-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	workDir = dir
	_ = os.Chmod(dir, 0o755) // the not-root test runs cr as nobody
	defer os.RemoveAll(dir)
	crBin = filepath.Join(dir, "cr")
	jobBin = filepath.Join(dir, "testjob")
	for _, b := range [][2]string{{crBin, ".."}, {jobBin, "./testjob"}} {
		// Static, as make build makes cr: both run inside --rootfs
		// containers, which have no host libc.
		c := exec.Command("go", "build", "-o", b[0], b[1])
		c.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := c.CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n%s", b[1], err, out)
			return 1
		}
	}
	cgName = fmt.Sprintf("cr-e2e-%d", os.Getpid())
	// The hierarchy cr keeps its cgroups in, found as cr finds it: on a
	// pure v2 host /sys/fs/cgroup, on a hybrid one /sys/fs/cgroup/unified.
	h, err := freeze.Detect()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: no cgroup hierarchy: %v\n", err)
		return 1
	}
	cgBase = filepath.Join(h.Mount, cgName)
	testBridge = fmt.Sprintf("crb%d", os.Getpid()%100000)
	if testSubnet, err = freeBridgeSubnet(os.Getpid()); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: %v\n", err)
		return 1
	}
	env = []string{
		"CR_BRIDGE=" + testBridge,
		"CR_SUBNET=" + testSubnet.String(),
		"CR_STATE_DIR=" + filepath.Join(dir, "state"),
		"CR_CGROUP_PARENT=" + cgName,
		"CR_BIN_DIR=" + filepath.Join(dir, "bin"),
		"CR_STAGING=" + filepath.Join(dir, "staging"),
		"CR_ROOTFS_CACHE=" + filepath.Join(dir, "rootfs-cache"),
	}
	tmpBefore := serverTmpFiles()
	code := m.Run()
	stopS3()
	leaks := cleanupTree()
	if l := newTmpFiles(tmpBefore); l != "" {
		leaks = strings.TrimPrefix(leaks+", "+l, ", ")
	}
	if l := cleanupBridge(); l != "" {
		leaks = strings.TrimPrefix(leaks+", "+l, ", ")
	}
	if leaks != "" {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: tests left behind:", leaks)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// freeBridgeSubnet picks a /24 of 10.213.0.0/16 that no route of this
// network namespace covers or is covered by.
func freeBridgeSubnet(seed int) (netip.Prefix, error) {
	routes, err := netlink.RouteList(nil, unix.AF_INET)
	if err != nil {
		return netip.Prefix{}, err
	}
	for i := 0; i < 256; i++ {
		p := netip.MustParsePrefix(fmt.Sprintf("10.213.%d.0/24", (seed+i)%256))
		free := true
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
			ones, _ := r.Dst.Mask.Size()
			if q := netip.PrefixFrom(a, ones); ones > 0 && q.Overlaps(p) { // the default route covers everything
				free = false
			}
		}
		if free {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /24 in 10.213.0.0/16 for the test bridge")
}

// cleanupBridge removes the test bridge and cr's nftables table for it,
// and reports any veth still on the bridge (a container's network that
// outlived it).
func cleanupBridge() string {
	var left []string
	if br, err := netlink.LinkByName(testBridge); err == nil {
		// A namespace goes a little after its last process.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			var on []netlink.Link
			links, _ := netlink.LinkList()
			for _, l := range links {
				if l.Attrs().MasterIndex == br.Attrs().Index {
					on = append(on, l)
				}
			}
			if len(on) == 0 || time.Now().After(deadline) {
				for _, l := range on {
					left = append(left, "veth "+l.Attrs().Name+" on "+testBridge)
					_ = netlink.LinkDel(l)
				}
				break
			}
		}
		_ = netlink.LinkDel(br)
	}
	nc := network.Config{Bridge: testBridge, Subnet: testSubnet}
	if on, _ := nc.HasNAT(); on {
		left = append(left, "nftables table "+nc.Table())
	}
	_ = nc.RemoveNAT()
	return strings.Join(left, ", ")
}

// cleanupTree kills and removes whatever is left in the private cgroup
// tree and reports it.
func cleanupTree() string {
	var left []string
	for _, mnt := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/freezer"} {
		left = append(left, cleanupCgroups(filepath.Join(mnt, cgName))...)
	}
	// The v1 controller hierarchies hold the mirrors of the containers'
	// cgroups (the limits), for this run's parent and the other trees'
	// (cgName-other, cgName-dstN), whose bases a test's cleanup leaves.
	for _, mnt := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/blkio"} {
		bases, _ := filepath.Glob(filepath.Join(mnt, cgName+"*"))
		for _, b := range bases {
			if n := filepath.Base(b); n == cgName || strings.HasPrefix(n, cgName+"-") {
				left = append(left, cleanupCgroups(b)...)
			}
		}
	}
	return strings.Join(left, ", ")
}

// cleanupCgroups kills and removes whatever is under the cgroup base, and
// base, and reports what was there.
func cleanupCgroups(base string) []string {
	var left []string
	if _, err := os.Stat(base); err != nil {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	_ = os.WriteFile(filepath.Join(base, "cgroup.kill"), []byte("1"), 0)
	_ = os.WriteFile(filepath.Join(base, "cgroup.freeze"), []byte("0"), 0)
	for _, d := range dirs {
		if b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs")); len(bytes.TrimSpace(b)) > 0 {
			left = append(left, "processes in "+d)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	for i := len(dirs) - 1; i >= 0; i-- {
		if dirs[i] != base {
			left = append(left, "cgroup "+dirs[i])
		}
		_ = syscall.Rmdir(dirs[i])
	}
	return left
}

// result of one cr invocation.
type result struct {
	out, err string
	code     int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.out, r.err)
}

// cr runs the cr binary with the private tree's settings.
func cr(t testing.TB, args ...string) result {
	t.Helper()
	return crEnv(t, nil, args...)
}

func crEnv(t testing.TB, extra []string, args ...string) result {
	t.Helper()
	c := exec.Command(crBin, args...)
	c.Env = append(append(os.Environ(), env...), extra...)
	c.Dir = workDir
	var o, e bytes.Buffer
	c.Stdout, c.Stderr = &o, &e
	err := c.Run()
	r := result{out: o.String(), err: e.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run cr %v: %v", args, err)
	}
	return r
}

// mustCr runs cr and fails the test unless it succeeds.
func mustCr(t testing.TB, args ...string) string {
	t.Helper()
	r := cr(t, args...)
	if r.code != 0 {
		t.Fatalf("cr %s: %s", strings.Join(args, " "), r)
	}
	return r.out
}

// wantFail runs cr and checks its exit status and that stderr holds want,
// which must say something: an empty want would check the status only.
func wantFail(t testing.TB, code int, want string, args ...string) {
	t.Helper()
	if want == "" {
		t.Fatalf("wantFail(%d, %q): give the message cr must print", code, args)
	}
	r := cr(t, args...)
	if r.code != code || !strings.Contains(r.err, want) {
		t.Errorf("cr %s: want exit %d and %q in stderr, got %s", strings.Join(args, " "), code, want, r)
	}
}

// start runs a job in a new container at path and kills it at cleanup.
func start(t testing.TB, path string, cmd ...string) {
	t.Helper()
	out := mustCr(t, append([]string{"run", path, "--"}, cmd...)...)
	if strings.TrimSpace(out) != path {
		t.Fatalf("cr run printed %q, want %q", out, path)
	}
	killAtCleanup(t, path)
}

func killAtCleanup(t testing.TB, path string) {
	t.Cleanup(func() { cr(t, "kill", "--grace", "1s", path) })
}

// Entry is a line of cr ls --json.
type Entry struct {
	Path      string   `json:"path"`
	State     string   `json:"state"`
	Processes int      `json:"processes"`
	Command   []string `json:"command"`
	ExitCode  *int     `json:"exit_code"`
	Memory    int64    `json:"memory_bytes"`
	Until     string   `json:"until"`
	ID        string   `json:"id"`
	Network   string   `json:"network"`
	Address   string   `json:"address"`
}

func ls(t testing.TB, args ...string) map[string]Entry {
	t.Helper()
	var es []Entry
	out := mustCr(t, append([]string{"ls", "--json", "-r"}, args...)...)
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("cr ls --json: %v\n%s", err, out)
	}
	m := map[string]Entry{}
	for _, e := range es {
		m[e.Path] = e
	}
	return m
}

// Proc is a line of cr ps --json.
type Proc struct {
	HostPid int    `json:"host_pid"`
	Pid     int    `json:"pid"`
	Command string `json:"command"`
	Address string `json:"address"`
}

func ps(t testing.TB, path string) []Proc {
	t.Helper()
	var p []Proc
	out := mustCr(t, "ps", "--json", path)
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("cr ps --json: %v\n%s", err, out)
	}
	return p
}

// Report is what the test job says of itself.
type Report = jobreport.Report

// job starts the test workload at path; its reports go to a file.
type job struct {
	path, report string
}

func startJob(t testing.TB, path string, args ...string) *job {
	t.Helper()
	j := &job{path: path, report: filepath.Join(t.TempDir(), "report.json")}
	start(t, path, append([]string{jobBin, "--report", j.report}, args...)...)
	j.waitReady(t)
	return j
}

// waitReady waits for the job's first report, written once it is set up:
// a SIGUSR1 (ask) before that would kill it.
func (j *job) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, 60*time.Second, j.path+"'s job to start", func() bool {
		_, err := os.Stat(j.report)
		return err == nil
	})
}

// ask makes the job report its state now and returns the report.
func (j *job) ask(t testing.TB) Report {
	t.Helper()
	return askVia(t, j.report, func() { mustCr(t, "kill", "-s", "USR1", j.path) })
}

// askVia makes a test job report through signal (which sends it SIGUSR1,
// however it is reached), repeated until the report file holds a whole
// report, and returns it.
func askVia(t testing.TB, report string, signal func()) Report {
	t.Helper()
	_ = os.Remove(report)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		signal()
		for i := 0; i < 20; i++ {
			if b, err := os.ReadFile(report); err == nil {
				var r Report
				if err := json.Unmarshal(b, &r); err == nil {
					return r
				}
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
	t.Fatalf("job did not write %s", report)
	return Report{}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuTicks is a process's user+system CPU time in clock ticks.
func cpuTicks(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("read stat of %d: %v", pid, err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// progresses checks that the job's counter passes since within 10 s.
func (j *job) progresses(t testing.TB, since int64) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if j.ask(t).Counter > since {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// serverTmpFiles lists what the servers the tests start (SeaweedFS) are
// known to drop in /tmp when not told otherwise: glog's logs, gRPC sockets.
func serverTmpFiles() map[string]bool {
	names := map[string]bool{}
	for _, pat := range []string{"/tmp/weed.*", "/tmp/seaweedfs-*"} {
		m, _ := filepath.Glob(pat)
		for _, p := range m {
			names[p] = true
		}
	}
	return names
}

// newTmpFiles names those that appeared since before.
func newTmpFiles(before map[string]bool) string {
	var added []string
	for p := range serverTmpFiles() {
		if !before[p] {
			added = append(added, p)
		}
	}
	sort.Strings(added)
	if len(added) == 0 {
		return ""
	}
	return "files in /tmp: " + strings.Join(added, " ")
}
