package e2e

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/limits"
)

// limitsLayout is where this host's memory, cpu and pids controllers are.
func limitsLayout(t *testing.T) limits.Layout {
	t.Helper()
	h, err := freeze.Detect()
	if err != nil {
		t.Fatal(err)
	}
	l, err := limits.Detect(h)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"memory", "cpu", "pids"} {
		if !l.V2[c] && l.V1[c] == "" {
			t.Fatalf("this host has no %s controller", c)
		}
	}
	return l
}

// nodeRel is the node's cgroup relative to the hierarchy's mount:
// <parent>/<id>/<id>..., from cr ls --json's ids.
func nodeRel(t *testing.T, path string) string {
	t.Helper()
	return nodeRelIn(t, func(args ...string) string { return mustCr(t, args...) }, cgName, path)
}

// nodeRelIn is nodeRel for the tree that crf runs cr on, whose cgroup
// parent is cg.
func nodeRelIn(t *testing.T, crf func(...string) string, cg, path string) string {
	t.Helper()
	var es []struct {
		Path string `json:"path"`
		ID   string `json:"id"`
	}
	if err := json.Unmarshal([]byte(crf("ls", "--json", "-r")), &es); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, e := range es {
		ids[e.Path] = e.ID
	}
	rel := cg
	for i := 1; i <= len(path); i++ {
		if i == len(path) || path[i] == '/' {
			id, ok := ids[path[:i]]
			if !ok {
				t.Fatalf("%s not in cr ls", path[:i])
			}
			rel += "/" + id
		}
	}
	return rel
}

// inLimitedCgroups checks that each of the container's processes is in
// the node's leaf of every controller hierarchy.
func inLimitedCgroups(t *testing.T, l limits.Layout, path string) {
	t.Helper()
	inLimitedCgroupsIn(t, l, func(args ...string) string { return mustCr(t, args...) }, cgName, path)
}

func inLimitedCgroupsIn(t *testing.T, l limits.Layout, crf func(...string) string, cg, path string) {
	t.Helper()
	want := "/" + nodeRelIn(t, crf, cg, path) + "/.tasks"
	var procs []Proc
	if err := json.Unmarshal([]byte(crf("ps", "--json", path)), &procs); err != nil {
		t.Fatal(err)
	}
	if len(procs) == 0 {
		t.Fatalf("%s has no processes", path)
	}
	checked := 0
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.HostPid), "cgroup"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // a short-lived process of the job, gone since cr ps
		}
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, c := range []string{"memory", "cpu", "pids", "io"} {
			if l.V2[c] || l.V1[c] == "" {
				continue
			}
			v1 := c
			if c == "io" {
				v1 = "blkio"
			}
			found := false
			for _, line := range strings.Split(string(b), "\n") {
				f := strings.SplitN(line, ":", 3)
				if len(f) == 3 && strings.Contains(","+f[1]+",", ","+v1+",") {
					found = true
					if f[2] != want {
						t.Errorf("process %d (%s) is in %s cgroup %s, want %s", p.HostPid, p.Command, c, f[2], want)
					}
				}
			}
			if !found {
				t.Errorf("process %d has no %s cgroup", p.HostPid, c)
			}
		}
	}
	if checked == 0 {
		t.Fatalf("every process of %s was gone before its cgroups were read", path)
	}
}

func TestLimitsMemoryOOM(t *testing.T) {
	l := limitsLayout(t)
	mustCr(t, "run", "--memory", "64M", "--on-empty", "keep", "/oom", "--", jobBin, "--report", filepath.Join(t.TempDir(), "r"), "--mem", "128")
	killAtCleanup(t, "/oom")
	got, err := l.Read(nodeRel(t, "/oom"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Memory != 64<<20 {
		t.Errorf("memory limit read back = %d, want %d", got.Memory, 64<<20)
	}
	var e Entry
	waitFor(t, 60*time.Second, "the job to be killed", func() bool {
		e = ls(t)["/oom"]
		return e.ExitCode != nil
	})
	if *e.ExitCode != 128+9 {
		t.Errorf("job exited %d, want 137 (killed by the OOM killer)", *e.ExitCode)
	}
}

func TestLimitsPids(t *testing.T) {
	l := limitsLayout(t)
	out := filepath.Join(t.TempDir(), "forked")
	// The job forks children that sleep until a fork fails, then reports
	// how many it started and why it stopped. pids.max counts every task
	// of the container: the init's threads, the job, its children.
	script := `my ($n, $e) = (0, ""); while ($n < 30) { my $p = fork(); unless (defined $p) { $e = "$!"; last } if ($p == 0) { sleep 1000; exit 0 } $n++ }
open(my $f, ">", "` + out + `.tmp") or die; print $f "$n $e\n"; close $f; rename("` + out + `.tmp", "` + out + `"); sleep 1000;`
	mustCr(t, "run", "--pids", "10", "/pids", "--", "/usr/bin/perl", "-e", script)
	killAtCleanup(t, "/pids")
	rel := nodeRel(t, "/pids")
	got, err := l.Read(rel)
	if err != nil {
		t.Fatal(err)
	}
	if got.Pids != 10 {
		t.Errorf("pids limit read back = %d, want 10", got.Pids)
	}
	waitFor(t, 30*time.Second, "the job to stop forking", func() bool {
		_, err := os.Stat(out)
		return err == nil
	})
	b, _ := os.ReadFile(out)
	var forked int
	var why string
	if f := strings.SplitN(strings.TrimSpace(string(b)), " ", 2); len(f) == 2 {
		forked, _ = strconv.Atoi(f[0])
		why = f[1]
	}
	if why != "Resource temporarily unavailable" || forked < 1 || forked >= 9 {
		t.Errorf("the job forked %d children and stopped with %q, want a fork refused with EAGAIN before the 10th task", forked, why)
	}
	inLimitedCgroups(t, l, "/pids")
	dir := filepath.Join(l.V1["pids"], rel)
	if l.V2["pids"] {
		dir = filepath.Join(l.Base, rel)
	}
	cur, _ := os.ReadFile(filepath.Join(dir, "pids.current"))
	if c := strings.TrimSpace(string(cur)); c != "10" {
		t.Errorf("pids.current = %q, want 10 (the limit reached)", c)
	}
	tasks := 0
	for _, p := range ps(t, "/pids") {
		ents, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(p.HostPid), "task"))
		tasks += len(ents)
	}
	if tasks != 10 || len(ps(t, "/pids")) != forked+2 {
		t.Errorf("%d tasks in %d processes in a --pids 10 container (forked %d)", tasks, len(ps(t, "/pids")), forked)
	}
}

func TestLimitsNest(t *testing.T) {
	start(t, "/lp", "sleep", "1000")
	mustCr(t, "set", "/lp", "memory=64M", "pids=50")
	wantFail(t, 2, "invalid limits: /lp/c: limit exceeds an ancestor's: memory=128M is more than /lp's memory=64M",
		"run", "--memory", "128M", "/lp/c", "--", "sleep", "1000")
	if _, ok := ls(t)["/lp/c"]; ok {
		t.Fatal("a refused cr run left its node")
	}
	out := mustCr(t, "run", "--memory", "32M", "/lp/c", "--", "sleep", "1000")
	if strings.TrimSpace(out) != "/lp/c" {
		t.Fatalf("cr run printed %q", out)
	}
	wantFail(t, 2, "invalid limits: /lp/c: limit exceeds an ancestor's: pids=60 is more than /lp's pids=50", "set", "/lp/c", "pids=60")
	wantFail(t, 2, "/lp/c: limit exceeds an ancestor's: memory=32M is more than /lp's memory=16M", "set", "/lp", "memory=16M")
	wantFail(t, 2, `unknown limit "swap"`, "set", "/lp", "swap=1G")
	if got := mustCr(t, "set", "/lp/c", "cpus=0.5"); got != "/lp/c: memory=32M cpus=0.5\n" {
		t.Errorf("cr set printed %q", got)
	}
	var es []struct {
		Path   string            `json:"path"`
		Limits map[string]string `json:"limits"`
	}
	if err := json.Unmarshal([]byte(mustCr(t, "ls", "--json", "-r")), &es); err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Path == "/lp" && (e.Limits["memory"] != "64M" || e.Limits["pids"] != "50") {
			t.Errorf("cr ls --json: /lp limits %v", e.Limits)
		}
	}
}

func TestLimitsSurviveCheckpoint(t *testing.T) {
	l := limitsLayout(t)
	mustCr(t, "run", "--memory", "256M", "--cpus", "1.5", "--pids", "100", "/lck", "--", jobBin, "--report", filepath.Join(t.TempDir(), "r"), "--mem", "16", "--children", "2")
	killAtCleanup(t, "/lck")
	inLimitedCgroups(t, l, "/lck")
	img := image(t)
	mustCr(t, "checkpoint", "/lck", "-o", img)
	if out := mustCr(t, "inspect", img); !strings.Contains(out, "  limits: memory=256M cpus=1.5 pids=100\n") {
		t.Errorf("cr inspect shows no limits:\n%s", out)
	}
	// Under a parent with less memory the image's limits are refused, and
	// nothing is restored.
	start(t, "/small", "sleep", "1000")
	mustCr(t, "set", "/small", "memory=64M")
	wantFail(t, 2, "/small/lck: limit exceeds an ancestor's: memory=256M is more than /small's memory=64M", "restore", img, "--as", "/small/lck")
	if _, ok := ls(t)["/small/lck"]; ok {
		t.Error("a refused restore left its node")
	}
	for _, as := range []string{"", "/lck2"} {
		args := []string{"restore", img}
		path := "/lck"
		if as != "" {
			args, path = append(args, "--as", as), as
		}
		mustCr(t, args...)
		got, err := l.Read(nodeRel(t, path))
		if err != nil {
			t.Fatal(err)
		}
		if want := (limits.Limits{Memory: 256 << 20, CPUs: 1.5, Pids: 100}); got != want {
			t.Errorf("%s: limits after restore %+v, want %+v", path, got, want)
		}
		inLimitedCgroups(t, l, path)
		if evs := events(t, path); len(evs) == 0 || evs[len(evs)-1].Type != "restored" {
			t.Errorf("cr events %s: %s, want restored last", path, types(evs))
		}
		if as == "" {
			mustCr(t, "kill", "--grace", "1s", path)
			waitFor(t, 10*time.Second, path+" to go", func() bool { _, ok := ls(t)[path]; return !ok })
		} else {
			killAtCleanup(t, path)
		}
	}
}

func TestLimitsViewer(t *testing.T) {
	l := limitsLayout(t)
	start(t, "/vsl", "sleep", "1000")
	start(t, "/vsl/inner", "sleep", "1000")
	// From inside /vsl its own limits are read-only; those below are not.
	r := cr(t, "enter", "/vsl", "--", crBin, "set", "/", "memory=1G")
	if r.code != 5 || !strings.Contains(r.err, `"/" is your own container`) {
		t.Errorf("cr set / from inside /vsl: %s", r)
	}
	r = cr(t, "enter", "/vsl", "--", crBin, "set", "/inner", "memory=64M")
	if r.code != 0 || r.out != "/inner: memory=64M\n" {
		t.Errorf("cr set /inner from inside /vsl: %s", r)
	}
	if got, err := l.Read(nodeRel(t, "/vsl/inner")); err != nil || got.Memory != 64<<20 {
		t.Errorf("/vsl/inner limits %+v, %v", got, err)
	}
	if got, err := l.Read(nodeRel(t, "/vsl")); err != nil || got.Memory != 0 {
		t.Errorf("/vsl limits %+v, %v: want none", got, err)
	}
	inLimitedCgroups(t, l, "/vsl/inner")
	// cr enter puts its command in the limited cgroups too (seen from
	// inside the container's cgroup namespace: its leaf is the root).
	out := mustCr(t, "enter", "/vsl/inner", "--", "cat", "/proc/self/cgroup")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && (strings.Contains(f[1], "memory") || strings.Contains(f[1], "pids")) && f[2] != "/" {
			t.Errorf("cr enter's command is outside the container's %s cgroup: %s", f[1], line)
		}
	}
	if !strings.Contains(out, "memory:/\n") {
		t.Errorf("cr enter's command has no memory cgroup of the container:\n%s", out)
	}
}

func TestLimitsMigrate(t *testing.T) {
	l := limitsLayout(t)
	h := newHost(t, "token")
	mustCr(t, "run", "--memory", "128M", "--cpus", "0.5", "--pids", "50", "/mlim", "--", "sleep", "1000")
	killAtCleanup(t, "/mlim")
	mustCr(t, migrateArgs(h, "/mlim")...)
	dst := func(args ...string) string { return h.mustCr(t, args...) }
	got, err := l.Read(nodeRelIn(t, dst, h.cg, "/mlim"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (limits.Limits{Memory: 128 << 20, CPUs: 0.5, Pids: 50}); got != want {
		t.Errorf("limits at the destination %+v, want %+v", got, want)
	}
	inLimitedCgroupsIn(t, l, dst, h.cg, "/mlim")
	// Each side's journal has its half of the move.
	if got := types(events(t, "/mlim")); got != "started migrated_out removed" {
		t.Errorf("cr events /mlim at the source: %s", got)
	}
	if got := types(eventsOf(t, dst, "/mlim")); got != "migrated_in" {
		t.Errorf("cr events /mlim at the destination: %s", got)
	}
	h.mustCr(t, "kill", "--grace", "1s", "/mlim")
}
