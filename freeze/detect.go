package freeze

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Hierarchy is the cgroup hierarchy cr keeps its containers in.
type Hierarchy struct {
	// Version is 2 when Mount is a cgroup v2 hierarchy, 1 when it is the
	// v1 freezer hierarchy.
	Version int
	// Mount is where that hierarchy is mounted: /sys/fs/cgroup on a pure
	// v2 system, /sys/fs/cgroup/unified on a hybrid one,
	// /sys/fs/cgroup/freezer on a v1-only one.
	Mount string
	// Hybrid is set when both a v2 hierarchy and v1 hierarchies are
	// mounted.
	Hybrid bool
	// V1Freezer is the mount point of the v1 freezer hierarchy, if any.
	V1Freezer string
}

// DefaultMountinfo is the mount table Detect reads.
const DefaultMountinfo = "/proc/self/mountinfo"

// Detect finds the hierarchy cr keeps its cgroups in, from the current
// process's mount table. See DetectFrom.
func Detect() (Hierarchy, error) {
	return DetectFrom(DefaultMountinfo)
}

// DetectFrom finds the hierarchy cr keeps its cgroups in from the mount
// table at mountinfoPath (in /proc/PID/mountinfo format): the cgroup v2
// hierarchy if one is mounted (preferring /sys/fs/cgroup, then
// /sys/fs/cgroup/unified, then the first listed), else the v1 freezer
// hierarchy. It returns an error wrapping ErrNoFreezer if there is neither.
func DetectFrom(mountinfoPath string) (Hierarchy, error) {
	mounts, err := ReadMountinfo(mountinfoPath)
	if err != nil {
		return Hierarchy{}, fmt.Errorf("detect cgroup hierarchy: %w", err)
	}
	var h Hierarchy
	var v2, v1 []string
	for _, m := range mounts {
		switch m.FSType {
		case "cgroup2":
			v2 = append(v2, m.Point)
		case "cgroup":
			v1 = append(v1, m.Point)
			if h.V1Freezer == "" && hasOption(m.SuperOpts, "freezer") {
				h.V1Freezer = m.Point
			}
		}
	}
	h.Hybrid = len(v2) > 0 && len(v1) > 0
	switch {
	case len(v2) > 0:
		h.Version, h.Mount = 2, preferred(v2, "/sys/fs/cgroup", "/sys/fs/cgroup/unified")
	case h.V1Freezer != "":
		h.Version, h.Mount = 1, h.V1Freezer
	default:
		return Hierarchy{}, fmt.Errorf("detect cgroup hierarchy in %s: %w", mountinfoPath, ErrNoFreezer)
	}
	return h, nil
}

// preferred returns the first of want found in points, else points[0].
func preferred(points []string, want ...string) string {
	for _, w := range want {
		if slices.Contains(points, w) {
			return w
		}
	}
	return points[0]
}

// Mount is one line of a mount table: what cr's packages read of it.
type Mount struct {
	Point     string // where it is mounted, unescaped
	FSType    string
	SuperOpts string // the file system's own options
}

// ReadMountinfo parses the fields of a mountinfo file (/proc/PID/mountinfo,
// DefaultMountinfo for the caller's) that cr reads, in the file's order
// (parents before their children). See proc_pid_mountinfo(5): the mount
// point is field 5, and the file system type and super options follow the
// "-" separator. It is the one mountinfo parser of cr.
func ReadMountinfo(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 10 || sep < 0 || len(fields) < sep+4 {
			return nil, fmt.Errorf("parse %s line %d: malformed", path, n)
		}
		mounts = append(mounts, Mount{
			Point:     unescapeOctal(fields[4]),
			FSType:    fields[sep+1],
			SuperOpts: fields[sep+3],
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return mounts, nil
}

func hasOption(opts, want string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == want {
			return true
		}
	}
	return false
}

// unescapeOctal undoes the kernel's \ooo escapes of space, tab, newline
// and backslash in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if c, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(c))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// V1Mounts returns the mount point of each v1 controller hierarchy in the
// mount table at mountinfoPath, by controller name ("memory", "cpu", ...;
// a hierarchy that co-mounts several, such as cpu,cpuacct, is listed under
// each). The first mount of a controller wins.
func V1Mounts(mountinfoPath string) (map[string]string, error) {
	mounts, err := ReadMountinfo(mountinfoPath)
	if err != nil {
		return nil, fmt.Errorf("detect cgroup hierarchies: %w", err)
	}
	out := map[string]string{}
	for _, m := range mounts {
		if m.FSType != "cgroup" {
			continue
		}
		for o := range strings.SplitSeq(m.SuperOpts, ",") {
			if _, ok := out[o]; !ok && o != "rw" && o != "ro" && !strings.Contains(o, "=") {
				out[o] = m.Point
			}
		}
	}
	return out, nil
}
