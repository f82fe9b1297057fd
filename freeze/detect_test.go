package freeze

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestDetectFrom(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Hierarchy
	}{
		// This machine: v1 controllers and a v2 hierarchy at unified.
		{"mountinfo-hybrid", Hierarchy{Version: 2, Mount: "/sys/fs/cgroup/unified", Hybrid: true, V1Freezer: "/sys/fs/cgroup/freezer"}},
		// Debian 12, Fedora, Ubuntu 22.04: cgroup2 only.
		{"mountinfo-v2", Hierarchy{Version: 2, Mount: "/sys/fs/cgroup"}},
		// CentOS 7: v1 only, the freezer among comounted controllers.
		{"mountinfo-v1", Hierarchy{Version: 1, Mount: "/sys/fs/cgroup/freezer", V1Freezer: "/sys/fs/cgroup/freezer"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := DetectFrom(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatalf("DetectFrom: %v", err)
			}
			if got != tc.want {
				t.Errorf("DetectFrom = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDetectFromNone(t *testing.T) {
	// Cgroup v1 without the freezer controller, and no v2.
	if h, err := DetectFrom(filepath.Join("testdata", "mountinfo-none")); !errors.Is(err, ErrNoFreezer) {
		t.Errorf("DetectFrom(no freezer) = %+v, %v; want ErrNoFreezer", h, err)
	}
}

func TestDetectFromOddMounts(t *testing.T) {
	// A cgroup2 mount somewhere else (escaped space in its path), the
	// freezer comounted with cpu: both found, v2 preferred.
	path := filepath.Join(t.TempDir(), "mountinfo")
	data := "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
		`50 27 0:40 / /mnt/my\040cgroups rw,relatime shared:3 master:1 - cgroup2 none rw` + "\n" +
		"51 27 0:41 / /mnt/cpu,freezer rw,relatime - cgroup cgroup rw,cpu,freezer\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := DetectFrom(path)
	want := Hierarchy{Version: 2, Mount: "/mnt/my cgroups", Hybrid: true, V1Freezer: "/mnt/cpu,freezer"}
	if err != nil || got != want {
		t.Errorf("DetectFrom = %+v, %v; want %+v", got, err, want)
	}
}

func TestDetectFromErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := DetectFrom(filepath.Join(dir, "missing")); err == nil {
		t.Error("DetectFrom(missing file) succeeded")
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("1 2 3 / /x rw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := DetectFrom(bad); err == nil || errors.Is(err, ErrNoFreezer) {
		t.Errorf("DetectFrom(malformed) error = %v, want a parse error", err)
	}
}

// TestDetect checks the real mount table against what the kernel shows
// under the mount Detect chose.
func TestDetect(t *testing.T) {
	h, err := Detect()
	if errors.Is(err, ErrNoFreezer) {
		t.Skip("no cgroup freezer mounted here")
	}
	if err != nil {
		t.Fatal(err)
	}
	marker := "cgroup.controllers" // only a v2 hierarchy has it
	if h.Version == 1 {
		marker = "tasks" // only a v1 hierarchy has it
	}
	if _, err := os.Stat(filepath.Join(h.Mount, marker)); err != nil {
		t.Errorf("Detect = %+v, but %s is not a v%d hierarchy: %v", h, h.Mount, h.Version, err)
	}
	if h.Version == 2 {
		if _, err := os.Stat(filepath.Join(h.Mount, "tasks")); err == nil {
			t.Errorf("Detect = %+v, but %s has a v1 tasks file", h, h.Mount)
		}
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/fs/cgroup`:      "/sys/fs/cgroup",
		`/mnt/with\040space`:  "/mnt/with space",
		`/tab\011and\134back`: "/tab\tand\\back",
		`/odd\04`:             `/odd\04`,
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}
