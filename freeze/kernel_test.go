package freeze

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKernel freezes a busy process through the real cgroup freezers of
// this machine and checks, by its CPU time, that it stops and resumes.
func TestKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	h, err := Detect()
	if err != nil {
		t.Fatalf("Detect: %v", err)
	}
	t.Run("v2", func(t *testing.T) {
		if h.Version != 2 {
			t.Skip("no cgroup v2 hierarchy mounted")
		}
		testKernel(t, h.Mount, &v2{})
	})
	t.Run("v1", func(t *testing.T) {
		if h.V1Freezer == "" {
			t.Skip("no cgroup v1 freezer hierarchy mounted")
		}
		testKernel(t, h.V1Freezer, &v1{})
	})
}

func testKernel(t *testing.T, hier string, wantType Freezer) {
	parent, err := os.MkdirTemp(hier, "cr-freeze-test-")
	if err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(parent, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		os.Remove(parent)
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	t.Cleanup(func() {
		// Thaw first: a v1-frozen task does not die until thawed.
		for _, dir := range []string{parent, child} {
			writeFile(dir, v2FreezeFile, "0")
			writeFile(dir, v1StateFile, v1Thawed)
		}
		if cmd != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		for _, dir := range []string{child, parent} {
			if err := os.Remove(dir); err != nil {
				t.Errorf("remove test cgroup: %v", err)
			}
		}
	})

	cmd = exec.Command("sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		cmd = nil
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if err := writeFile(child, "cgroup.procs", strconv.Itoa(pid)); err != nil {
		t.Fatalf("move busy process into %s: %v", child, err)
	}

	pf, err := New(parent)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := New(child)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := pf.(*v2); ok != isV2(wantType) {
		t.Fatalf("New(%s) = %T, want %T", parent, pf, wantType)
	}

	const window = 300 * time.Millisecond
	if n := runs(t, pid); n < 3 {
		t.Fatalf("busy process used %d ticks in %v before freezing; the measure is broken", n, runsWithin)
	}
	wantState(t, pf, Thawed)

	ctx, cancel := WithTimeout(t.Context(), 0)
	defer cancel()
	if err := pf.Freeze(ctx); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	wantState(t, pf, Frozen)
	wantState(t, cf, Frozen) // frozen by its parent
	if n := cpuTicks(t, pid, window); n != 0 {
		t.Errorf("frozen process used %d ticks in %v", n, window)
	}

	start := time.Now()
	if err := cf.Thaw(ctx); !errors.Is(err, ErrAncestorFrozen) {
		t.Errorf("Thaw of the child of a frozen cgroup: error = %v, want ErrAncestorFrozen", err)
	} else if !strings.Contains(err.Error(), parent) {
		t.Errorf("error %q does not name the frozen parent %s", err, parent)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Thaw under a frozen parent took %v", d)
	}
	wantState(t, cf, Frozen)
	if n := cpuTicks(t, pid, window); n != 0 {
		t.Errorf("process under a frozen parent used %d ticks in %v", n, window)
	}

	if err := pf.Thaw(ctx); err != nil {
		t.Fatalf("Thaw: %v", err)
	}
	wantState(t, pf, Thawed)
	wantState(t, cf, Thawed)
	if n := runs(t, pid); n < 3 {
		t.Errorf("thawed process used %d ticks in %v; it did not resume", n, runsWithin)
	}

	// The child alone.
	if err := cf.Freeze(ctx); err != nil {
		t.Fatalf("Freeze child: %v", err)
	}
	wantState(t, pf, Thawed)
	if n := cpuTicks(t, pid, window); n != 0 {
		t.Errorf("process in a frozen child used %d ticks in %v", n, window)
	}
	if err := cf.Thaw(ctx); err != nil {
		t.Fatalf("Thaw child: %v", err)
	}
	if n := runs(t, pid); n < 3 {
		t.Errorf("process in a thawed child used %d ticks in %v; it did not resume", n, runsWithin)
	}
}

func isV2(f Freezer) bool {
	_, ok := f.(*v2)
	return ok
}

// cpuTicks returns the clock ticks (user and system) that pid used over d.
// runsWithin bounds how long runs waits: on a loaded machine a busy
// process may get only a few ticks in the window the frozen checks use.
const runsWithin = 5 * time.Second

// runs returns the ticks pid used from now until it has used 3, or
// runsWithin has passed.
func runs(t *testing.T, pid int) int {
	t.Helper()
	before := procTicks(t, pid)
	for end := time.Now().Add(runsWithin); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if n := procTicks(t, pid) - before; n >= 3 {
			return n
		}
	}
	return procTicks(t, pid) - before
}

func cpuTicks(t *testing.T, pid int, d time.Duration) int {
	t.Helper()
	before := procTicks(t, pid)
	time.Sleep(d)
	return procTicks(t, pid) - before
}

// procTicks reads utime+stime, fields 14 and 15 of /proc/PID/stat.
func procTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	// Fields after the command name, which may hold spaces: field 3 on.
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		t.Fatalf("short /proc/%d/stat: %q", pid, s)
	}
	utime, err1 := strconv.Atoi(fields[14-3])
	stime, err2 := strconv.Atoi(fields[15-3])
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("parse /proc/%d/stat: %v", pid, err)
	}
	return utime + stime
}
