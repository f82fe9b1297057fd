package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// host is a second cr host on this machine, the destination of migrations:
// a network namespace joined to the test's by a veth pair, a tree of its
// own (state directory, cgroup parent, staging area, temporary directory)
// and cr serve running inside the namespace as a child of the test. Only
// the binary directory is shared with the source: both hosts run the same
// cr.
//
// The addresses are a /30 of TEST-NET-2 (198.51.100.0/24, RFC 5737): the
// machine's own network may use TEST-NET-1, and traffic must only ever go
// to this namespace.
type host struct {
	ns, veth string // network namespace, the test's end of the veth pair
	ip       string // the receiver's address
	local    string // the test's address on the veth pair
	addr     string // ip:port cr serve listens on
	dir      string // everything the host writes
	cg       string // its CR_CGROUP_PARENT
	env      []string
	serve    []string // cr serve's authentication flags
	creds    []string // cr migrate's authentication flags
	token    string   // token file (token mode)
	tls      string   // cr certs tls directory (mTLS mode)

	// wrap, if set, runs cr serve through it (inside the namespace):
	// argv before cr's own, for a destination that sees other files.
	wrap []string

	cmd    *exec.Cmd
	exited chan struct{}
	log    *syncBuffer
}

var hostSeq atomic.Int32

// newHost sets up a destination host whose cr serve authenticates with mode
// "token" or "mtls", starts cr serve and removes everything at cleanup: the
// daemon, the containers restored there, their cgroups, the namespace and
// the veth pair.
func newHost(t *testing.T, mode string) *host {
	t.Helper()
	return newHostEnv(t, mode, nil)
}

// newHostEnv is newHost with settings of its own (CR_SUBNET=..., say)
// after the test tree's.
func newHostEnv(t *testing.T, mode string, extra []string) *host {
	t.Helper()
	n := hostSeq.Add(1)
	pid := os.Getpid()
	h := &host{
		ns:   fmt.Sprintf("crdst-%d-%d", pid, n),
		veth: fmt.Sprintf("crv%05d%02da", pid%100000, n%100),
		dir:  t.TempDir(),
		cg:   fmt.Sprintf("%s-dst%d", cgName, n),
	}
	peer := strings.TrimSuffix(h.veth, "a") + "b"
	local, remote := freeSubnet(t, pid+int(n))
	h.ip, h.local = remote, local
	h.addr = remote + ":7400"
	t.Cleanup(func() { h.cleanup(t) })

	ip(t, "netns", "add", h.ns)
	ip(t, "link", "add", h.veth, "type", "veth", "peer", "name", peer, "netns", h.ns)
	ip(t, "addr", "add", local+"/30", "dev", h.veth)
	ip(t, "link", "set", h.veth, "up")
	ip(t, "-n", h.ns, "addr", "add", remote+"/30", "dev", peer)
	ip(t, "-n", h.ns, "link", "set", peer, "up")
	ip(t, "-n", h.ns, "link", "set", "lo", "up")

	for _, d := range []string{"state", "staging", "tmp"} {
		if err := os.Mkdir(filepath.Join(h.dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	h.env = []string{
		"CR_STATE_DIR=" + filepath.Join(h.dir, "state"),
		"CR_CGROUP_PARENT=" + h.cg,
		"CR_STAGING=" + filepath.Join(h.dir, "staging"),
		// CRIU logs of failed restores are kept here.
		"TMPDIR=" + filepath.Join(h.dir, "tmp"),
	}
	h.env = append(h.env, extra...)
	switch mode {
	case "token":
		h.token = filepath.Join(h.dir, "token")
		mustCr(t, "certs", "token", h.token)
		h.serve = []string{"--token-file", h.token}
		h.creds = h.serve
	case "mtls":
		h.tls = filepath.Join(h.dir, "tls")
		mustCr(t, "certs", "tls", h.tls, "--host", h.ip)
		f := func(name string) string { return filepath.Join(h.tls, name) }
		h.serve = []string{"--cert", f("server.crt"), "--key", f("server.key"), "--ca", f("ca.crt")}
		h.creds = []string{"--cert", f("client.crt"), "--key", f("client.key"), "--ca", f("ca.crt")}
	default:
		t.Fatalf("unknown authentication mode %q", mode)
	}
	h.start(t)
	return h
}

// freeSubnet picks a /30 of 198.51.100.0/24 that no interface of this
// network namespace uses, and returns its two host addresses.
func freeSubnet(t *testing.T, seed int) (local, remote string) {
	t.Helper()
	out, err := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	if err != nil {
		t.Fatalf("ip addr show: %v", err)
	}
	routes, err := exec.Command("ip", "-4", "route", "show").Output()
	if err != nil {
		t.Fatalf("ip route show: %v", err)
	}
	for i := 0; i < 64; i++ {
		k := (seed + i) % 64
		net := fmt.Sprintf("198.51.100.%d", 4*k)
		local = fmt.Sprintf("198.51.100.%d", 4*k+1)
		remote = fmt.Sprintf("198.51.100.%d", 4*k+2)
		if !strings.Contains(string(out), " "+local+"/") && !strings.Contains(string(routes), net+"/") {
			return local, remote
		}
	}
	t.Fatalf("no free /30 in 198.51.100.0/24")
	return "", ""
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// start runs cr serve in the namespace and waits until it listens. nsenter
// enters the network namespace only: `ip netns exec` would also remount
// /sys, hiding the cgroup hierarchies from cr serve and CRIU.
func (h *host) start(t *testing.T) {
	t.Helper()
	if h.running() {
		t.Fatalf("cr serve already runs")
	}
	args := append(append(append([]string{"--net=/run/netns/" + h.ns}, h.wrap...), crBin, "serve", "--listen", h.addr), h.serve...)
	h.cmd = exec.Command("nsenter", args...)
	h.cmd.Env = h.environ()
	h.cmd.Dir = workDir
	if h.log == nil {
		h.log = &syncBuffer{}
	}
	h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start cr serve: %v", err)
	}
	h.exited = make(chan struct{})
	go func(c *exec.Cmd, exited chan struct{}) {
		_ = c.Wait()
		close(exited)
	}(h.cmd, h.exited)
	mark := h.log.Len()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(h.log.From(mark), "listening on "+h.addr) {
		if !h.running() || time.Now().After(deadline) {
			t.Fatalf("cr serve did not start listening:\n%s", h.log.From(mark))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *host) running() bool {
	if h.exited == nil {
		return false
	}
	select {
	case <-h.exited:
		return false
	default:
		return true
	}
}

// resumed reports whether a container named name was restored here and
// runs: the restore records its time once the tasks resumed.
func (h *host) resumed(t testing.TB, name string) bool {
	t.Helper()
	cfgs, _ := filepath.Glob(filepath.Join(h.dir, "state", "c", "*", "config.json"))
	for _, p := range cfgs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var c struct {
			Name     string    `json:"name"`
			Restored time.Time `json:"restored"`
		}
		if json.Unmarshal(b, &c) == nil && c.Name == name && !c.Restored.IsZero() {
			return true
		}
	}
	return false
}

// kill ends cr serve with SIGKILL, as a crash would.
func (h *host) kill(t *testing.T) {
	t.Helper()
	if !h.running() {
		return
	}
	_ = h.cmd.Process.Kill()
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("cr serve (pid %d) did not die", h.cmd.Process.Pid)
	}
}

func (h *host) environ() []string {
	return append(append(os.Environ(), env...), h.env...)
}

// cr runs cr as on the destination host (its tree, not the source's).
func (h *host) cr(t testing.TB, args ...string) result {
	t.Helper()
	return crEnv(t, h.env, args...)
}

func (h *host) mustCr(t testing.TB, args ...string) string {
	t.Helper()
	r := h.cr(t, args...)
	if r.code != 0 {
		t.Fatalf("cr %s (destination): %s", strings.Join(args, " "), r)
	}
	return r.out
}

// ls lists the destination's tree.
func (h *host) ls(t testing.TB) map[string]Entry {
	t.Helper()
	var es []Entry
	out := h.mustCr(t, "ls", "--json", "-r")
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("cr ls --json (destination): %v\n%s", err, out)
	}
	m := map[string]Entry{}
	for _, e := range es {
		m[e.Path] = e
	}
	return m
}

func (h *host) ps(t testing.TB, path string) []Proc {
	t.Helper()
	var p []Proc
	out := h.mustCr(t, "ps", "--json", path)
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("cr ps --json (destination): %v\n%s", err, out)
	}
	return p
}

// ask makes a job that now runs at path on the destination report. Its
// report file is on the filesystem both hosts share.
func (h *host) ask(t testing.TB, j *job, path string) Report {
	t.Helper()
	return askVia(t, j.report, func() { h.mustCr(t, "kill", "-s", "USR1", path) })
}

// progresses checks that the job at path on the destination counts past since.
func (h *host) progresses(t testing.TB, j *job, path string, since int64) bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if h.ask(t, j, path).Counter > since {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// incoming lists the per-migration directories of the receiver's staging
// area.
func (h *host) incoming(t testing.TB) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(h.dir, "staging", "incoming"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// serveLayout is what cr serve keeps in the staging area between
// migrations.
var serveLayout = map[string]bool{"incoming": true, "serve": true, "serve/lock": true, "serve/work": true, "serve/restoring": true}

// staged lists what the receiver's staging area holds beyond its layout:
// images being received, restores' work directories, journal entries.
func (h *host) staged(t testing.TB) []string {
	t.Helper()
	base := filepath.Join(h.dir, "staging")
	var left []string
	_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		rel, _ := filepath.Rel(base, p)
		switch {
		case err != nil || rel == ".":
		case !serveLayout[rel]:
			left = append(left, rel)
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
	return left
}

// leftovers describes what of migrations remains on the destination:
// nodes, cgroups below its cgroup parent, processes in them, staging
// directories. "" when nothing does.
func (h *host) leftovers(t testing.TB) string {
	t.Helper()
	var left []string
	for p := range h.ls(t) {
		left = append(left, "node "+p)
	}
	for _, d := range cgroupsUnder(h.cg) {
		left = append(left, "cgroup "+d)
	}
	for _, p := range processesUnder(h.cg) {
		left = append(left, "process "+strconv.Itoa(p))
	}
	for _, d := range h.staged(t) {
		left = append(left, "staging "+d)
	}
	return strings.Join(left, ", ")
}

// waitClean waits for the destination to have nothing left (the receiver
// removes its staging directory right after its last message, so it may
// lag behind the sender's exit a little).
func (h *host) waitClean(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := h.leftovers(t)
		if l == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("destination left behind: %s", l)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var cgroupMounts = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/freezer"}

// cgroupsUnder lists the cgroup directories below the parent cg, in every
// hierarchy cr may use, parents first.
func cgroupsUnder(cg string) []string {
	var dirs []string
	for _, mnt := range cgroupMounts {
		base := filepath.Join(mnt, cg)
		_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != base {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	return dirs
}

func processesUnder(cg string) []int {
	var pids []int
	for _, mnt := range cgroupMounts {
		_ = filepath.WalkDir(filepath.Join(mnt, cg), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// cleanup stops cr serve, kills what runs on the destination, removes its
// cgroups, the namespace and the veth pair. A container that cr kill could
// not remove is a failure, as for the source tree.
func (h *host) cleanup(t *testing.T) {
	defer func() {
		_ = exec.Command("ip", "netns", "del", h.ns).Run()
		_ = exec.Command("ip", "link", "del", h.veth).Run() // gone with the namespace, normally
	}()
	if h.running() {
		_ = h.cmd.Process.Kill()
		<-h.exited
	}
	if _, err := os.Stat(filepath.Join(h.dir, "state")); err == nil {
		for p := range h.ls(t) {
			if strings.Count(p, "/") == 1 {
				h.cr(t, "kill", "--grace", "1s", p)
			}
		}
	}
	var left []string
	for _, mnt := range cgroupMounts {
		base := filepath.Join(mnt, h.cg)
		if _, err := os.Stat(base); err != nil {
			continue
		}
		_ = os.WriteFile(filepath.Join(base, "cgroup.kill"), []byte("1"), 0)
		_ = os.WriteFile(filepath.Join(base, "cgroup.freeze"), []byte("0"), 0)
	}
	for _, pid := range processesUnder(h.cg) {
		left = append(left, "process "+strconv.Itoa(pid))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(50 * time.Millisecond)
	dirs := cgroupsUnder(h.cg)
	for i := len(dirs) - 1; i >= 0; i-- {
		left = append(left, "cgroup "+dirs[i])
		_ = syscall.Rmdir(dirs[i])
	}
	for _, mnt := range cgroupMounts {
		_ = syscall.Rmdir(filepath.Join(mnt, h.cg))
	}
	if len(left) > 0 {
		t.Errorf("destination left behind after cr kill: %s", strings.Join(left, ", "))
	}
}

// syncBuffer collects cr serve's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// From returns what was written since offset mark.
func (s *syncBuffer) From(mark int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b.Bytes()[mark:])
}

func (s *syncBuffer) String() string { return s.From(0) }
