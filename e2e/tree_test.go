package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const busy = `while :; do :; done`

func TestRunAndList(t *testing.T) {
	start(t, "/vs/calc", "sh", "-c", busy)
	start(t, "/vs/other", "sleep", "1000")
	l := ls(t)
	if e, ok := l["/vs"]; !ok || e.State != "empty" {
		t.Errorf("/vs (created on demand) = %+v, want an empty node", e)
	}
	calc := l["/vs/calc"]
	if calc.State != "running" || calc.Processes != 2 || strings.Join(calc.Command, " ") != "sh -c "+busy {
		t.Errorf("/vs/calc = %+v, want running with init and job", calc)
	}
	if calc.Memory <= 0 {
		t.Errorf("/vs/calc memory = %d, want > 0", calc.Memory)
	}
	procs := ps(t, "/vs/calc")
	if len(procs) != 2 || procs[0].Pid != 1 || !strings.Contains(procs[1].Command, busy) {
		t.Errorf("cr ps /vs/calc = %+v, want init as pid 1 and the job", procs)
	}
	// Generated names.
	for _, want := range []string{"/unnamed1", "/unnamed2"} {
		out := strings.TrimSpace(mustCr(t, "run", "--", "sleep", "1000"))
		killAtCleanup(t, out)
		if out != want {
			t.Errorf("cr run without a path printed %q, want %q", out, want)
		}
	}
	// The human listing names the same things.
	out := mustCr(t, "ls", "-r")
	for _, want := range []string{"/vs/calc", "running", "/vs/other", "/unnamed2"} {
		if !strings.Contains(out, want) {
			t.Errorf("cr ls -r lacks %q:\n%s", want, out)
		}
	}
}

func TestFreezeThaw(t *testing.T) {
	start(t, "/fz/a", "sh", "-c", busy)
	start(t, "/fz/b", "sh", "-c", busy)
	job := func(p string) int { return ps(t, p)[1].HostPid }
	a, b := job("/fz/a"), job("/fz/b")
	progress := func(pid int) int64 {
		t0 := cpuTicks(t, pid)
		time.Sleep(400 * time.Millisecond)
		return cpuTicks(t, pid) - t0
	}
	mustCr(t, "freeze", "/fz")
	l := ls(t)
	if l["/fz/a"].State != "frozen" || l["/fz/b"].State != "frozen" || l["/fz"].State != "frozen" {
		t.Fatalf("after freeze /fz: /fz=%s a=%s b=%s, want frozen (a node without processes of its own too)", l["/fz"].State, l["/fz/a"].State, l["/fz/b"].State)
	}
	if pa, pb := progress(a), progress(b); pa != 0 || pb != 0 {
		t.Errorf("frozen jobs made progress: %d and %d ticks", pa, pb)
	}
	mustCr(t, "thaw", "/fz")
	if l := ls(t); l["/fz/a"].State != "running" {
		t.Errorf("after thaw: %s, want running", l["/fz/a"].State)
	}
	if pa := progress(a); pa == 0 {
		t.Errorf("thawed job made no progress")
	}
	// Freezing a child leaves its sibling running.
	mustCr(t, "freeze", "/fz/a")
	if pb := progress(b); pb == 0 {
		t.Errorf("sibling of a frozen container made no progress")
	}
	mustCr(t, "thaw", "/fz/a")
}

func TestRename(t *testing.T) {
	start(t, "/rn/old", "sh", "-c", busy)
	start(t, "/rn/old/kid", "sleep", "1000")
	start(t, "/rn/taken", "sleep", "1000")
	before := ps(t, "/rn/old")
	kid := ps(t, "/rn/old/kid")
	mustCr(t, "freeze", "/rn/old")
	mustCr(t, "rename", "/rn/old", "/rn/new")
	killAtCleanup(t, "/rn/new")
	l := ls(t)
	if _, ok := l["/rn/old"]; ok {
		t.Errorf("/rn/old still listed after rename")
	}
	if l["/rn/new"].State != "frozen" || l["/rn/new/kid"].State != "frozen" {
		t.Errorf("renamed subtree: %+v %+v, want both frozen", l["/rn/new"], l["/rn/new/kid"])
	}
	after := ps(t, "/rn/new")
	if fmt.Sprint(before) != fmt.Sprint(after) || fmt.Sprint(kid) != fmt.Sprint(ps(t, "/rn/new/kid")) {
		t.Errorf("processes changed across rename: %v -> %v", before, after)
	}
	mustCr(t, "thaw", "/rn/new")
	wantFail(t, 4, "exists", "rename", "/rn/new", "/rn/taken")
	wantFail(t, 2, "a container cannot move under another parent", "rename", "/rn/new", "/elsewhere/new")
	wantFail(t, 3, "no such container", "rename", "/rn/nothing", "/rn/x")
	// A bare name is the sibling: /rn/new becomes /rn/newer, not /newer.
	killAtCleanup(t, "/rn")
	mustCr(t, "rename", "/rn/new", "newer")
	l = ls(t, "-r")
	if _, ok := l["/rn/newer"]; !ok || l["/rn/newer/kid"].State != "running" {
		t.Errorf("after cr rename /rn/new newer: %v", l)
	}
	if _, ok := l["/newer"]; ok {
		t.Errorf("cr rename /rn/new newer made /newer")
	}
	wantFail(t, 4, "exists", "rename", "/rn/newer", "taken")
}

func TestKillSubtree(t *testing.T) {
	start(t, "/kt/a", "sleep", "1000")
	start(t, "/kt/b/c", "sh", "-c", "trap '' TERM; "+busy) // ignores SIGTERM: needs SIGKILL
	start(t, "/kt/frozen", "sleep", "1000")
	mustCr(t, "freeze", "/kt/frozen")
	var pids []int
	for _, p := range []string{"/kt/a", "/kt/b/c", "/kt/frozen"} {
		for _, pr := range ps(t, p) {
			pids = append(pids, pr.HostPid)
		}
	}
	leavesBefore := countLeaves(t)
	mustCr(t, "kill", "--grace", "500ms", "/kt")
	for _, pid := range pids {
		if alive(pid) && !zombie(pid) {
			t.Errorf("pid %d survived cr kill", pid)
		}
	}
	if l := ls(t); len(filterPrefix(l, "/kt")) != 0 {
		t.Errorf("nodes left after kill: %v", filterPrefix(l, "/kt"))
	}
	// Five nodes went (/kt, /kt/a, /kt/b, /kt/b/c, /kt/frozen), and with
	// them their cgroups: every .tasks leaf left belongs to a listed node.
	if n := countLeaves(t); n != leavesBefore-5 || n != len(ls(t)) {
		t.Errorf(".tasks cgroups: %d before, %d after, %d nodes listed", leavesBefore, n, len(ls(t)))
	}
	wantFail(t, 3, "no such container", "kill", "/kt")
}

func TestSignal(t *testing.T) {
	start(t, "/sig", "sh", "-c", "trap 'echo got-hup' HUP; while :; do sleep 0.05; done")
	time.Sleep(200 * time.Millisecond)
	mustCr(t, "kill", "-s", "HUP", "/sig")
	waitFor(t, 5*time.Second, "the job to log the signal", func() bool {
		return strings.Contains(mustCr(t, "logs", "/sig"), "got-hup")
	})
	if ls(t)["/sig"].State != "running" {
		t.Errorf("cr kill -s HUP removed the container")
	}
	wantFail(t, 2, "invalid signal", "kill", "-s", "NOPE", "/sig")
}

func TestLogsAndPolicy(t *testing.T) {
	mustCr(t, "run", "/pol/gone", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
	mustCr(t, "run", "--on-empty", "keep", "/pol/kept", "--", "sh", "-c", "echo kept-output; exit 4")
	killAtCleanup(t, "/pol/kept")
	waitFor(t, 5*time.Second, "/pol/gone to be deleted", func() bool {
		_, ok := ls(t)["/pol/gone"]
		return !ok
	})
	var kept Entry
	waitFor(t, 5*time.Second, "/pol/kept to be empty", func() bool {
		kept = ls(t)["/pol/kept"]
		return kept.State == "empty" && kept.ExitCode != nil
	})
	if *kept.ExitCode != 4 {
		t.Errorf("exit code of kept job = %d, want 4", *kept.ExitCode)
	}
	if out := mustCr(t, "logs", "/pol/kept"); out != "kept-output\n" {
		t.Errorf("cr logs /pol/kept = %q", out)
	}
	// /pol survives: it still has /pol/kept.
	if _, ok := ls(t)["/pol"]; !ok {
		t.Errorf("/pol was removed while /pol/kept remains")
	}
	// The kept node's policy applies once killed: everything goes.
	mustCr(t, "kill", "/pol/kept")
	if _, ok := ls(t)["/pol"]; ok {
		t.Errorf("/pol (implicit) left after its last child went")
	}
}

func TestEnterAndViewerScope(t *testing.T) {
	start(t, "/vsrv", "sleep", "1000")
	start(t, "/vsrv/inner", "sleep", "1000")
	start(t, "/outside", "sleep", "1000")
	if out := mustCr(t, "enter", "/vsrv", "--", "hostname"); strings.TrimSpace(out) != "vsrv" {
		t.Errorf("hostname inside /vsrv = %q", out)
	}
	// A process inside /vsrv sees /vsrv as its root.
	out := mustCr(t, "enter", "/vsrv", "--", crBin, "ls", "-r")
	if !strings.Contains(out, "/inner") || strings.Contains(out, "/vsrv") || strings.Contains(out, "/outside") {
		t.Errorf("cr ls inside /vsrv:\n%s\nwant /inner only", out)
	}
	r := cr(t, "enter", "/vsrv", "--", crBin, "kill", "/outside")
	if r.code != 3 || !strings.Contains(r.err, "no such container") {
		t.Errorf("cr kill /outside from inside /vsrv: %s", r)
	}
	r = cr(t, "enter", "/vsrv", "--", crBin, "freeze", "/")
	if r.code == 0 {
		t.Errorf("cr freeze / from inside /vsrv succeeded")
	}
	r = cr(t, "enter", "/vsrv", "--", crBin, "rename", "/inner", "/../x")
	if r.code != 2 {
		t.Errorf("rename to /../x from inside: %s", r)
	}
	// What the inside names /inner is the host's /vsrv/inner.
	r = cr(t, "enter", "/vsrv", "--", crBin, "ps", "/inner")
	if r.code != 0 || !strings.Contains(r.out, "sleep 1000") {
		t.Errorf("cr ps /inner inside /vsrv: %s", r)
	}
	if l := ls(t); l["/outside"].State != "running" {
		t.Errorf("/outside disturbed: %+v", l["/outside"])
	}
	// Exit status of the entered command is cr enter's.
	if r := cr(t, "enter", "/vsrv", "--", "sh", "-c", "exit 7"); r.code != 7 {
		t.Errorf("cr enter exit status = %d, want 7", r.code)
	}
}

func TestBadInput(t *testing.T) {
	start(t, "/exists", "sleep", "1000")
	long := strings.Repeat("x", 65)
	for _, name := range []string{".", "..", "/a/../b", "/bad name", "/ctl\x01", "/" + long, "/.hidden", "/a//b"} {
		wantFail(t, 2, "invalid name", "run", name, "--", "true")
	}
	wantFail(t, 4, "exists", "run", "/exists", "--", "true")
	for _, args := range [][]string{
		{"ls", "/nope"}, {"ps", "/nope"}, {"freeze", "/nope"}, {"thaw", "/nope"}, {"kill", "/nope"},
		{"rename", "/nope", "/nope2"}, {"enter", "/nope", "--", "true"}, {"logs", "/nope"}, {"checkpoint", "/nope"},
	} {
		wantFail(t, 3, "no such container", args...)
	}
	wantFail(t, 2, "Error: accepts 1 arg(s), received 2\n", "freeze", "/exists", "/extra")
	wantFail(t, 2, "unknown flag", "ls", "--bogus")
	// A job that cannot start leaves nothing.
	cgBefore := cgroupDirs(t)
	wantFail(t, 1, "no such file", "run", "/broken/job", "--", "/does/not/exist")
	if _, ok := ls(t)["/broken"]; ok {
		t.Errorf("failed run left /broken")
	}
	if len(cgroupDirs(t)) != len(cgBefore) {
		t.Errorf("failed run left cgroups: %d before, %d after", len(cgBefore), len(cgroupDirs(t)))
	}
	// Not root.
	c := exec.Command(crBin, "ls")
	c.Env = append(os.Environ(), env...)
	c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := c.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 5 || !strings.Contains(string(out), "must run as root") {
		t.Errorf("cr ls as nobody: %v %s", err, out)
	}
	// Missing or broken CRIU.
	wantFail(t, 6, "criu", "checkpoint", "--criu", "/nonexistent/criu", "/exists")
	if ls(t)["/exists"].State != "running" {
		t.Errorf("a failed checkpoint disturbed the job")
	}
	// No cgroup hierarchy: hide every cgroup mount in a private mount namespace.
	c = exec.Command("unshare", "-m", "sh", "-c", "umount -R /sys/fs/cgroup && exec \"$0\" ls", crBin)
	c.Env = append(os.Environ(), env...)
	out, err = c.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 6 || !strings.Contains(string(out), "cgroup") {
		t.Errorf("cr ls without cgroups: %v %s", err, out)
	}
}

// cgroupDirs lists the private tree's cgroup directories, in the hierarchy
// cr uses.
func cgroupDirs(t testing.TB) []string {
	t.Helper()
	var dirs []string
	_ = filepath.WalkDir(cgBase, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if len(dirs) == 0 {
		if l := ls(t); len(l) > 0 {
			t.Fatalf("no cgroup under %s, yet cr lists %d nodes: the count reads the wrong hierarchy", cgBase, len(l))
		}
	}
	return dirs
}

// countLeaves counts the .tasks cgroups (one per node) of the private
// tree. It fails the test if it finds none while cr lists nodes: counts
// read in a hierarchy cr does not use would all be 0 and compare equal.
func countLeaves(t testing.TB) int {
	t.Helper()
	n := 0
	for _, d := range cgroupDirs(t) {
		if filepath.Base(d) == ".tasks" {
			n++
		}
	}
	if n == 0 {
		if l := ls(t); len(l) > 0 {
			t.Fatalf("no .tasks cgroup under %s, yet cr lists %d nodes: the count reads the wrong hierarchy", cgBase, len(l))
		}
	}
	return n
}

func filterPrefix(m map[string]Entry, p string) []string {
	var out []string
	for k := range m {
		if k == p || strings.HasPrefix(k, p+"/") {
			out = append(out, k)
		}
	}
	return out
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] == "Z"
}
