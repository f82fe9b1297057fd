package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestSelectWorkloads(t *testing.T) {
	names := func(ws []Workload) []string {
		var n []string
		for _, w := range ws {
			n = append(n, w.Name)
		}
		return n
	}
	all, err := selectWorkloads(nil, false)
	if err != nil || !slices.Equal(names(all), workloadNames()) {
		t.Fatalf("all: %v, %v", names(all), err)
	}
	quick, _ := selectWorkloads(nil, true)
	if slices.Contains(names(quick), bigWorkload) || len(quick) != len(all)-1 {
		t.Errorf("-quick ran %v", names(quick))
	}
	// -only wins over -quick, and keeps the fixed order.
	only, _ := selectWorkloads([]string{"procs-50", bigWorkload}, true)
	if !slices.Equal(names(only), []string{bigWorkload, "procs-50"}) {
		t.Errorf("-only: %v", names(only))
	}
	if _, err := selectWorkloads([]string{"nope"}, false); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown workload: %v", err)
	}
}

func TestRunsFor(t *testing.T) {
	if runsFor("mem-1G", 4) != 4 || runsFor(bigWorkload, 4) != 2 || runsFor(bigWorkload, 1) != 1 {
		t.Error("runsFor")
	}
}

func TestWorkloadArgs(t *testing.T) {
	w := Workload{MemMiB: 256, Children: 49}
	if got := strings.Join(w.Args(), " "); got != "--mem 256 --children 49" {
		t.Errorf("args %q", got)
	}
	if w.Processes() != 50 {
		t.Errorf("processes %d", w.Processes())
	}
	if len((Workload{}).Args()) != 0 {
		t.Error("trivial job has flags")
	}
}

func TestPickFreezer(t *testing.T) {
	hybrid := "9:name=systemd:/\n6:freezer:/f/x\n4:memory:/m\n0::/cr/a/b/.tasks\n"
	all := func(string) bool { return true }
	none := func(string) bool { return false }

	got, err := pickFreezer(hybrid, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/freezer", all)
	if err != nil || got != (cgLeaf{Abs: "/sys/fs/cgroup/unified/cr/a/b/.tasks", Rel: "/cr/a/b/.tasks"}) {
		t.Errorf("v2: %+v %v", got, err)
	}
	// A v2 hierarchy without cgroup.freeze: the v1 freezer.
	got, err = pickFreezer(hybrid, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/freezer", none)
	if err != nil || got != (cgLeaf{Abs: "/sys/fs/cgroup/freezer/f/x", Rel: "/f/x", Ctrl: "freezer"}) {
		t.Errorf("v1: %+v %v", got, err)
	}
	if _, err := pickFreezer("4:memory:/m\n", "", "", all); err == nil {
		t.Error("no freezer: no error")
	}
}

func TestParseMountinfo(t *testing.T) {
	line := `35 25 0:30 / /sys/fs/cgroup/my\040dir rw,nosuid - cgroup cgroup rw,freezer`
	mnt, fs, opts, ok := parseMountinfo(line)
	if !ok || mnt != "/sys/fs/cgroup/my dir" || fs != "cgroup" || opts != "rw,freezer" {
		t.Errorf("got %q %q %q %v", mnt, fs, opts, ok)
	}
	if _, _, _, ok := parseMountinfo("garbage"); ok {
		t.Error("garbage parsed")
	}
}

func TestMedianRun(t *testing.T) {
	runs := []*Run{
		{RawFirst: true, Raw: &RawResult{DumpWallSeconds: 3, PagesWritten: 10, Verified: true}, Lazy: &MigrateResult{Reason: "first"}},
		{RawFirst: false, Raw: &RawResult{DumpWallSeconds: 1, PagesWritten: 30, Verified: true}, Lazy: &MigrateResult{Reason: "second"}},
		{RawFirst: true, Raw: &RawResult{DumpWallSeconds: 2, PagesWritten: 20, Verified: false},
			Checkpoint: &CheckpointResult{WallSeconds: 7, CR: crCheckpoint{ImageBytes: 5}}},
	}
	m := medianRun(runs)
	if m.Raw.DumpWallSeconds != 2 || m.Raw.PagesWritten != 20 {
		t.Errorf("median: %+v", m.Raw)
	}
	if m.Raw.Verified || m.RawFirst {
		t.Error("a flag false in one run is false")
	}
	if m.Checkpoint == nil || m.Checkpoint.WallSeconds != 7 || m.Checkpoint.CR.ImageBytes != 5 {
		t.Errorf("result of one run: %+v", m.Checkpoint)
	}
	if m.Lazy.Reason != "first" {
		t.Errorf("text: %q", m.Lazy.Reason)
	}
	if m.Restore != nil {
		t.Error("result of no run is set")
	}
	// Even count: the mean of the middle two; the inputs are untouched.
	m = medianRun(runs[:2])
	if m.Raw.DumpWallSeconds != 2 || runs[0].Raw.DumpWallSeconds != 3 {
		t.Errorf("even median %v", m.Raw.DumpWallSeconds)
	}
}

// sample builds results with known numbers.
func sample() *Results {
	run := func(raw, frozen, ck, lrFrozen, rst, ckr float64, image, rawImg int64) Run {
		return Run{
			Raw:          &RawResult{DumpWallSeconds: raw, FrozenSeconds: frozen, RestoreWallSeconds: rst, ImageBytes: rawImg},
			Zstd:         &ZstdResult{CompressMBps: 500},
			CheckpointLR: &CheckpointResult{CR: crCheckpoint{FrozenSeconds: lrFrozen}},
			Checkpoint:   &CheckpointResult{WallSeconds: ck, CR: crCheckpoint{ImageBytes: image, RawBytes: rawImg}},
			Restore:      &RestoreResult{WallSeconds: ckr},
			Lazy:         &MigrateResult{Reason: "not implemented"},
			Migrate:      &MigrateResult{Available: true, EndToEndMBps: 400, CR: crMigrate{DowntimeSeconds: 0.5}},
		}
	}
	return &Results{
		Ceilings: Ceilings{TmpfsWriteMBps: 3000, TCPLoopbackMBps: 2500, TCPVethMBps: 2000},
		Workloads: []*WorkloadResult{
			{Name: "trivial", Run: run(0.05, 0.02, 0.06, 0.021, 0.05, 0.05, 100, 1000)},
			{Name: "mem-1G", MemMiB: 1024, Run: run(1, 0.8, 2, 0.9, 1, 1.1, 300, 1000)},
		},
	}
}

func findTarget(ts []Target, id, wl string) *Target {
	for i := range ts {
		if ts[i].ID == id && ts[i].Workload == wl {
			return &ts[i]
		}
	}
	return nil
}

func TestEvaluateTargets(t *testing.T) {
	ts := evaluateTargets(sample())
	cases := []struct {
		id, wl, status string
		value          float64
	}{
		{"frozen", "trivial", Pass, 1.05},
		{"frozen", "mem-1G", Miss, 1.125},
		{"checkpoint-wall", "trivial", Pass, 1.2},
		{"checkpoint-wall", "mem-1G", Miss, 2},
		{"restore-wall", "mem-1G", Pass, 1.1},
		{"image-size", "mem-1G", Miss, 0.3},
		{"migrate-throughput", "mem-1G", Pass, 0.8}, // 400 of zstd's 500
		{"trivial", "trivial", Pass, 0.11},
		{"lazy-downtime", "mem-1G", Miss, 0},
	}
	for _, c := range cases {
		tg := findTarget(ts, c.id, c.wl)
		if tg == nil {
			t.Errorf("%s/%s: missing", c.id, c.wl)
			continue
		}
		if tg.Status != c.status || (c.value != 0 && !near(tg.Value, c.value)) {
			t.Errorf("%s/%s: %s %v, want %s %v (%s)", c.id, c.wl, tg.Status, tg.Value, c.status, c.value, tg.Detail)
		}
	}
	// Image size and throughput only for memory workloads.
	if findTarget(ts, "image-size", "trivial") != nil || findTarget(ts, "migrate-throughput", "trivial") != nil {
		t.Error("memory targets on the trivial job")
	}
	if lz := findTarget(ts, "lazy-scaling", "mem-1G"); !strings.Contains(lz.Detail, "not implemented") {
		t.Errorf("lazy reason not carried: %q", lz.Detail)
	}
	if m := findTarget(ts, "checkpoint-wall", "mem-1G").Miss(); m != "60% over" {
		t.Errorf("miss %q", m)
	}
	if m := (Target{Status: Miss, Value: 1.103, Limit: 1.1, AtMost: true}).Miss(); m != "0.3% over" {
		t.Errorf("miss %q", m)
	}
	if m := (Target{Status: Miss, Value: 0.3, Limit: 0.6}).Miss(); m != "50% short" {
		t.Errorf("miss %q", m)
	}

	// Without the workloads they need, targets are N/A, not PASS.
	res := sample()
	res.Workloads = res.Workloads[1:]
	res.Workloads[0].Lazy = nil
	ts = evaluateTargets(res)
	for _, id := range []string{"trivial", "lazy-downtime", "lazy-scaling"} {
		for _, tg := range ts {
			if tg.ID == id && tg.Status != NA {
				t.Errorf("%s: %s without its workload", id, tg.Status)
			}
		}
	}
}

func TestLazyAvailable(t *testing.T) {
	res := sample()
	res.Workloads = append(res.Workloads, &WorkloadResult{Name: "mem-256M", MemMiB: 256, Run: Run{Lazy: &MigrateResult{Available: true, CR: crMigrate{DowntimeSeconds: 0.2}}}})
	res.Workloads[1].Lazy = &MigrateResult{Available: true, CR: crMigrate{DowntimeSeconds: 0.4}}
	ts := evaluateTargets(res)
	if d := findTarget(ts, "lazy-downtime", "mem-1G"); d.Status != Pass || d.Value != 0.4 {
		t.Errorf("lazy downtime %+v", d)
	}
	if s := findTarget(ts, "lazy-scaling", "mem-1G"); s.Status != Miss || !near(s.Value, 2) {
		t.Errorf("lazy scaling %+v", s)
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestLowestCeiling(t *testing.T) {
	c := Ceilings{TmpfsWriteMBps: 3000, TCPLoopbackMBps: 2500, TCPVethMBps: 2000}
	if n, v := lowestCeiling(c, nil); n != "TCP veth" || v != 2000 {
		t.Errorf("%s %v", n, v)
	}
	if n, v := lowestCeiling(c, &ZstdResult{CompressMBps: 700}); n != "zstd" || v != 700 {
		t.Errorf("%s %v", n, v)
	}
}

func TestChartSVG(t *testing.T) {
	res := sample()
	res.Workloads = append(res.Workloads, &WorkloadResult{Name: "mem-4G", MemMiB: 4096, Run: res.Workloads[1].Run})
	svg := chartSVG(res)
	// Well-formed XML, and every point inside the canvas.
	d := xml.NewDecoder(strings.NewReader(svg))
	circles := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "circle" {
			circles++
			for _, a := range se.Attr {
				if a.Name.Local == "cx" || a.Name.Local == "cy" {
					v, err := strconv.ParseFloat(a.Value, 64)
					if err != nil || v < 0 || v > svgW {
						t.Errorf("point %s=%s off the canvas", a.Name.Local, a.Value)
					}
				}
			}
		}
	}
	for _, want := range []string{"raw CRIU: frozen_time", "cr migrate (stop-and-copy): downtime", "cr checkpoint", "ceiling: TCP over the veth", "1 GiB", "4 GiB", "--lazy: not available"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	if strings.Contains(svg, "NaN") || strings.Contains(svg, "Inf") {
		t.Error("chart has NaN or Inf")
	}
	// The trivial job has no memory: only the two memory sizes are drawn.
	if circles == 0 || strings.Contains(svg, ">0 MiB<") {
		t.Errorf("%d points", circles)
	}
	// Nothing to draw is still a valid chart.
	if err := xml.Unmarshal([]byte(chartSVG(&Results{})), new(any)); err != nil {
		t.Errorf("empty chart: %v", err)
	}
}

func TestNiceTicks(t *testing.T) {
	for _, top := range []float64{0.137, 1, 9.8, 2345} {
		ts := niceTicks(top)
		if ts[0] != 0 || ts[len(ts)-1] < top || len(ts) < 3 || len(ts) > 8 {
			t.Errorf("ticks for %v: %v", top, ts)
		}
	}
}

func TestLogTicks(t *testing.T) {
	got := logTicks(-1, 1)
	want := []float64{0.1, 0.2, 0.5, 1, 2, 5, 10}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if !near(got[i], want[i]) {
			t.Fatalf("%v", got)
		}
	}
}

func TestServeTimes(t *testing.T) {
	log := "2026/11/23 11:56:05 listening on 192.0.2.2:7400, token authentication\n" +
		"2026/11/23 11:56:23 192.0.2.1:60246 /bench/t: done: 81.5 MiB received in 1.418s, restored 1 container in 1.044s\n" +
		"2026/11/23 11:57:23 192.0.2.1:60247 /bench/u: done: 1.5 MiB received in 10ms, restored 1 containers in 50ms\n"
	r, s := serveTimes(log, "/bench/t")
	if !near(r, 1.418) || !near(s, 1.044) {
		t.Errorf("got %v %v", r, s)
	}
	if r, s := serveTimes(log, "/bench/x"); r != 0 || s != 0 {
		t.Errorf("unknown path: %v %v", r, s)
	}
	// A lazy migration's line.
	log += "2026/11/23 11:58:23 192.0.2.1:60248 /bench/t: done (lazy): 430.1 KiB received in 12ms, restored 1 containers in 95ms, 1.0 GiB of pages in 2.1s after resuming\n"
	if r, s := serveTimes(log, "/bench/t"); !near(r, 0.012) || !near(s, 0.095) {
		t.Errorf("lazy line: got %v %v", r, s)
	}
}

func TestMeasureZstd(t *testing.T) {
	dir := t.TempDir()
	// 12 MiB: half zeros, half random; the ratio must be near 2.
	data := make([]byte, 12<<20)
	rand.New(rand.NewSource(1)).Read(data[6<<20:])
	if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "core-1.img"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	z, err := measureZstd(dir)
	if err != nil {
		t.Fatal(err)
	}
	if z.InputBytes != int64(len(data)) {
		t.Errorf("compressed %d bytes, want the pages' %d only", z.InputBytes, len(data))
	}
	if z.Ratio < 1.8 || z.Ratio > 2.2 || z.CompressMBps <= 0 || z.DecompressMBps <= 0 || z.S2Ratio < 1.5 || z.S2CompressMBps <= 0 {
		t.Errorf("zstd: %+v", z)
	}
	if _, err := measureZstd(t.TempDir()); err == nil {
		t.Error("no pages: no error")
	}
}

func TestCopyStripes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	data := []byte("0123456789abcdefghij")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	n, err := copyStripes(&b, p, 2, 6)
	if err != nil || n != 8 || b.String() != "0167cdij" {
		t.Errorf("stripes %q %d %v", b.String(), n, err)
	}
}

func TestChunks(t *testing.T) {
	c := &chunks{}
	want := bytes.Repeat([]byte("abc"), chunkSize) // three chunks' worth
	for p := want; len(p) > 0; {
		k := min(len(p), 1000003)
		c.Write(p[:k])
		p = p[k:]
	}
	got, _ := io.ReadAll(c.reader())
	if c.n != int64(len(want)) || !bytes.Equal(got, want) || len(c.bufs) != 3 {
		t.Errorf("chunks: %d bytes in %d chunks", c.n, len(c.bufs))
	}
}

func TestTCPThroughputLoopback(t *testing.T) {
	buf := make([]byte, 1<<20)
	v, err := tcpThroughput("", "", "127.0.0.1", buf, nil)
	if err != nil || v <= 0 {
		t.Fatalf("TCP: %v %v", v, err)
	}
	cfg, err := selfSignedTLS()
	if err != nil {
		t.Fatal(err)
	}
	if v, err := tcpThroughput("", "", "127.0.0.1", buf, cfg); err != nil || v <= 0 {
		t.Fatalf("TLS: %v %v", v, err)
	}
}

func TestSecsHuman(t *testing.T) {
	for in, want := range map[float64]string{0: "-", 0.0424: "42 ms", 2.5: "2.50 s"} {
		if got := secs(in); got != want {
			t.Errorf("secs(%v) = %q", in, got)
		}
	}
	for in, want := range map[int64]string{512: "512 B", 3 << 20: "3.0 MiB", 5 << 30: "5.00 GiB"} {
		if got := human(in); got != want {
			t.Errorf("human(%v) = %q", in, got)
		}
	}
}

// sendFile delivers the file whole to the other side.
func TestSendFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	want := bytes.Repeat([]byte("archive "), 300000)
	if err := os.WriteFile(src, want, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := sendFile("", "127.0.0.1", src, dst)
	if err != nil || d <= 0 {
		t.Fatalf("sendFile = %v, %v", d, err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, want) {
		t.Errorf("received %d bytes, not the %d sent", len(got), len(want))
	}
}
