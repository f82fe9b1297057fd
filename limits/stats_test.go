package limits

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/cr-dev/cr/freeze"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		must(t, os.MkdirAll(filepath.Dir(full), 0o755))
		must(t, os.WriteFile(full, []byte(content), 0o644))
	}
}

const pressure = "some avg10=1.50 avg60=0.25 avg300=0.05 total=2500000\nfull avg10=0.50 avg60=0.00 avg300=0.00 total=1000000\n"

func TestStatsHybrid(t *testing.T) {
	h, mip, root := fakeHybrid(t)
	must(t, os.MkdirAll(filepath.Join(root, "blkio"), 0o755))
	b, _ := os.ReadFile(mip)
	must(t, os.WriteFile(mip, append(b, []byte("30 1 0:30 / "+filepath.Join(root, "blkio")+" rw - cgroup cgroup rw,blkio\n")...), 0o644))
	l, err := DetectFrom(mip, h)
	if err != nil {
		t.Fatal(err)
	}
	rel := "cr/a"
	writeFiles(t, root, map[string]string{
		// v2 keeps CPU time and PSI without any controller.
		"unified/cr/a/cgroup.controllers":                      "",
		"unified/cr/a/cpu.stat":                                "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
		"unified/cr/a/cpu.pressure":                            pressure,
		"unified/cr/a/memory.pressure":                         "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
		"cpu,cpuacct/cr/a/cpu.stat":                            "nr_periods 100\nnr_throttled 7\nthrottled_time 350000000\n",
		"memory/cr/a/memory.usage_in_bytes":                    "104857600\n",
		"memory/cr/a/memory.max_usage_in_bytes":                "134217728\n",
		"memory/cr/a/memory.limit_in_bytes":                    "9223372036854771712\n",
		"memory/cr/a/memory.stat":                              "cache 1000\ntotal_inactive_file 4857600\n",
		"memory/cr/a/memory.oom_control":                       "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
		"memory/cr/a/.tasks/memory.oom_control":                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		"memory/cr/a/b/.tasks/memory.oom_control":              "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
		"memory/cr/a/memory.failcnt":                           "42\n",
		"pids/cr/a/pids.current":                               "5\n",
		"pids/cr/a/pids.max":                                   "max\n",
		"pids/cr/a/pids.events":                                "max 3\n",
		"pids/cr/a/.tasks/pids.events":                         "max 4\n",
		"blkio/cr/a/blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:16 Read 1\n8:0 Total 12288\nTotal 12289\n",
		"blkio/cr/a/blkio.bfq.weight":                          "100\n",
	})
	got := l.Stats(rel)
	want := Stats{
		CPU:    &CPUStats{UsageSeconds: 2.5, UserSeconds: 2, SystemSeconds: 0.5, Periods: 100, ThrottledPeriods: 7, ThrottledSeconds: 0.35},
		Memory: &MemoryStats{CurrentBytes: 100 << 20, UsageBytes: 100<<20 - 4857600, PeakBytes: 128 << 20, OOMKills: 3},
		Pids:   &PidsStats{Current: 5},
		IO:     &IOStats{ReadBytes: 4097, WriteBytes: 8192},
		Pressure: &PressureStats{
			CPU:    &Pressure{Some: PressureLine{1.5, 0.25, 0.05, 2.5}, Full: &PressureLine{0.5, 0, 0, 1}},
			Memory: &Pressure{Full: &PressureLine{}},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Stats:\n got %s\nwant %s", show(got), show(want))
	}
	if c := l.Counters(rel, rel+"/.tasks"); c != (Counters{MemoryMax: 42, OOMKill: 2, PidsMax: 7}) {
		t.Errorf("Counters = %+v", c)
	}
	// Only the leaf, seen at the roots of the mounts (inside --mount).
	leafOnly := Layout{Base: filepath.Join(l.Base, rel, ".tasks"), V2: l.V2, V1: map[string]string{}}
	for c, m := range l.V1 {
		leafOnly.V1[c] = filepath.Join(m, rel, ".tasks")
	}
	if c := leafOnly.Counters("", "."); c != (Counters{OOMKill: 2, PidsMax: 4}) {
		t.Errorf("Counters of the leaf alone = %+v", c)
	}
	// The block I/O weight goes to the file the host has.
	must(t, l.Apply(rel, Limits{BlkioWeight: 500}))
	if got := readFile(t, filepath.Join(root, "blkio", rel, "blkio.bfq.weight")); got != "500" {
		t.Errorf("blkio.bfq.weight = %q", got)
	}
	if got, _ := l.Read(rel); got.BlkioWeight != 500 {
		t.Errorf("read back %+v", got)
	}
	must(t, os.Remove(filepath.Join(root, "blkio", rel, "blkio.bfq.weight")))
	err = l.Apply(rel, Limits{BlkioWeight: 500})
	if !errors.Is(err, ErrUnsupported) || err.Error() != "controller not available: blkio-weight needs blkio.weight or blkio.bfq.weight, which the blkio controller does not offer here" {
		t.Errorf("no weight file: %v", err)
	}
	must(t, l.Apply(rel, Limits{})) // the default needs no file
}

func TestStatsV2(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"cgroup.controllers":              "cpu io memory pids\n",
		"cr/a/cgroup.controllers":         "cpu io memory pids\n",
		"cr/a/cpu.stat":                   "usage_usec 1000000\nuser_usec 600000\nsystem_usec 400000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 20000\n",
		"cr/a/memory.current":             "67108864\n",
		"cr/a/memory.peak":                "70000000\n",
		"cr/a/memory.max":                 "134217728\n",
		"cr/a/memory.stat":                "anon 60000000\ninactive_file 1048576\n",
		"cr/a/memory.events":              "low 0\nhigh 4\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n",
		"cr/a/memory.events.local":        "low 0\nhigh 4\nmax 9\noom 1\noom_kill 0\noom_group_kill 0\n",
		"cr/a/.tasks/memory.events.local": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 1\noom_group_kill 0\n",
		"cr/a/pids.current":               "12\n",
		"cr/a/pids.max":                   "200\n",
		"cr/a/pids.events":                "max 6\n",
		"cr/a/io.stat":                    "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n",
		"cr/a/io.weight":                  "default 100\n",
		"cr/a/io.pressure":                pressure,
	})
	mip := filepath.Join(root, "mountinfo")
	must(t, os.WriteFile(mip, []byte("1 0 0:1 / "+root+" rw - cgroup2 cgroup2 rw\n"), 0o644))
	l, err := DetectFrom(mip, hierV2(root))
	if err != nil {
		t.Fatal(err)
	}
	got := l.Stats("cr/a")
	want := Stats{
		CPU:      &CPUStats{UsageSeconds: 1, UserSeconds: 0.6, SystemSeconds: 0.4, Periods: 10, ThrottledPeriods: 2, ThrottledSeconds: 0.02},
		Memory:   &MemoryStats{CurrentBytes: 64 << 20, UsageBytes: 63 << 20, PeakBytes: 70000000, LimitBytes: 128 << 20, OOMKills: 1},
		Pids:     &PidsStats{Current: 12, Max: 200},
		IO:       &IOStats{ReadBytes: 101, WriteBytes: 202},
		Pressure: &PressureStats{IO: &Pressure{Some: PressureLine{1.5, 0.25, 0.05, 2.5}, Full: &PressureLine{0.5, 0, 0, 1}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Stats:\n got %s\nwant %s", show(got), show(want))
	}
	if c := l.Counters("cr/a", "cr/a/.tasks"); c != (Counters{MemoryHigh: 4, MemoryMax: 9, OOMKill: 1, PidsMax: 6}) {
		t.Errorf("Counters = %+v", c)
	}
	writeFiles(t, root, map[string]string{"cgroup.subtree_control": "", "cr/cgroup.subtree_control": ""})
	must(t, l.Apply("cr/a", Limits{BlkioWeight: 50}))
	if got := readFile(t, filepath.Join(root, "cr/a/io.weight")); got != "50" {
		t.Errorf("io.weight = %q", got)
	}
}

func hierV2(root string) freeze.Hierarchy { return freeze.Hierarchy{Version: 2, Mount: root} }

func show(s Stats) string {
	b, _ := json.Marshal(s)
	return string(b)
}
