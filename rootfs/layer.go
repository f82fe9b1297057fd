package rootfs

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A layer archive is a POSIX (PAX) tar of a directory tree: the upper
// layer of a container's overlay (its whiteouts, overlayfs's character
// devices 0/0, and opaque directories, an xattr, included as they are),
// or a whole lower. Entries are in lexical walk order, parents first,
// named relative to the tree's root without a leading "./"; the root
// itself is the entry ".". Each keeps its type (directory, regular file,
// symbolic link, hard link to an earlier entry, character or block device,
// FIFO), its whole mode, owner, modification time and every extended
// attribute (PAX records SCHILY.xattr.NAME). A sparse regular file stores
// only its data: the PAX record CR.sparse lists its data extents as
// "offset:length" pairs separated by commas, CR.size its length, and the
// entry's content is the extents' bytes one after the other.
const (
	paxSparse = "CR.sparse"
	paxSize   = "CR.size"
	paxXattr  = "SCHILY.xattr."
)

// LayerStats count what a layer holds.
type LayerStats struct {
	Files    int   // entries other than directories
	Bytes    int64 // regular files' lengths
	Whiteout int   // deletions (whiteouts)
}

// IsWhiteout reports whether an entry is overlayfs's mark of a deletion.
func IsWhiteout(h *tar.Header) bool {
	return h.Typeflag == tar.TypeChar && h.Devmajor == 0 && h.Devminor == 0
}

// WriteLayer writes the tree at dir to w as a layer archive.
func WriteLayer(w io.Writer, dir string) (LayerStats, error) {
	var st LayerStats
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{} // dev, inode -> first name
	err := walkTree(dir, func(rel, p string, s *unix.Stat_t) error {
		h := &tar.Header{Name: rel, Mode: int64(s.Mode & 0o7777), Uid: int(s.Uid), Gid: int(s.Gid),
			ModTime: time.Unix(s.Mtim.Sec, s.Mtim.Nsec), Format: tar.FormatPAX}
		if err := readXattrs(p, h); err != nil {
			return err
		}
		var data *os.File
		var extents [][2]int64
		switch s.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			h.Typeflag = tar.TypeDir
		case unix.S_IFLNK:
			h.Typeflag = tar.TypeSymlink
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			h.Linkname = t
		case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
			h.Typeflag = map[uint32]byte{unix.S_IFCHR: tar.TypeChar, unix.S_IFBLK: tar.TypeBlock, unix.S_IFIFO: tar.TypeFifo}[s.Mode&unix.S_IFMT]
			h.Devmajor, h.Devminor = int64(unix.Major(s.Rdev)), int64(unix.Minor(s.Rdev))
			if IsWhiteout(h) {
				st.Whiteout++
			}
		case unix.S_IFREG:
			key := [2]uint64{s.Dev, s.Ino}
			if first, ok := links[key]; ok && s.Nlink > 1 {
				h.Typeflag, h.Linkname = tar.TypeLink, first
				h.PAXRecords = nil // the first entry has them
				break
			}
			links[key] = rel
			h.Typeflag = tar.TypeReg
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			data = f
			st.Bytes += s.Size
			extents, err = dataExtents(f, s.Size)
			if err != nil {
				return err
			}
			h.Size = s.Size
			if s.Blocks*512 < s.Size { // has holes
				var parts []string
				h.Size = 0
				for _, e := range extents {
					parts = append(parts, fmt.Sprintf("%d:%d", e[0], e[1]))
					h.Size += e[1]
				}
				if h.PAXRecords == nil {
					h.PAXRecords = map[string]string{}
				}
				h.PAXRecords[paxSparse] = strings.Join(parts, ",")
				h.PAXRecords[paxSize] = strconv.FormatInt(s.Size, 10)
			} else {
				extents = [][2]int64{{0, s.Size}}
			}
		default:
			return fmt.Errorf("%s: cannot archive a socket", p)
		}
		if h.Typeflag != tar.TypeDir {
			st.Files++
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if data != nil {
			for _, e := range extents {
				if _, err := io.Copy(tw, io.NewSectionReader(data, e[0], e[1])); err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
			}
			data.Close()
		}
		return nil
	})
	if err != nil {
		return st, err
	}
	return st, tw.Close()
}

// walkTree calls visit for every entry of the tree at dir, in lexical walk
// order, parents first: rel is the entry's name relative to dir (the root
// is "."), p its path and s its lstat. A directory's entries are visited
// after visit returns for it. Digest and WriteLayer share it, so a digest
// and a layer archive always see the same entries in the same order.
func walkTree(dir string, visit func(rel, p string, s *unix.Stat_t) error) error {
	var walk func(rel string) error
	walk = func(rel string) error {
		p := filepath.Join(dir, rel)
		var s unix.Stat_t
		if err := unix.Lstat(p, &s); err != nil {
			return err
		}
		if err := visit(rel, p, &s); err != nil {
			return err
		}
		if s.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		names, err := readDirNames(p)
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := walk(path.Join(rel, n)); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(".")
}

func readDirNames(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// dataExtents lists the data regions of f (SEEK_DATA, SEEK_HOLE).
func dataExtents(f *os.File, size int64) ([][2]int64, error) {
	var out [][2]int64
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // a hole up to the end
		}
		if err != nil {
			return nil, err
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		out = append(out, [2]int64{d, h - d})
		off = h
	}
	_, err := unix.Seek(fd, 0, io.SeekStart)
	return out, err
}

func readXattrs(p string, h *tar.Header) error {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if err == unix.ENOTSUP {
			err = nil
		}
		return err
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return err
	}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vs, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return fmt.Errorf("%s: xattr %s: %w", p, name, err)
		}
		v := make([]byte, vs)
		vs, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			return fmt.Errorf("%s: xattr %s: %w", p, name, err)
		}
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[paxXattr+name] = string(v[:vs])
	}
	return nil
}

// ErrUnsafeLayer: a layer archive entry that could escape the tree.
var ErrUnsafeLayer = errors.New("unsafe layer entry")

// ReadLayer recreates the tree of a layer archive in dir, which must
// exist and be empty. Every entry is created through an os.Root on dir, so
// neither a name nor a symbolic link of the archive reaches outside it.
func ReadLayer(r io.Reader, dir string) (LayerStats, error) {
	var st LayerStats
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, err
	}
	defer root.Close()
	type dirTime struct {
		name string
		t    time.Time
	}
	var dirs []dirTime // directories' times, set once their content is in
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		name := h.Name
		if name != "." && (!fs.ValidPath(name) || strings.HasPrefix(name, "./")) {
			return st, fmt.Errorf("%w: %q", ErrUnsafeLayer, h.Name)
		}
		if h.Typeflag != tar.TypeDir {
			st.Files++
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if name != "." {
				if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
					return st, err
				}
			}
			dirs = append(dirs, dirTime{name, h.ModTime})
		case tar.TypeReg:
			if err := readFile(root, name, h, tr); err != nil {
				return st, err
			}
			st.Bytes += fileSize(h)
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return st, err
			}
		case tar.TypeLink:
			if !fs.ValidPath(h.Linkname) {
				return st, fmt.Errorf("%w: link %q to %q", ErrUnsafeLayer, h.Name, h.Linkname)
			}
			if err := root.Link(h.Linkname, name); err != nil {
				return st, err
			}
			continue // shares the first entry's inode and its attributes
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if IsWhiteout(h) {
				st.Whiteout++
			}
			if err := mknodIn(root, name, h); err != nil {
				return st, err
			}
		default:
			return st, fmt.Errorf("%w: %q has type %q", ErrUnsafeLayer, h.Name, h.Typeflag)
		}
		if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
			return st, err
		}
		if err := setXattrs(root, name, h); err != nil {
			return st, err
		}
		if h.Typeflag != tar.TypeSymlink {
			// After chown, which clears the set-id bits.
			if err := chmodIn(root, name, uint32(h.Mode&0o7777)); err != nil {
				return st, err
			}
		}
		if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeSymlink {
			if err := root.Chtimes(name, h.ModTime, h.ModTime); err != nil {
				return st, err
			}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chtimes(dirs[i].name, dirs[i].t, dirs[i].t); err != nil {
			return st, err
		}
	}
	return st, nil
}

func fileSize(h *tar.Header) int64 {
	if s, ok := h.PAXRecords[paxSize]; ok {
		n, _ := strconv.ParseInt(s, 10, 64)
		return n
	}
	return h.Size
}

// readFile writes a regular file's content, leaving a sparse file's holes.
func readFile(root *os.Root, name string, h *tar.Header, r io.Reader) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	sp, ok := h.PAXRecords[paxSparse]
	if !ok {
		_, err = io.Copy(f, r)
		return err
	}
	size, err := strconv.ParseInt(h.PAXRecords[paxSize], 10, 64)
	if err != nil || size < 0 {
		return fmt.Errorf("%w: %q: bad %s", ErrUnsafeLayer, h.Name, paxSize)
	}
	var total int64
	for _, part := range strings.Split(sp, ",") {
		if part == "" {
			continue
		}
		o, l, ok := strings.Cut(part, ":")
		off, err1 := strconv.ParseInt(o, 10, 64)
		n, err2 := strconv.ParseInt(l, 10, 64)
		if !ok || err1 != nil || err2 != nil || off < 0 || n < 0 || off+n > size {
			return fmt.Errorf("%w: %q: bad %s", ErrUnsafeLayer, h.Name, paxSparse)
		}
		if _, err := io.Copy(io.NewOffsetWriter(f, off), io.LimitReader(r, n)); err != nil {
			return err
		}
		total += n
	}
	if total != h.Size {
		return fmt.Errorf("%w: %q: extents do not add up", ErrUnsafeLayer, h.Name)
	}
	return f.Truncate(size)
}

// inParent opens name's parent directory through root and calls f with its
// descriptor and name's last component.
func inParent(root *os.Root, name string, f func(dirfd int, base string) error) error {
	d, err := root.Open(path.Dir(name))
	if err != nil {
		return err
	}
	defer d.Close()
	return f(int(d.Fd()), path.Base(name))
}

func mknodIn(root *os.Root, name string, h *tar.Header) error {
	typ := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
	return inParent(root, name, func(fd int, base string) error {
		dev := unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
		if err := unix.Mknodat(fd, base, typ|0o600, int(dev)); err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		return nil
	})
}

func chmodIn(root *os.Root, name string, mode uint32) error {
	return inParent(root, name, func(fd int, base string) error {
		return unix.Fchmodat(fd, base, mode, 0)
	})
}

func setXattrs(root *os.Root, name string, h *tar.Header) error {
	var keys []string
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, paxXattr) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	return inParent(root, name, func(fd int, base string) error {
		p := fmt.Sprintf("/proc/self/fd/%d/%s", fd, base)
		for _, k := range keys {
			if err := unix.Lsetxattr(p, strings.TrimPrefix(k, paxXattr), []byte(h.PAXRecords[k]), 0); err != nil {
				return fmt.Errorf("%s: xattr %s: %w", name, strings.TrimPrefix(k, paxXattr), err)
			}
		}
		return nil
	})
}

// Change is one entry of a layer archive as cr inspect lists it.
type Change struct {
	Path string `json:"path"` // absolute inside the container's root
	// Kind is "file", "dir", "symlink", "hardlink", "device", "fifo", or
	// "deleted" (a whiteout).
	Kind string `json:"kind"`
	Size int64  `json:"size_bytes,omitempty"` // a regular file's length
}

// ListLayer lists the entries of a layer archive but its root, in order.
func ListLayer(r io.Reader) ([]Change, error) {
	var out []Change
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if h.Name == "." {
			continue
		}
		c := Change{Path: "/" + h.Name}
		switch h.Typeflag {
		case tar.TypeDir:
			c.Kind = "dir"
		case tar.TypeReg:
			c.Kind, c.Size = "file", fileSize(h)
		case tar.TypeSymlink:
			c.Kind = "symlink"
		case tar.TypeLink:
			c.Kind = "hardlink"
		case tar.TypeFifo:
			c.Kind = "fifo"
		default:
			c.Kind = "device"
			if IsWhiteout(h) {
				c.Kind = "deleted"
			}
		}
		out = append(out, c)
	}
}
