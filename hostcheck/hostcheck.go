// Package hostcheck is the host contract of a migration or a restore for
// containers on the host's own file system (no --rootfs; with --mount, a
// copy of the host's mount table): every file their
// processes have open or mapped must be at the destination, with the same
// size, because CRIU reopens them by path and refuses a file whose size
// changed. The source collects the files before it freezes anything; the
// destination checks them before it accepts.
package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// File is a regular file a process has open or mapped: its path as the
// host sees it and its size, or AnySize for a file open for writing, whose
// size may change until the freeze (only its presence is checked).
type File struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// AnySize is the Size of a file open for writing.
const AnySize = -1

// Limits of what Collect returns and Check accepts.
const (
	MaxFiles   = 65536
	MaxPathLen = 4096
)

// skipped are trees whose files CRIU does not reopen by path on the host's
// file system (pseudo file systems), or which are the container's own.
var skipped = []string{"/proc/", "/sys/", "/dev/"}

// Relevant reports whether the file at path p must be on the destination's
// file system: an absolute path outside the pseudo file systems.
func Relevant(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for _, s := range skipped {
		if strings.HasPrefix(p, s) {
			return false
		}
	}
	return true
}

// Collect lists the regular files that the processes pids have open
// (descriptors, working directory aside) or mapped, each once, sorted by
// path. A process that is gone meanwhile is skipped; deleted files are left
// out (CRIU carries them in the image).
func Collect(pids []int) ([]File, error) { return CollectAll(pids, nil) }

// CollectAll is Collect for the processes host, in the host's mount
// namespace, and mountNS, in mount namespaces of their own copied from
// the host's (cr run --mount): their paths are the host's, but what is on
// a tmpfs there is left out, since CRIU carries the content of the
// tmpfs mounts of a mount namespace it dumps.
func CollectAll(host, mountNS []int) ([]File, error) {
	seen := map[string]int64{}
	var carried func(p string) bool // the file at p (a /proc link) is on a tmpfs
	add := func(p string, size int64) {
		if !Relevant(p) || strings.HasSuffix(p, " (deleted)") {
			return
		}
		if old, ok := seen[p]; !ok || old != AnySize {
			seen[p] = size
		}
	}
	onTmpfs := func(p string) bool {
		var fs unix.Statfs_t
		return unix.Statfs(p, &fs) == nil && (fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC)
	}
	pids := append(append([]int(nil), host...), mountNS...)
	for i, pid := range pids {
		carried = nil
		if i >= len(host) {
			carried = onTmpfs
		}
		base := "/proc/" + strconv.Itoa(pid)
		ents, err := os.ReadDir(base + "/fd")
		if err != nil {
			continue // gone
		}
		for _, e := range ents {
			fd := filepath.Join(base, "fd", e.Name())
			st, err := os.Stat(fd) // the open file itself
			if err != nil || !st.Mode().IsRegular() || carried != nil && carried(fd) {
				continue
			}
			p, err := os.Readlink(fd)
			if err != nil {
				continue
			}
			size := st.Size()
			if writable(filepath.Join(base, "fdinfo", e.Name())) {
				size = AnySize
			}
			add(p, size)
		}
		maps, err := os.ReadFile(base + "/maps")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(maps), "\n") {
			f := strings.Fields(l)
			if len(f) < 6 || !strings.HasPrefix(f[5], "/") {
				continue
			}
			p := strings.Join(f[5:], " ")
			if _, ok := seen[p]; ok {
				continue
			}
			// The mapped file itself, through map_files (by path it could
			// be another one), where this process may read it.
			mf := filepath.Join(base, "map_files", f[0])
			st, err := os.Stat(mf)
			if err != nil {
				mf = p
				st, err = os.Stat(p)
			}
			if err == nil && st.Mode().IsRegular() && !(carried != nil && carried(mf)) {
				add(p, st.Size())
			}
		}
	}
	if len(seen) > MaxFiles {
		return nil, fmt.Errorf("the job has more than %d files open or mapped", MaxFiles)
	}
	out := make([]File, 0, len(seen))
	for p, s := range seen {
		out = append(out, File{Path: p, Size: s})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// writable reports whether the descriptor whose fdinfo is at p is open
// for writing.
func writable(p string) bool {
	b, err := os.ReadFile(p)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			fl, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && fl&3 != 0 // O_WRONLY or O_RDWR
		}
	}
	return false
}

// Validate checks a list a peer sent.
func Validate(files []File) error {
	if len(files) > MaxFiles {
		return fmt.Errorf("more than %d files", MaxFiles)
	}
	for _, f := range files {
		if !filepath.IsAbs(f.Path) || len(f.Path) > MaxPathLen || strings.ContainsRune(f.Path, 0) || f.Size < AnySize {
			return errors.New("a file that is not an absolute path with a size")
		}
	}
	return nil
}

// ErrMissing: files the job needs are missing here or have another size.
var ErrMissing = errors.New("files missing on this host")

// most is how many files a refusal names.
const most = 20

// Check refuses files that this host lacks or has with another size,
// naming them (the first 20, then how many more).
func Check(files []File) error {
	var bad []string
	for _, f := range files {
		st, err := os.Stat(f.Path)
		switch {
		case err != nil:
			bad = append(bad, strconv.Quote(f.Path)+" is missing")
		case !st.Mode().IsRegular():
			bad = append(bad, strconv.Quote(f.Path)+" is not a regular file")
		case f.Size != AnySize && st.Size() != f.Size:
			bad = append(bad, fmt.Sprintf("%s is %d bytes, %d at the source", strconv.Quote(f.Path), st.Size(), f.Size))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	n := len(bad)
	if n > most {
		bad = append(bad[:most], fmt.Sprintf("and %d more", n-most))
	}
	return fmt.Errorf("%w: %s", ErrMissing, strings.Join(bad, "; "))
}

// Writing lists the paths of the regular files that the processes pids
// hold open for writing or have mapped shared and writable, as the
// processes see them (inside a --rootfs container: relative to its
// root): what a pre-copy compares by content, since a write to them need
// not show in their size or time.
func Writing(pids []int) []string {
	seen := map[string]bool{}
	for _, pid := range pids {
		base := "/proc/" + strconv.Itoa(pid)
		ents, _ := os.ReadDir(base + "/fd")
		for _, e := range ents {
			fd := filepath.Join(base, "fd", e.Name())
			if st, err := os.Stat(fd); err != nil || !st.Mode().IsRegular() || !writable(filepath.Join(base, "fdinfo", e.Name())) {
				continue
			}
			if p, err := os.Readlink(fd); err == nil {
				seen[strings.TrimSuffix(p, " (deleted)")] = true
			}
		}
		maps, _ := os.ReadFile(base + "/maps")
		for _, l := range strings.Split(string(maps), "\n") {
			f := strings.Fields(l)
			if len(f) >= 6 && strings.HasPrefix(f[5], "/") && len(f[1]) == 4 && f[1][1] == 'w' && f[1][3] == 's' {
				seen[strings.Join(f[5:], " ")] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
