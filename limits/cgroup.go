package limits

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cr-dev/cr/freeze"
)

// The controllers cr limits with, by their v2 names ("io" is v1's
// "blkio"), in the order they are written.
var controllers = []string{"memory", "cpu", "io", "pids"}

// v1Name is a controller's name in cgroup v1.
func v1Name(c string) string {
	if c == "io" {
		return "blkio"
	}
	return c
}

// Layout says where each controller cr uses lives: in the cgroup v2
// hierarchy cr keeps its containers in (Base), when that hierarchy has it,
// else in a v1 hierarchy of its own. Paths given to its methods are
// relative to the hierarchy's mount ("cr/<id>/<id>"); a v1 controller's
// cgroup of a container is at the same relative path under its own mount
// (its mirror).
type Layout struct {
	Base string            // the hierarchy cr keeps its containers in
	V2   map[string]bool   // controllers Base (a v2 root) offers
	V1   map[string]string // controllers in v1 hierarchies: name to mount
}

// Detect finds the layout from the current process's mount table, for the
// hierarchy cr keeps its containers in (freeze.Detect).
func Detect(h freeze.Hierarchy) (Layout, error) {
	return DetectFrom(freeze.DefaultMountinfo, h)
}

// DetectFrom finds the layout from the mount table at mountinfoPath: a
// controller listed in the v2 root's cgroup.controllers is used there,
// else in its v1 hierarchy if one is mounted, else it is missing.
func DetectFrom(mountinfoPath string, h freeze.Hierarchy) (Layout, error) {
	l := Layout{Base: h.Mount, V2: map[string]bool{}, V1: map[string]string{}}
	if h.Version == 2 {
		b, err := os.ReadFile(filepath.Join(h.Mount, "cgroup.controllers"))
		if err != nil {
			return Layout{}, fmt.Errorf("detect cgroup controllers: %w", err)
		}
		for _, c := range strings.Fields(string(b)) {
			l.V2[c] = true
		}
	}
	v1, err := freeze.V1Mounts(mountinfoPath)
	if err != nil {
		return Layout{}, err
	}
	for _, c := range controllers {
		if m, ok := v1[v1Name(c)]; ok && !l.V2[c] && m != h.Mount {
			l.V1[c] = m
		}
	}
	return l, nil
}

// Mirrors returns the directories of rel in each v1 controller hierarchy
// cr uses (none on a pure v2 host), so that a container's cgroups are kept
// in step: created, joined and removed together with its own.
func (l Layout) Mirrors(rel string) []string {
	var dirs []string
	seen := map[string]bool{}
	for _, c := range controllers {
		if m, ok := l.V1[c]; ok && !seen[m] {
			seen[m] = true
			dirs = append(dirs, filepath.Join(m, rel))
		}
	}
	return dirs
}

// Rel returns dir relative to Base, or false when dir is not under it.
func (l Layout) Rel(dir string) (string, bool) {
	r, err := filepath.Rel(l.Base, dir)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", false
	}
	return r, true
}

func (l Layout) has(c string) bool { return l.V2[c] || l.V1[c] != "" }

// Supports returns an error wrapping ErrUnsupported naming the first limit
// that lim sets and this host cannot enforce.
func (l Layout) Supports(lim Limits) error {
	need := func(set bool, name, ctrl string, v2only bool) error {
		if !set {
			return nil
		}
		if !l.has(ctrl) || (v2only && !l.V2[ctrl]) {
			what := "the " + ctrl + " controller"
			if v2only {
				what += " of cgroup v2"
			}
			return fmt.Errorf("%w: %s needs %s", ErrUnsupported, name, what)
		}
		return nil
	}
	return errors.Join(
		need(lim.Memory > 0, NameMemory, "memory", false),
		need(lim.MemoryHigh > 0, NameMemoryHigh, "memory", true),
		need(lim.CPUs > 0, NameCPUs, "cpu", false),
		need(lim.CPUWeight > 0, NameCPUWeight, "cpu", false),
		need(lim.Pids > 0, NamePids, "pids", false),
		need(lim.BlkioWeight > 0, NameBlkioWeight, "io", false),
	)
}

// Apply writes lim to the cgroup rel: every limit of every controller the
// host has, so that a limit lim leaves unset is reset to unlimited. On v2
// it first enables the controllers in cgroup.subtree_control of each
// ancestor; on v1 it creates the mirrors that are missing.
func (l Layout) Apply(rel string, lim Limits) error {
	if err := l.Supports(lim); err != nil {
		return err
	}
	for _, c := range controllers {
		if !l.has(c) {
			continue
		}
		dir, err := l.prepare(c, rel)
		if err != nil {
			return err
		}
		v2 := l.V2[c]
		if c == "io" {
			if err := applyIOWeight(dir, v2, lim.BlkioWeight); err != nil {
				return err
			}
			continue
		}
		for _, w := range writes(c, v2, lim) {
			if err := os.WriteFile(filepath.Join(dir, w[0]), []byte(w[1]), 0); err != nil {
				return fmt.Errorf("set %s: %w", c, err)
			}
		}
	}
	return nil
}

// ioWeightFiles are the files a block I/O weight can be set in, in the
// order tried: the controller's own, then the BFQ scheduler's.
func ioWeightFiles(v2 bool) []string {
	if v2 {
		return []string{"io.weight", "io.bfq.weight"}
	}
	return []string{"blkio.weight", "blkio.bfq.weight"}
}

// applyIOWeight writes weight (0: the default, 100) to the first weight
// file the cgroup dir has. With none, a weight is refused and the default
// is nothing to write.
func applyIOWeight(dir string, v2 bool, weight uint64) error {
	for _, f := range ioWeightFiles(v2) {
		p := filepath.Join(dir, f)
		if _, err := os.Stat(p); err != nil {
			continue
		}
		w := weight
		if w == 0 {
			w = 100
		}
		if err := os.WriteFile(p, []byte(strconv.FormatUint(w, 10)), 0); err != nil {
			return fmt.Errorf("set %s: %w", f, err)
		}
		return nil
	}
	if weight == 0 {
		return nil
	}
	ctrl := "blkio"
	if v2 {
		ctrl = "io"
	}
	return fmt.Errorf("%w: %s needs %s, which the %s controller does not offer here", ErrUnsupported,
		NameBlkioWeight, strings.Join(ioWeightFiles(v2), " or "), ctrl)
}

// readIOWeight reads the weight of the first weight file dir has ("100",
// or "default 100" as older kernels write it); 0 for the default.
func readIOWeight(dir string, v2 bool) uint64 {
	for _, f := range ioWeightFiles(v2) {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		first, _, _ := strings.Cut(string(b), "\n")
		fs := strings.Fields(first)
		if len(fs) == 0 {
			return 0
		}
		if w, err := strconv.ParseUint(fs[len(fs)-1], 10, 64); err == nil && w != 100 {
			return w
		}
		return 0
	}
	return 0
}

// prepare returns the directory of rel for controller c, making the
// controller available there.
func (l Layout) prepare(c, rel string) (string, error) {
	if !l.V2[c] {
		dir := filepath.Join(l.V1[c], rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", fmt.Errorf("create %s cgroup: %w", c, err)
		}
		return dir, nil
	}
	parts := strings.Split(filepath.Clean(rel), "/")
	dir := l.Base
	for _, p := range parts {
		sc := filepath.Join(dir, "cgroup.subtree_control")
		b, err := os.ReadFile(sc)
		if err != nil {
			return "", fmt.Errorf("enable %s: %w", c, err)
		}
		if !contains(strings.Fields(string(b)), c) {
			if err := os.WriteFile(sc, []byte("+"+c), 0); err != nil {
				return "", fmt.Errorf("enable %s in %s: %w", c, dir, err)
			}
		}
		dir = filepath.Join(dir, p)
	}
	return dir, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// writes lists the files and values that set lim for controller c, in
// order.
func writes(c string, v2 bool, lim Limits) [][2]string {
	num := func(v int64, unset string) string {
		if v <= 0 {
			return unset
		}
		return strconv.FormatInt(v, 10)
	}
	quota := int64(math.Round(lim.CPUs * CPUPeriod))
	switch {
	case c == "memory" && v2:
		return [][2]string{{"memory.high", num(lim.MemoryHigh, "max")}, {"memory.max", num(lim.Memory, "max")}}
	case c == "memory":
		return [][2]string{{"memory.limit_in_bytes", num(lim.Memory, "-1")}}
	case c == "cpu" && v2:
		w := lim.CPUWeight
		if w == 0 {
			w = 100
		}
		return [][2]string{{"cpu.max", num(quota, "max") + " " + strconv.Itoa(CPUPeriod)}, {"cpu.weight", strconv.FormatUint(w, 10)}}
	case c == "cpu":
		shares := uint64(1024)
		if lim.CPUWeight > 0 {
			shares = max(2, lim.CPUWeight*1024/100)
		}
		return [][2]string{{"cpu.cfs_period_us", strconv.Itoa(CPUPeriod)}, {"cpu.cfs_quota_us", num(quota, "-1")}, {"cpu.shares", strconv.FormatUint(shares, 10)}}
	case c == "pids":
		return [][2]string{{"pids.max", num(lim.Pids, "max")}}
	}
	return nil
}

// Read reads back the limits of the cgroup rel from its controllers' files.
func (l Layout) Read(rel string) (Limits, error) {
	var lim Limits
	dir := func(c string) string {
		if l.V2[c] {
			return filepath.Join(l.Base, rel)
		}
		return filepath.Join(l.V1[c], rel)
	}
	read := func(c, file string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir(c), file))
		return strings.TrimSpace(string(b)), err
	}
	bytesOf := func(s string) int64 {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v <= 0 || v >= math.MaxInt64/2 { // v1 reports "unlimited" as a huge number
			return 0
		}
		return v
	}
	var errs []error
	get := func(c, file string, f func(string)) {
		if !l.has(c) {
			return
		}
		s, err := read(c, file)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", c, err))
			return
		}
		f(s)
	}
	if l.V2["memory"] {
		get("memory", "memory.max", func(s string) { lim.Memory = bytesOf(s) })
		get("memory", "memory.high", func(s string) { lim.MemoryHigh = bytesOf(s) })
	} else {
		get("memory", "memory.limit_in_bytes", func(s string) { lim.Memory = bytesOf(s) })
	}
	if l.V2["cpu"] {
		get("cpu", "cpu.max", func(s string) {
			if f := strings.Fields(s); len(f) == 2 {
				q, err1 := strconv.ParseFloat(f[0], 64)
				p, err2 := strconv.ParseFloat(f[1], 64)
				if err1 == nil && err2 == nil && p > 0 {
					lim.CPUs = math.Round(q/p*100) / 100
				}
			}
		})
		get("cpu", "cpu.weight", func(s string) {
			if w, err := strconv.ParseUint(s, 10, 64); err == nil && w != 100 {
				lim.CPUWeight = w
			}
		})
	} else {
		var period float64
		get("cpu", "cpu.cfs_period_us", func(s string) { period, _ = strconv.ParseFloat(s, 64) })
		get("cpu", "cpu.cfs_quota_us", func(s string) {
			if q, err := strconv.ParseFloat(s, 64); err == nil && q > 0 && period > 0 {
				lim.CPUs = math.Round(q/period*100) / 100
			}
		})
		get("cpu", "cpu.shares", func(s string) {
			if v, err := strconv.ParseUint(s, 10, 64); err == nil && v != 1024 {
				lim.CPUWeight = max(1, (v*100+512)/1024)
			}
		})
	}
	get("pids", "pids.max", func(s string) { lim.Pids = bytesOf(s) })
	if l.has("io") {
		lim.BlkioWeight = readIOWeight(dir("io"), l.V2["io"])
	}
	return lim, errors.Join(errs...)
}
