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
	// paxRemove marks an entry of a delta (WriteDelta) that removes
	// the name rather than creating it.
	paxRemove = "CR.remove"
)

// LayerStats count what a layer holds.
type LayerStats struct {
	Files    int   // entries other than directories
	Bytes    int64 // regular files' lengths
	Whiteout int   // deletions (whiteouts)
	Removed  int   // a delta's removals of what the pre-copy had
}

// IsWhiteout reports whether an entry is overlayfs's mark of a deletion.
func IsWhiteout(h *tar.Header) bool {
	return h.Typeflag == tar.TypeChar && h.Devmajor == 0 && h.Devminor == 0
}

// WriteLayer writes the tree at dir to w as a layer archive.
func WriteLayer(w io.Writer, dir string) (LayerStats, error) {
	lw := newLayerWriter(w)
	err := walkTree(dir, func(rel, p string, s *unix.Stat_t) error {
		_, err := lw.entry(rel, p, s, nil)
		return err
	})
	if err != nil {
		return lw.st, err
	}
	return lw.st, lw.tw.Close()
}

// layerWriter writes the entries of a layer archive one by one.
type layerWriter struct {
	tw    *tar.Writer
	links map[[2]uint64]string // dev, inode -> first name
	st    LayerStats
	// live: the tree may change while it is read (a pre-copy): a file
	// that shrank is padded with zeros, and entry reports it torn.
	live bool
}

func newLayerWriter(w io.Writer) *layerWriter {
	return &layerWriter{tw: tar.NewWriter(w), links: map[[2]uint64]string{}}
}

// errVanished: a live tree's entry went between its lstat and its read.
var errVanished = errors.New("entry vanished")

// entry writes the entry rel (at p, lstat s). With sum set, a regular
// file's archived content goes into it too (see contentHash). torn says
// that a live file changed length while it was read.
func (lw *layerWriter) entry(rel, p string, s *unix.Stat_t, sum io.Writer) (torn bool, err error) {
	h := &tar.Header{Name: rel, Mode: int64(s.Mode & 0o7777), Uid: int(s.Uid), Gid: int(s.Gid),
		ModTime: time.Unix(s.Mtim.Sec, s.Mtim.Nsec), Format: tar.FormatPAX}
	if err := readXattrs(p, h); err != nil {
		return false, lw.vanished(err)
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
			return false, lw.vanished(err)
		}
		h.Linkname = t
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		h.Typeflag = map[uint32]byte{unix.S_IFCHR: tar.TypeChar, unix.S_IFBLK: tar.TypeBlock, unix.S_IFIFO: tar.TypeFifo}[s.Mode&unix.S_IFMT]
		h.Devmajor, h.Devminor = int64(unix.Major(s.Rdev)), int64(unix.Minor(s.Rdev))
		if IsWhiteout(h) {
			lw.st.Whiteout++
		}
	case unix.S_IFREG:
		key := [2]uint64{s.Dev, s.Ino}
		if first, ok := lw.links[key]; ok && s.Nlink > 1 {
			h.Typeflag, h.Linkname = tar.TypeLink, first
			h.PAXRecords = nil // the first entry has them
			break
		}
		f, err := os.Open(p)
		if err != nil {
			return false, lw.vanished(err)
		}
		defer f.Close()
		lw.links[key] = rel
		h.Typeflag = tar.TypeReg
		data = f
		lw.st.Bytes += s.Size
		extents, err = dataExtents(f, s.Size)
		if err != nil {
			return false, err
		}
		h.Size = s.Size
		if s.Blocks*512 < s.Size { // has holes
			h.Size = 0
			for _, e := range extents {
				h.Size += e[1]
			}
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords[paxSparse] = extentList(extents)
			h.PAXRecords[paxSize] = strconv.FormatInt(s.Size, 10)
		} else {
			extents = [][2]int64{{0, s.Size}}
		}
	default:
		return false, fmt.Errorf("%s: cannot archive a socket", p)
	}
	if h.Typeflag != tar.TypeDir {
		lw.st.Files++
	}
	if err := lw.tw.WriteHeader(h); err != nil {
		return false, fmt.Errorf("%s: %w", p, err)
	}
	if data == nil {
		return false, nil
	}
	var out io.Writer = lw.tw
	if sum != nil {
		out = io.MultiWriter(lw.tw, sum)
	}
	for _, e := range extents {
		n, err := io.Copy(out, io.NewSectionReader(data, e[0], e[1]))
		if err != nil {
			return false, fmt.Errorf("%s: %w", p, err)
		}
		if n < e[1] {
			if !lw.live {
				return false, fmt.Errorf("%s: shrank while archived", p)
			}
			// Padded: the content is wrong, and the entry is torn.
			if _, err := io.CopyN(out, zeros{}, e[1]-n); err != nil {
				return false, err
			}
			torn = true
		}
	}
	if sum != nil {
		io.WriteString(sum, extentList(extents))
	}
	return torn, nil
}

// vanished turns a live tree's entry that went meanwhile into errVanished.
func (lw *layerWriter) vanished(err error) error {
	if lw.live && errors.Is(err, fs.ErrNotExist) {
		return errVanished
	}
	return err
}

func extentList(extents [][2]int64) string {
	var parts []string
	for _, e := range extents {
		parts = append(parts, fmt.Sprintf("%d:%d", e[0], e[1]))
	}
	return strings.Join(parts, ",")
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// walkTree calls visit for every entry of the tree at dir, in lexical walk
// order, parents first: rel is the entry's name relative to dir (the root
// is "."), p its path and s its lstat. A directory's entries are visited
// after visit returns for it. Digest and WriteLayer share it, so a digest
// and a layer archive always see the same entries in the same order.
func walkTree(dir string, visit func(rel, p string, s *unix.Stat_t) error) error {
	return walk(dir, false, visit)
}

// walk is walkTree; live, an entry that goes while it is walked (or
// whose visit returns errVanished) is skipped with what it held.
func walk(dir string, live bool, visit func(rel, p string, s *unix.Stat_t) error) error {
	gone := func(err error) bool {
		return live && isGone(err)
	}
	var walk func(rel string) error
	walk = func(rel string) error {
		p := filepath.Join(dir, rel)
		var s unix.Stat_t
		if err := unix.Lstat(p, &s); err != nil {
			if gone(err) {
				return nil
			}
			return err
		}
		if err := visit(rel, p, &s); err != nil {
			if gone(err) {
				return nil
			}
			return err
		}
		if s.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		names, err := readDirNames(p)
		if err != nil {
			if gone(err) {
				return nil
			}
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

// isGone reports whether err says that an entry is no longer there.
func isGone(err error) bool {
	return errors.Is(err, errVanished) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR)
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
	return readLayer(r, dir, Limits{}, false)
}

// Limits bound what a layer archive from a peer may hold: MaxBytes its
// regular files' lengths together, MaxFiles its entries (zero: no bound).
type Limits struct {
	MaxBytes int64
	MaxFiles int
}

// ErrTooLarge: a layer archive holds more than its limits allow.
var ErrTooLarge = errors.New("layer larger than declared")

// ReadLayerLimited is ReadLayer within limits.
func ReadLayerLimited(r io.Reader, dir string, lim Limits) (LayerStats, error) {
	return readLayer(r, dir, lim, false)
}

func readLayer(r io.Reader, dir string, lim Limits, delta bool) (LayerStats, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return LayerStats{}, err
	}
	defer root.Close()
	lr := &layerReader{root: root, lim: lim, delta: delta, parents: map[string]time.Time{}}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return lr.st, err
		}
		if err := lr.entry(h, tr); err != nil {
			return lr.st, err
		}
	}
	return lr.st, lr.finish()
}

// layerReader creates the entries of a layer archive one by one.
type layerReader struct {
	root  *os.Root
	lim   Limits
	st    LayerStats
	delta bool // entries replace what is there (ApplyDelta)
	n     int  // entries
	dirs  []dirTime
	// parents (delta) are the directories whose entries changed, with
	// their time before: restored unless the delta sets it.
	parents map[string]time.Time
}

type dirTime struct {
	name string
	t    time.Time
}

func (lr *layerReader) entry(h *tar.Header, r io.Reader) error {
	root := lr.root
	name := h.Name
	if name != "." && (!fs.ValidPath(name) || strings.HasPrefix(name, "./")) {
		return fmt.Errorf("%w: %q", ErrUnsafeLayer, h.Name)
	}
	if lr.n++; lr.lim.MaxFiles > 0 && lr.n > lr.lim.MaxFiles {
		return fmt.Errorf("%w: more than %d entries", ErrTooLarge, lr.lim.MaxFiles)
	}
	if h.Typeflag == tar.TypeReg {
		if size := fileSize(h); size < 0 || lr.lim.MaxBytes > 0 && lr.st.Bytes+size > lr.lim.MaxBytes {
			return fmt.Errorf("%w: more than %d bytes of files", ErrTooLarge, lr.lim.MaxBytes)
		}
	}
	if _, ok := h.PAXRecords[paxRemove]; ok {
		if !lr.delta || name == "." || h.Typeflag != tar.TypeReg || h.Size != 0 {
			return fmt.Errorf("%w: %q: a removal where none may be", ErrUnsafeLayer, h.Name)
		}
		lr.touchParent(name)
		lr.st.Removed++
		return root.RemoveAll(name)
	}
	if lr.delta && name != "." {
		// What the entry replaces goes first; a directory stays, its
		// attributes updated.
		if fi, err := root.Lstat(name); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
			lr.touchParent(name)
			if err := root.RemoveAll(name); err != nil {
				return err
			}
		} else if err != nil {
			lr.touchParent(name)
		}
	}
	if h.Typeflag != tar.TypeDir {
		lr.st.Files++
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if name != "." {
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
		}
		lr.dirs = append(lr.dirs, dirTime{name, h.ModTime})
	case tar.TypeReg:
		if err := readFile(root, name, h, r); err != nil {
			return err
		}
		lr.st.Bytes += fileSize(h)
	case tar.TypeSymlink:
		if err := root.Symlink(h.Linkname, name); err != nil {
			return err
		}
	case tar.TypeLink:
		if !fs.ValidPath(h.Linkname) {
			return fmt.Errorf("%w: link %q to %q", ErrUnsafeLayer, h.Name, h.Linkname)
		}
		return root.Link(h.Linkname, name) // shares the first entry's inode and its attributes
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if IsWhiteout(h) {
			lr.st.Whiteout++
		}
		if err := mknodIn(root, name, h); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: %q has type %q", ErrUnsafeLayer, h.Name, h.Typeflag)
	}
	if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
		return err
	}
	if err := setXattrs(root, name, h); err != nil {
		return err
	}
	if h.Typeflag != tar.TypeSymlink {
		// After chown, which clears the set-id bits.
		if err := chmodIn(root, name, uint32(h.Mode&0o7777)); err != nil {
			return err
		}
	}
	if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeSymlink {
		if err := root.Chtimes(name, h.ModTime, h.ModTime); err != nil {
			return err
		}
	}
	return nil
}

// touchParent remembers the time of name's directory before the delta
// changes its entries.
func (lr *layerReader) touchParent(name string) {
	d := path.Dir(name)
	if _, ok := lr.parents[d]; ok {
		return
	}
	if fi, err := lr.root.Lstat(d); err == nil {
		lr.parents[d] = fi.ModTime()
	}
}

// finish sets the directories' times, once their content is in.
func (lr *layerReader) finish() error {
	for _, d := range lr.dirs {
		delete(lr.parents, d.name)
	}
	for d, t := range lr.parents {
		lr.dirs = append(lr.dirs, dirTime{d, t})
	}
	for i := len(lr.dirs) - 1; i >= 0; i-- {
		if err := lr.root.Chtimes(lr.dirs[i].name, lr.dirs[i].t, lr.dirs[i].t); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
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
