package limits

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cr-dev/cr/freeze"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "1g": 1 << 30, "64MiB": 64 << 20, "1000": 1000, "1.5k": 1536, "2T": 2 << 40} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1M", "M", "12x", "1e30G"} {
		if _, err := ParseSize(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSize(%q) = %v, want ErrInvalid", in, err)
		}
	}
	for _, b := range []int64{512 << 20, 1 << 30, 1536, 1000} {
		if got, _ := ParseSize(FormatSize(b)); got != b {
			t.Errorf("round trip of %d gave %d (%s)", b, got, FormatSize(b))
		}
	}
}

func TestAssignmentsAndMap(t *testing.T) {
	l, err := ParseAssignments(Limits{Pids: 5}, []string{"memory=1G", "cpus=1.5", "cpu-weight=200", "memory-high=900M"})
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{Memory: 1 << 30, MemoryHigh: 900 << 20, CPUs: 1.5, CPUWeight: 200, Pids: 5}
	if l != want {
		t.Fatalf("got %+v, want %+v", l, want)
	}
	if got := l.String(); got != "memory=1G memory-high=900M cpus=1.5 cpu-weight=200 pids=5" {
		t.Errorf("String() = %q", got)
	}
	back, err := FromMap(l.Map())
	if err != nil || back != l {
		t.Errorf("FromMap(Map()) = %+v, %v", back, err)
	}
	for _, bad := range []string{"memory", "swap=1G", "cpus=0", "pids=-3", "cpu-weight=0", "cpu-weight=10001"} {
		if _, err := ParseAssignments(Limits{}, []string{bad}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: %v, want ErrInvalid", bad, err)
		}
	}
	if (Limits{}).String() != "-" || (Limits{}).Map() != nil {
		t.Error("empty limits should print - and map to nil")
	}
}

func TestCheckNested(t *testing.T) {
	anc := map[string]Limits{"/a": {Memory: 1 << 30}, "/a/b": {Pids: 100, CPUs: 2}}
	for _, ok := range []Limits{{}, {Memory: 1 << 30}, {Memory: 1 << 20, Pids: 100, CPUs: 1.5}, {CPUWeight: 10000}} {
		if err := CheckNested(ok, anc); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	err := CheckNested(Limits{Memory: 2 << 30}, anc)
	if !errors.Is(err, ErrExceedsParent) || err.Error() != "limit exceeds an ancestor's: memory=2G is more than /a's memory=1G" {
		t.Errorf("got %v", err)
	}
	if err := CheckNested(Limits{Pids: 101}, anc); !errors.Is(err, ErrExceedsParent) {
		t.Errorf("pids: %v", err)
	}
	if err := CheckNested(Limits{CPUs: 2.5}, anc); !errors.Is(err, ErrExceedsParent) {
		t.Errorf("cpus: %v", err)
	}
	err = CheckChildren("/a", Limits{Memory: 1 << 20}, map[string]Limits{"/a/b": {Memory: 1 << 30}})
	if !errors.Is(err, ErrExceedsParent) || !strings.HasPrefix(err.Error(), "/a/b: ") {
		t.Errorf("children: %v", err)
	}
}

// fakeV1 lays out a hybrid host in a temp directory: an empty v2 hierarchy
// and memory, cpu,cpuacct and pids v1 hierarchies, with a mountinfo.
func fakeHybrid(t *testing.T) (freeze.Hierarchy, string, string) {
	root := t.TempDir()
	var mi strings.Builder
	line := func(n int, point, fstype, opts string) {
		fmt.Fprintf(&mi, "%d 1 0:%d / %s rw,relatime - %s %s rw,%s\n", n, n, point, fstype, fstype, opts)
	}
	uni := filepath.Join(root, "unified")
	must(t, os.MkdirAll(uni, 0o755))
	must(t, os.WriteFile(filepath.Join(uni, "cgroup.controllers"), nil, 0o644))
	line(1, uni, "cgroup2", "nsdelegate")
	for i, h := range []string{"memory", "cpu,cpuacct", "pids", "freezer"} {
		must(t, os.MkdirAll(filepath.Join(root, h), 0o755))
		line(10+i, filepath.Join(root, h), "cgroup", h)
	}
	mip := filepath.Join(root, "mountinfo")
	must(t, os.WriteFile(mip, []byte(mi.String()), 0o644))
	return freeze.Hierarchy{Version: 2, Mount: uni, Hybrid: true}, mip, root
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestHybridLayout(t *testing.T) {
	h, mip, root := fakeHybrid(t)
	l, err := DetectFrom(mip, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.V2) != 0 || l.V1["memory"] != filepath.Join(root, "memory") || l.V1["cpu"] != filepath.Join(root, "cpu,cpuacct") || l.V1["pids"] != filepath.Join(root, "pids") {
		t.Fatalf("layout %+v", l)
	}
	rel := "cr/a/b"
	if got := l.Mirrors(rel); len(got) != 3 || got[0] != filepath.Join(root, "memory", rel) {
		t.Fatalf("mirrors %v", got)
	}
	if r, ok := l.Rel(filepath.Join(h.Mount, rel)); !ok || r != rel {
		t.Fatalf("Rel = %q %v", r, ok)
	}
	if _, ok := l.Rel(filepath.Join(root, "memory")); ok {
		t.Fatal("Rel accepted a path outside the base")
	}
	lim := Limits{Memory: 64 << 20, CPUs: 1.5, CPUWeight: 200, Pids: 10}
	must(t, l.Apply(rel, lim))
	for file, want := range map[string]string{
		"memory/cr/a/b/memory.limit_in_bytes":  "67108864",
		"cpu,cpuacct/cr/a/b/cpu.cfs_period_us": "100000",
		"cpu,cpuacct/cr/a/b/cpu.cfs_quota_us":  "150000",
		"cpu,cpuacct/cr/a/b/cpu.shares":        "2048",
		"pids/cr/a/b/pids.max":                 "10",
	} {
		if got := readFile(t, filepath.Join(root, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	got, err := l.Read(rel)
	if err != nil || got != lim {
		t.Errorf("Read = %+v, %v; want %+v", got, err, lim)
	}
	if err := l.Apply(rel, Limits{MemoryHigh: 1 << 20}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("memory-high on v1: %v", err)
	}
	must(t, l.Apply(rel, Limits{}))
	if got := readFile(t, filepath.Join(root, "pids", rel, "pids.max")); got != "max" {
		t.Errorf("unset pids.max = %q", got)
	}
	if got := readFile(t, filepath.Join(root, "memory", rel, "memory.limit_in_bytes")); got != "-1" {
		t.Errorf("unset memory = %q", got)
	}
}

func TestV2Layout(t *testing.T) {
	root := t.TempDir()
	must(t, os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu io memory pids\n"), 0o644))
	mip := filepath.Join(root, "mountinfo")
	must(t, os.WriteFile(mip, []byte("1 0 0:1 / "+root+" rw - cgroup2 cgroup2 rw\n"), 0o644))
	h := freeze.Hierarchy{Version: 2, Mount: root}
	rel := "cr/a"
	for _, d := range []string{"", "cr", "cr/a"} {
		must(t, os.MkdirAll(filepath.Join(root, d), 0o755))
		// A real cgroupfs adds "+ctrl" to the list; a plain file takes the last write.
		must(t, os.WriteFile(filepath.Join(root, d, "cgroup.subtree_control"), nil, 0o644))
	}
	l, err := DetectFrom(mip, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.V1) != 0 || !l.V2["memory"] || !l.V2["cpu"] || !l.V2["pids"] || l.Mirrors(rel) != nil {
		t.Fatalf("layout %+v", l)
	}
	lim := Limits{Memory: 512 << 20, MemoryHigh: 256 << 20, CPUs: 0.5, CPUWeight: 50, Pids: 200}
	must(t, l.Apply(rel, lim))
	for file, want := range map[string]string{
		"cr/a/memory.max":  "536870912",
		"cr/a/memory.high": "268435456",
		"cr/a/cpu.max":     "50000 100000",
		"cr/a/cpu.weight":  "50",
		"cr/a/pids.max":    "200",
		// Each ancestor of the cgroup enabled the controllers for it
		// (the fake file keeps the last one written).
		"cgroup.subtree_control":    "+pids",
		"cr/cgroup.subtree_control": "+pids",
	} {
		if got := readFile(t, filepath.Join(root, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if got := readFile(t, filepath.Join(root, "cr/a/cgroup.subtree_control")); got != "" {
		t.Errorf("the limited cgroup itself got controllers enabled: %q", got)
	}
	got, err := l.Read(rel)
	if err != nil || got != lim {
		t.Errorf("Read = %+v, %v; want %+v", got, err, lim)
	}
}

func TestMissingController(t *testing.T) {
	l := Layout{Base: t.TempDir(), V2: map[string]bool{}, V1: map[string]string{}}
	err := l.Apply("cr/x", Limits{Pids: 3})
	if !errors.Is(err, ErrUnsupported) || err.Error() != "controller not available: pids needs the pids controller" {
		t.Errorf("got %v", err)
	}
}
