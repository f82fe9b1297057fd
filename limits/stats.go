package limits

import (
	"bufio"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Counters are the limit hits of one cgroup and its own leaf (the
// container's own processes), as the container init watches them: a
// counter only grows while the cgroup lives.
type Counters struct {
	MemoryHigh int64 // times throttled above memory.high (v2 memory.events "high")
	MemoryMax  int64 // times the memory limit was hit (v2 "max", v1 memory.failcnt)
	OOMKill    int64 // processes killed by the OOM killer (v2 "oom_kill", v1 memory.oom_control "oom_kill")
	PidsMax    int64 // forks refused by pids.max (pids.events "max")
}

// Counters reads the limit hits recorded for the cgroup rel itself (its
// limits) and for leaf, the cgroup below it that holds its own processes
// (whose OOM kills are counted there on v1, and, on v2, whose events
// .local files count them apart from the descendants' containers). rel ""
// reads the leaf's alone: inside a --mount container the cgroup mounts
// show only the leaf (leaf "." then, their roots).
func (l Layout) Counters(rel, leaf string) Counters {
	var c Counters
	node := func(ctrl string, names ...string) (string, bool) {
		if rel == "" {
			return "", false
		}
		return l.file(ctrl, rel, names...)
	}
	if l.has("memory") {
		if l.V2["memory"] {
			ev := keyed(node("memory", "memory.events.local", "memory.events"))
			c.MemoryHigh, c.MemoryMax = ev["high"], ev["max"]
			c.OOMKill = ev["oom_kill"] + keyed(l.file("memory", leaf, "memory.events.local"))["oom_kill"]
		} else {
			c.MemoryMax = number(node("memory", "memory.failcnt"))
			c.OOMKill = keyed(node("memory", "memory.oom_control"))["oom_kill"] +
				keyed(l.file("memory", leaf, "memory.oom_control"))["oom_kill"]
		}
	}
	if l.has("pids") {
		if l.V2["pids"] {
			// Where the kernel counts a refused fork in the forking
			// cgroup (pids.events.local), the leaf has it; else the
			// limited cgroup does.
			if s, ok := l.file("pids", leaf, "pids.events.local"); ok {
				c.PidsMax = keyed(s, ok)["max"]
			} else {
				c.PidsMax = keyed(node("pids", "pids.events"))["max"]
			}
		} else {
			// v1 counts it in the forking cgroup on recent kernels, in
			// the limited one on older ones.
			c.PidsMax = keyed(node("pids", "pids.events"))["max"] + keyed(l.file("pids", leaf, "pids.events"))["max"]
		}
	}
	return c
}

// Stats is what one cgroup's subtree uses, read from its controllers'
// files. A nil member is one this host does not offer.
type Stats struct {
	CPU      *CPUStats      `json:"cpu,omitempty"`
	Memory   *MemoryStats   `json:"memory,omitempty"`
	Pids     *PidsStats     `json:"pids,omitempty"`
	IO       *IOStats       `json:"io,omitempty"`
	Pressure *PressureStats `json:"pressure,omitempty"`
}

// CPUStats: time used and time throttled by the CPU limit.
type CPUStats struct {
	UsageSeconds     float64 `json:"usage_seconds"`
	UserSeconds      float64 `json:"user_seconds"`
	SystemSeconds    float64 `json:"system_seconds"`
	Periods          int64   `json:"periods"`           // CFS periods with runnable tasks
	ThrottledPeriods int64   `json:"throttled_periods"` // of which throttled
	ThrottledSeconds float64 `json:"throttled_seconds"`
}

// MemoryStats: current_bytes is everything charged (page cache too),
// usage_bytes that less the inactive page cache (what Podman and Docker
// show), peak_bytes the highest seen, limit_bytes 0 when unlimited.
type MemoryStats struct {
	CurrentBytes int64 `json:"current_bytes"`
	UsageBytes   int64 `json:"usage_bytes"`
	PeakBytes    int64 `json:"peak_bytes"`
	LimitBytes   int64 `json:"limit_bytes"`
	OOMKills     int64 `json:"oom_kills"`
}

// PidsStats: tasks (processes and threads) now, and the limit (0: none).
type PidsStats struct {
	Current int64 `json:"current"`
	Max     int64 `json:"max"`
}

// IOStats: bytes read and written on block devices.
type IOStats struct {
	ReadBytes  int64 `json:"read_bytes"`
	WriteBytes int64 `json:"write_bytes"`
}

// PressureStats is the cgroup's pressure stall information (PSI), where
// the kernel keeps it per cgroup (cgroup v2).
type PressureStats struct {
	CPU    *Pressure `json:"cpu,omitempty"`
	Memory *Pressure `json:"memory,omitempty"`
	IO     *Pressure `json:"io,omitempty"`
}

// Pressure is one resource's PSI: the share of time some (or all, full)
// tasks were stalled, averaged over 10, 60 and 300 seconds, in percent.
type Pressure struct {
	Some PressureLine  `json:"some"`
	Full *PressureLine `json:"full,omitempty"`
}

// PressureLine is one line of a .pressure file.
type PressureLine struct {
	Avg10        float64 `json:"avg10"`
	Avg60        float64 `json:"avg60"`
	Avg300       float64 `json:"avg300"`
	TotalSeconds float64 `json:"total_seconds"`
}

// Stats reads the usage of the cgroup rel and everything below it.
// cgroup v2 keeps CPU time and PSI in every cgroup whether or not a
// controller is enabled, so on a hybrid host those come from Base.
func (l Layout) Stats(rel string) Stats {
	var s Stats
	base := filepath.Join(l.Base, rel)
	if cs, ok := readKeyed(filepath.Join(base, "cpu.stat")); ok && l.Base != "" && isV2Dir(base) {
		c := &CPUStats{UsageSeconds: usec(cs["usage_usec"]), UserSeconds: usec(cs["user_usec"]), SystemSeconds: usec(cs["system_usec"]),
			Periods: cs["nr_periods"], ThrottledPeriods: cs["nr_throttled"], ThrottledSeconds: usec(cs["throttled_usec"])}
		if !l.V2["cpu"] && l.V1["cpu"] != "" {
			v1 := keyed(l.file("cpu", rel, "cpu.stat"))
			c.Periods, c.ThrottledPeriods, c.ThrottledSeconds = v1["nr_periods"], v1["nr_throttled"], float64(v1["throttled_time"])/1e9
		}
		s.CPU = c
	} else if l.V1["cpu"] != "" {
		v1 := keyed(l.file("cpu", rel, "cpu.stat"))
		c := &CPUStats{Periods: v1["nr_periods"], ThrottledPeriods: v1["nr_throttled"], ThrottledSeconds: float64(v1["throttled_time"]) / 1e9}
		if u, ok := l.file("cpu", rel, "cpuacct.usage"); ok { // cpu,cpuacct mounted together
			c.UsageSeconds = float64(number(u, true)) / 1e9
			st := keyed(l.file("cpu", rel, "cpuacct.stat"))
			c.UserSeconds, c.SystemSeconds = float64(st["user"])/100, float64(st["system"])/100
		}
		s.CPU = c
	}
	if l.has("memory") {
		m := &MemoryStats{}
		if l.V2["memory"] {
			m.CurrentBytes = number(l.file("memory", rel, "memory.current"))
			m.PeakBytes = number(l.file("memory", rel, "memory.peak"))
			m.LimitBytes = limitOf(l.file("memory", rel, "memory.max"))
			m.OOMKills = keyed(l.file("memory", rel, "memory.events"))["oom_kill"]
			m.UsageBytes = m.CurrentBytes - keyed(l.file("memory", rel, "memory.stat"))["inactive_file"]
		} else {
			m.CurrentBytes = number(l.file("memory", rel, "memory.usage_in_bytes"))
			m.PeakBytes = number(l.file("memory", rel, "memory.max_usage_in_bytes"))
			m.LimitBytes = limitOf(l.file("memory", rel, "memory.limit_in_bytes"))
			m.UsageBytes = m.CurrentBytes - keyed(l.file("memory", rel, "memory.stat"))["total_inactive_file"]
			// v1 counts an OOM kill only in the victim's own cgroup.
			_ = filepath.WalkDir(filepath.Join(l.V1["memory"], rel), func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					m.OOMKills += keyed(readTrim(filepath.Join(p, "memory.oom_control")))["oom_kill"]
				}
				return nil
			})
		}
		m.UsageBytes = max(0, m.UsageBytes)
		s.Memory = m
	}
	if l.has("pids") {
		s.Pids = &PidsStats{Current: number(l.file("pids", rel, "pids.current")), Max: limitOf(l.file("pids", rel, "pids.max"))}
	}
	if l.has("io") {
		io := &IOStats{}
		if l.V2["io"] {
			text, _ := l.file("io", rel, "io.stat")
			for _, line := range strings.Split(text, "\n") {
				for _, f := range strings.Fields(line) {
					k, v, _ := strings.Cut(f, "=")
					n, _ := strconv.ParseInt(v, 10, 64)
					switch k {
					case "rbytes":
						io.ReadBytes += n
					case "wbytes":
						io.WriteBytes += n
					}
				}
			}
		} else {
			text, _ := l.file("io", rel, "blkio.throttle.io_service_bytes_recursive")
			for _, line := range strings.Split(text, "\n") {
				f := strings.Fields(line)
				if len(f) != 3 {
					continue
				}
				n, _ := strconv.ParseInt(f[2], 10, 64)
				switch f[1] {
				case "Read":
					io.ReadBytes += n
				case "Write":
					io.WriteBytes += n
				}
			}
		}
		s.IO = io
	}
	if l.Base != "" && isV2Dir(base) {
		p := &PressureStats{CPU: readPressure(filepath.Join(base, "cpu.pressure")),
			Memory: readPressure(filepath.Join(base, "memory.pressure")), IO: readPressure(filepath.Join(base, "io.pressure"))}
		if p.CPU != nil || p.Memory != nil || p.IO != nil {
			s.Pressure = p
		}
	}
	return s
}

// isV2Dir reports whether dir is a cgroup v2 directory (it has
// cgroup.controllers, which v1 has not).
func isV2Dir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cgroup.controllers"))
	return err == nil
}

// file reads the first of names that exists in controller c's directory
// of rel.
func (l Layout) file(c, rel string, names ...string) (string, bool) {
	dir := filepath.Join(l.V1[c], rel)
	if l.V2[c] {
		dir = filepath.Join(l.Base, rel)
	}
	for _, n := range names {
		if s, ok := readTrim(filepath.Join(dir, n)); ok {
			return s, true
		}
	}
	return "", false
}

func readTrim(p string) (string, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

// keyed parses "key value" lines (cpu.stat, memory.events, ...).
func keyed(text string, ok bool) map[string]int64 {
	m := map[string]int64{}
	if !ok {
		return m
	}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 {
			if v, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m
}

func readKeyed(p string) (map[string]int64, bool) {
	s, ok := readTrim(p)
	return keyed(s, ok), ok
}

func number(text string, ok bool) int64 {
	if !ok {
		return 0
	}
	v, _ := strconv.ParseInt(text, 10, 64)
	return v
}

// limitOf reads a limit file: "max" (v2) or a huge number (v1) is 0.
func limitOf(text string, ok bool) int64 {
	v := number(text, ok)
	if v <= 0 || v >= math.MaxInt64/2 {
		return 0
	}
	return v
}

func usec(v int64) float64 { return float64(v) / 1e6 }

// readPressure parses a .pressure file: "some avg10=0.00 avg60=0.00
// avg300=0.00 total=0" and a "full" line; nil if there is none.
func readPressure(p string) *Pressure {
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	var pr Pressure
	seen := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		var line PressureLine
		for _, kv := range fs[1:] {
			k, v, _ := strings.Cut(kv, "=")
			x, _ := strconv.ParseFloat(v, 64)
			switch k {
			case "avg10":
				line.Avg10 = x
			case "avg60":
				line.Avg60 = x
			case "avg300":
				line.Avg300 = x
			case "total":
				line.TotalSeconds = x / 1e6
			}
		}
		switch fs[0] {
		case "some":
			pr.Some, seen = line, true
		case "full":
			l := line
			pr.Full = &l
		}
	}
	if !seen {
		return nil
	}
	return &pr
}
