// Package limits owns the resource limits of a container's cgroup: memory
// (max, and high where cgroup v2 has it), CPU (quota and weight), pids and
// block I/O weight, and reads their counters and usage (Counters, Stats).
// It parses them as cr's command line and image manifest spell them, checks
// that they nest (a child never gets more than its ancestors), and writes
// and reads them through one interface whether the controllers live in the
// cgroup v2 hierarchy cr keeps its containers in, or, on a hybrid or v1
// host, in v1 controller hierarchies (memory, cpu, pids) beside it, where
// each container has a mirror cgroup at the same relative path.
package limits

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Limits are one cgroup's limits. A zero field means unlimited (or, for
// CPUWeight, the default weight).
type Limits struct {
	Memory     int64   // bytes; memory.max (v2), memory.limit_in_bytes (v1)
	MemoryHigh int64   // bytes; memory.high (v2 only)
	CPUs       float64 // CPUs' worth of time: cpu.max (v2), cpu.cfs_quota_us/cpu.cfs_period_us (v1)
	CPUWeight  uint64  // 1..10000; cpu.weight (v2), cpu.shares (v1, scaled)
	Pids       int64   // pids.max
	// BlkioWeight is 10..1000 (Podman's --blkio-weight): io.weight or
	// io.bfq.weight (v2), blkio.weight or blkio.bfq.weight (v1).
	BlkioWeight uint64
}

// The names of the limits, as `cr set` and the image manifest spell them.
const (
	NameMemory      = "memory"
	NameMemoryHigh  = "memory-high"
	NameCPUs        = "cpus"
	NameCPUWeight   = "cpu-weight"
	NamePids        = "pids"
	NameBlkioWeight = "blkio-weight"
)

// Names lists the limits' names in the order cr shows them.
var Names = []string{NameMemory, NameMemoryHigh, NameCPUs, NameCPUWeight, NamePids, NameBlkioWeight}

// CPUPeriod is the CFS period cr writes with a CPU quota, in microseconds.
const CPUPeriod = 100000

var (
	// ErrInvalid means a limit could not be parsed or is out of range.
	ErrInvalid = errors.New("invalid limit")
	// ErrExceedsParent means a limit is above one of an ancestor's.
	ErrExceedsParent = errors.New("limit exceeds an ancestor's")
	// ErrUnsupported means the host has no controller for a limit.
	ErrUnsupported = errors.New("controller not available")
)

// IsZero reports whether l sets nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

// ParseSize parses a memory size: a number of bytes with an optional
// binary suffix k, m, g or t (either case, optionally followed by "b" or
// "ib"), as Podman's --memory does: 512M is 512 MiB.
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "b"), "i")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || v*float64(mult) >= math.MaxInt64/2 {
		return 0, fmt.Errorf("%w: size %q (want a positive number of bytes, or with a suffix k, m, g, t)", ErrInvalid, s)
	}
	return int64(v * float64(mult)), nil
}

// FormatSize is the inverse of ParseSize, exact: 512M, 1G, 1536K, 1000.
func FormatSize(b int64) string {
	for _, u := range []struct {
		s string
		n int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if b >= u.n && b%u.n == 0 {
			return strconv.FormatInt(b/u.n, 10) + u.s
		}
	}
	return strconv.FormatInt(b, 10)
}

// ParseCPUs parses a number of CPUs such as 1.5 (at least 0.01).
func ParseCPUs(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v < 0.01 || v > 1e6 {
		return 0, fmt.Errorf("%w: cpus %q (want a number of CPUs of at least 0.01, such as 1.5)", ErrInvalid, s)
	}
	return math.Round(v*100) / 100, nil
}

// Set sets the limit called name (one of Names) from its text.
func (l *Limits) Set(name, value string) error {
	var err error
	switch name {
	case NameMemory:
		l.Memory, err = ParseSize(value)
	case NameMemoryHigh:
		l.MemoryHigh, err = ParseSize(value)
	case NameCPUs:
		l.CPUs, err = ParseCPUs(value)
	case NameCPUWeight:
		var v uint64
		v, err = strconv.ParseUint(value, 10, 64)
		if err != nil || v < 1 || v > 10000 {
			err = fmt.Errorf("%w: cpu-weight %q (want 1 to 10000)", ErrInvalid, value)
		}
		l.CPUWeight = v
	case NamePids:
		var v int64
		v, err = strconv.ParseInt(value, 10, 64)
		if err != nil || v < 1 {
			err = fmt.Errorf("%w: pids %q (want a positive number)", ErrInvalid, value)
		}
		l.Pids = v
	case NameBlkioWeight:
		var v uint64
		v, err = strconv.ParseUint(value, 10, 64)
		if err != nil || v < 10 || v > 1000 {
			err = fmt.Errorf("%w: blkio-weight %q (want 10 to 1000)", ErrInvalid, value)
		}
		l.BlkioWeight = v
	default:
		err = fmt.Errorf("%w: unknown limit %q (want one of %s)", ErrInvalid, name, strings.Join(Names, ", "))
	}
	return err
}

// ParseAssignments parses `cr set`'s NAME=VALUE arguments on top of base.
func ParseAssignments(base Limits, args []string) (Limits, error) {
	l := base
	for _, a := range args {
		name, value, ok := strings.Cut(a, "=")
		if !ok || value == "" {
			return Limits{}, fmt.Errorf("%w: %q (want NAME=VALUE, NAME one of %s)", ErrInvalid, a, strings.Join(Names, ", "))
		}
		if err := l.Set(name, value); err != nil {
			return Limits{}, err
		}
	}
	return l, nil
}

// Map is l as the image manifest's `limits` object holds it: name to
// text, only the limits set.
func (l Limits) Map() map[string]string {
	m := map[string]string{}
	if l.Memory > 0 {
		m[NameMemory] = FormatSize(l.Memory)
	}
	if l.MemoryHigh > 0 {
		m[NameMemoryHigh] = FormatSize(l.MemoryHigh)
	}
	if l.CPUs > 0 {
		m[NameCPUs] = strconv.FormatFloat(l.CPUs, 'f', -1, 64)
	}
	if l.CPUWeight > 0 {
		m[NameCPUWeight] = strconv.FormatUint(l.CPUWeight, 10)
	}
	if l.Pids > 0 {
		m[NamePids] = strconv.FormatInt(l.Pids, 10)
	}
	if l.BlkioWeight > 0 {
		m[NameBlkioWeight] = strconv.FormatUint(l.BlkioWeight, 10)
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

// FromMap is the inverse of Map.
func FromMap(m map[string]string) (Limits, error) {
	var l Limits
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := l.Set(k, m[k]); err != nil {
			return Limits{}, err
		}
	}
	return l, nil
}

// String shows the limits set, as `cr set` takes them: "memory=512M
// cpus=1.5", or "-" when none is.
func (l Limits) String() string {
	m := l.Map()
	var parts []string
	for _, n := range Names {
		if v, ok := m[n]; ok {
			parts = append(parts, n+"="+v)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// CheckNested returns an error wrapping ErrExceedsParent if l sets a limit
// above the same limit of any of ancestors (a limit an ancestor sets and l
// leaves unset is inherited, not exceeded: the kernel enforces the
// ancestor's). CPU and block I/O weights are relative among siblings and
// do not nest.
// name is the path of the ancestor for the message.
func CheckNested(l Limits, ancestors map[string]Limits) error {
	paths := make([]string, 0, len(ancestors))
	for p := range ancestors {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		a := ancestors[p]
		over := func(name, mine, theirs string) error {
			return fmt.Errorf("%w: %s=%s is more than %s's %s=%s", ErrExceedsParent, name, mine, p, name, theirs)
		}
		switch {
		case a.Memory > 0 && l.Memory > a.Memory:
			return over(NameMemory, FormatSize(l.Memory), FormatSize(a.Memory))
		case a.MemoryHigh > 0 && l.MemoryHigh > a.MemoryHigh:
			return over(NameMemoryHigh, FormatSize(l.MemoryHigh), FormatSize(a.MemoryHigh))
		case a.CPUs > 0 && l.CPUs > a.CPUs:
			return over(NameCPUs, fmtCPUs(l.CPUs), fmtCPUs(a.CPUs))
		case a.Pids > 0 && l.Pids > a.Pids:
			return over(NamePids, strconv.FormatInt(l.Pids, 10), strconv.FormatInt(a.Pids, 10))
		}
	}
	return nil
}

// CheckChildren returns an error wrapping ErrExceedsParent if lowering a
// node's limits to l would leave a descendant's limit above them.
func CheckChildren(path string, l Limits, descendants map[string]Limits) error {
	paths := make([]string, 0, len(descendants))
	for p := range descendants {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		if err := CheckNested(descendants[p], map[string]Limits{path: l}); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

func fmtCPUs(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
