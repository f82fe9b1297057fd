// Package rootfs owns the root file systems of `cr run --rootfs`
// containers: where a container's overlay lives (a read-only lower shared
// by any number of containers, an upper and a work directory of its own
// under cr's state directory), and the mount namespace the container init
// builds on it (the overlay as its root, a fresh /proc, a minimal /dev, a
// private /tmp, cr's own two directories under /.cr, and nothing of the
// host's mount table).
package rootfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Where cr's own directories appear inside a container's root. Both are
// bind mounts of the host's (external mounts to CRIU, named by ExtState
// and ExtBin): the init reaches its container's state (log, config, lock)
// through the first, and runs from the second, so that what CRIU records
// of it (its executable, its open files) is inside the container's root.
const (
	CrDir    = "/.cr"
	StateDir = CrDir + "/state"
	BinDir   = CrDir + "/bin"

	ExtState = "cr-state"
	ExtBin   = "cr-bin"
)

// Layout is where one container's overlay lives on the host.
type Layout struct {
	Lower  string `json:"lower"`  // the read-only lower, shared
	Upper  string `json:"upper"`  // the container's own changes
	Work   string `json:"work"`   // overlayfs's work directory, beside Upper
	Merged string `json:"merged"` // where the overlay is mounted before it becomes the root
}

// NodeLayout is the layout of a container whose per-node directory
// (below cr's state directory) is dir.
func NodeLayout(lower, dir string) Layout {
	d := filepath.Join(dir, "rootfs")
	return Layout{Lower: lower, Upper: filepath.Join(d, "upper"), Work: filepath.Join(d, "work"), Merged: filepath.Join(d, "merged")}
}

// Prepare creates the container's own directories (empty upper, work and
// merged), after checking that the lower is a directory with what a
// container needs to start.
func (l Layout) Prepare() error {
	if err := CheckLower(l.Lower); err != nil {
		return err
	}
	for _, d := range []string{l.Upper, l.Work, l.Merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	return nil
}

// CheckLower refuses a lower that is not a directory.
func CheckLower(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("rootfs %s: not an absolute path", dir)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("rootfs %s: not a directory", dir)
	}
	return nil
}

// Spec is what the container init needs to build its root: the layout and
// the host's directories it binds under /.cr. It is passed to the init as
// one argument (String, ParseSpec).
type Spec struct {
	Layout
	HostState string `json:"host_state"`
	HostBin   string `json:"host_bin"`
}

func (s Spec) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ParseSpec reads a Spec written by String; "" is no rootfs.
func ParseSpec(a string) (*Spec, error) {
	if a == "" {
		return nil, nil
	}
	var s Spec
	if err := json.Unmarshal([]byte(a), &s); err != nil || s.Lower == "" || s.Merged == "" {
		return nil, errors.New("bad rootfs spec")
	}
	return &s, nil
}

// Devices are the character devices of a container's /dev: name, mode,
// major, minor.
var Devices = []struct {
	Name         string
	Mode         uint32
	Major, Minor uint32
}{
	{"null", 0o666, 1, 3},
	{"zero", 0o666, 1, 5},
	{"full", 0o666, 1, 7},
	{"random", 0o666, 1, 8},
	{"urandom", 0o666, 1, 9},
	{"tty", 0o666, 5, 0},
}

// devLinks are the symbolic links of a container's /dev.
var devLinks = [][2]string{
	{"ptmx", "pts/ptmx"},
	{"fd", "/proc/self/fd"},
	{"stdin", "/proc/self/fd/0"},
	{"stdout", "/proc/self/fd/1"},
	{"stderr", "/proc/self/fd/2"},
}

// Enter builds the container's root in the caller's mount namespace, which
// must be its own (the init's, made private first), and makes it the
// caller's root with pivot_root: afterwards the host's mounts are gone
// from the namespace. The caller's working directory is then "/".
func Enter(s Spec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := s.Layout.Mount(); err != nil {
		return err
	}
	if err := populate(s.Merged, s.HostState, s.HostBin); err != nil {
		return err
	}
	return pivot(s.Merged)
}

// escape quotes what overlayfs's option parser treats specially.
func escape(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`)
	return r.Replace(p)
}

// populate mounts the container's own file systems below root.
func populate(root, hostState, hostBin string) error {
	at := func(p string) string { return filepath.Join(root, p) }
	mkdir := func(p string, mode os.FileMode) error {
		if err := os.MkdirAll(at(p), mode); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		return nil
	}
	mount := func(src, p, fstype string, flags uintptr, data string) error {
		if err := unix.Mount(src, at(p), fstype, flags, data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", fstype, p, err)
		}
		return nil
	}
	const nosuid, nodev, noexec = unix.MS_NOSUID, unix.MS_NODEV, unix.MS_NOEXEC
	for _, d := range []string{"/proc", "/dev", "/tmp"} {
		if err := mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := mount("proc", "/proc", "proc", nosuid|nodev|noexec, ""); err != nil {
		return err
	}
	if err := mount("tmpfs", "/dev", "tmpfs", nosuid|noexec, "mode=755,size=1m"); err != nil {
		return err
	}
	for _, d := range Devices {
		if err := unix.Mknod(at("/dev/"+d.Name), unix.S_IFCHR|d.Mode, int(unix.Mkdev(d.Major, d.Minor))); err != nil {
			return fmt.Errorf("create /dev/%s: %w", d.Name, err)
		}
		if err := unix.Chmod(at("/dev/"+d.Name), d.Mode); err != nil { // past the umask
			return fmt.Errorf("create /dev/%s: %w", d.Name, err)
		}
	}
	for _, l := range devLinks {
		if err := os.Symlink(l[1], at("/dev/"+l[0])); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	if err := mkdir("/dev/pts", 0o755); err != nil {
		return err
	}
	if err := mkdir("/dev/shm", 0o755); err != nil {
		return err
	}
	if err := mount("devpts", "/dev/pts", "devpts", nosuid|noexec, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	if err := mount("shm", "/dev/shm", "tmpfs", nosuid|nodev, "mode=1777"); err != nil {
		return err
	}
	if err := mount("tmpfs", "/tmp", "tmpfs", nosuid|nodev, "mode=1777"); err != nil {
		return err
	}
	if err := mkdir(CrDir, 0o755); err != nil {
		return err
	}
	if err := mount("tmpfs", CrDir, "tmpfs", nosuid|nodev|noexec, "mode=755,size=64k"); err != nil {
		return err
	}
	for _, d := range []string{StateDir, BinDir} {
		if err := mkdir(d, 0o700); err != nil {
			return err
		}
	}
	if err := mount(hostState, StateDir, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if err := mount(hostBin, BinDir, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	return mount("", BinDir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|nosuid|nodev, "")
}

// pivot makes root the root of the caller's mount namespace and detaches
// the old one.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	// pivot_root(".", "."): the old root is stacked on the new one, and
	// unmounting "." takes it away.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	return unix.Chdir("/")
}
