package rootfs

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A migration sends the upper layer of a running --rootfs container
// before the freeze (WritePreCopy: a layer archive of the live tree), and
// after the freeze only what changed since (WriteDelta), which the
// destination applies over the pre-copied tree (ApplyDelta). What
// changed is decided as rsync does: an entry whose type, mode, owner,
// size, modification time, link count, link target, device or extended
// attributes differ from the pre-copy's; and, where those match, a
// regular file whose content may have changed without its time showing it
// (open for writing, or modified within the timestamps' granularity of
// the pre-copy, git's "racy" files) when its content hash differs.

// racyWindow covers the granularity of file timestamps (a coarse clock
// tick) and the lag of the kernel's coarse clock behind time.Now.
const racyWindow = 50 * time.Millisecond

// Snapshot is what a pre-copy sent of a tree, for WriteDelta.
type Snapshot struct {
	entries map[string]entryMeta
	// Stats count what the pre-copy archive held.
	Stats LayerStats
}

// entryMeta is one entry as the pre-copy saw and sent it.
type entryMeta struct {
	mode       uint32 // type and permission bits
	uid, gid   uint32
	size       int64
	mtime      int64 // ns
	nlink      uint64
	rdev       uint64
	link       string // a symbolic link's target
	xattrs     string
	sum        [sha256.Size]byte // a regular file's archived content
	racy, torn bool
}

func metaOf(s *unix.Stat_t, link, xattrs string) entryMeta {
	m := entryMeta{mode: s.Mode, uid: s.Uid, gid: s.Gid, mtime: s.Mtim.Nano(), rdev: s.Rdev, link: link, xattrs: xattrs}
	if s.Mode&unix.S_IFMT == unix.S_IFREG {
		m.size, m.nlink = s.Size, s.Nlink
	}
	return m
}

// same reports whether b's metadata is a's.
func (a entryMeta) same(b entryMeta) bool {
	return a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.size == b.size && a.mtime == b.mtime &&
		a.nlink == b.nlink && a.rdev == b.rdev && a.link == b.link && a.xattrs == b.xattrs
}

// ErrGrew: the tree grew past the declared bound while it was pre-copied.
var ErrGrew = errors.New("the tree grew while it was sent")

// Size is the length of the regular files of the tree at dir, counted as
// a pre-copy counts them.
func Size(dir string) (int64, error) {
	var n int64
	err := walk(dir, true, func(_, _ string, s *unix.Stat_t) error {
		if s.Mode&unix.S_IFMT == unix.S_IFREG {
			n += s.Size
		}
		return nil
	})
	return n, err
}

// WritePreCopy writes the tree at dir, which may change meanwhile, to w as
// a layer archive whose regular files hold at most limit bytes (else
// ErrGrew), and returns what it sent.
func WritePreCopy(w io.Writer, dir string, limit int64) (*Snapshot, error) {
	snap := &Snapshot{entries: map[string]entryMeta{}}
	lw := newLayerWriter(w)
	lw.live = true
	start := time.Now().Add(-racyWindow).UnixNano()
	err := walk(dir, true, func(rel, p string, s *unix.Stat_t) error {
		if s.Mode&unix.S_IFMT == unix.S_IFREG && lw.st.Bytes+s.Size > limit {
			return fmt.Errorf("%w: more than the %d bytes declared", ErrGrew, limit)
		}
		link, xs, err := linkAndXattrs(p, s)
		if err != nil {
			return lw.vanished(err)
		}
		h := sha256.New()
		torn, err := lw.entry(rel, p, s, h)
		if err != nil {
			return err
		}
		m := metaOf(s, link, xs)
		copy(m.sum[:], h.Sum(nil))
		m.torn = torn
		m.racy = m.mtime >= start
		snap.entries[rel] = m
		return nil
	})
	snap.Stats = lw.st
	if err != nil {
		return nil, err
	}
	return snap, lw.tw.Close()
}

func linkAndXattrs(p string, s *unix.Stat_t) (link, xattrs string, err error) {
	if s.Mode&unix.S_IFMT == unix.S_IFLNK {
		if link, err = os.Readlink(p); err != nil {
			return "", "", err
		}
	}
	xattrs, err = xattrLine(p)
	return link, xattrs, err
}

// contentHash is a regular file's content as a layer archive holds it:
// its data extents' bytes, then their list.
func contentHash(p string, size int64) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return sum, err
	}
	extents := [][2]int64{{0, size}}
	if st.Blocks*512 < size {
		if extents, err = dataExtents(f, size); err != nil {
			return sum, err
		}
	}
	h := sha256.New()
	for _, e := range extents {
		if _, err := io.Copy(h, io.NewSectionReader(f, e[0], e[1])); err != nil {
			return sum, err
		}
	}
	io.WriteString(h, extentList(extents))
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// DeltaStats count what a delta holds.
type DeltaStats struct {
	Files   int   // entries written (changed or new), directories aside
	Bytes   int64 // their regular files' lengths
	Removed int   // names the pre-copy had and the tree no longer has
	Dirs    int   // directories written (their attributes changed)
}

// WriteDelta writes to w what changed in the tree at dir, which must not
// change meanwhile (its container is frozen), since snap: a layer archive
// whose first entries remove the names that are gone (an empty regular
// file with the PAX record CR.remove), followed by the new and changed
// entries in walk order. writing reports the names (relative to dir)
// that a process holds open for writing or mapped shared and writable;
// their content is compared even when their metadata match.
func WriteDelta(w io.Writer, dir string, snap *Snapshot, writing func(rel string) bool) (DeltaStats, error) {
	type ent struct {
		rel, p string
		s      unix.Stat_t
	}
	var all []ent
	changed := map[string]bool{}
	seen := map[string]bool{}
	groups := map[[2]uint64][]string{} // hard links
	err := walkTree(dir, func(rel, p string, s *unix.Stat_t) error {
		all = append(all, ent{rel, p, *s})
		seen[rel] = true
		if s.Mode&unix.S_IFMT == unix.S_IFREG && s.Nlink > 1 {
			k := [2]uint64{s.Dev, s.Ino}
			groups[k] = append(groups[k], rel)
		}
		old, ok := snap.entries[rel]
		if !ok {
			changed[rel] = true
			return nil
		}
		link, xs, err := linkAndXattrs(p, s)
		if err != nil {
			return err
		}
		now := metaOf(s, link, xs)
		switch {
		case !old.same(now) || old.torn:
			changed[rel] = true
		case s.Mode&unix.S_IFMT == unix.S_IFREG && (old.racy || writing != nil && writing(rel)):
			sum, err := contentHash(p, s.Size)
			if err != nil {
				return err
			}
			changed[rel] = sum != old.sum
		}
		return nil
	})
	if err != nil {
		return DeltaStats{}, err
	}
	// A changed hard link takes its whole group: each name is written
	// again, the first as the file, the others as links to it.
	for _, names := range groups {
		for _, n := range names {
			if changed[n] {
				for _, m := range names {
					changed[m] = true
				}
				break
			}
		}
	}
	var gone []string
	for rel := range snap.entries {
		if !seen[rel] {
			gone = append(gone, rel)
		}
	}
	sort.Strings(gone)
	var st DeltaStats
	lw := newLayerWriter(w)
	last := "\x00"
	for _, rel := range gone {
		if strings.HasPrefix(rel, last+"/") {
			continue // with its directory
		}
		last = rel
		h := &tar.Header{Name: rel, Typeflag: tar.TypeReg, Mode: 0o600, Format: tar.FormatPAX,
			ModTime: time.Unix(0, 0), PAXRecords: map[string]string{paxRemove: "1"}}
		if err := lw.tw.WriteHeader(h); err != nil {
			return st, err
		}
		st.Removed++
	}
	for _, e := range all {
		if !changed[e.rel] {
			continue
		}
		if _, err := lw.entry(e.rel, e.p, &e.s, nil); err != nil {
			return st, err
		}
		if e.s.Mode&unix.S_IFMT == unix.S_IFDIR {
			st.Dirs++
		}
	}
	st.Files, st.Bytes = lw.st.Files, lw.st.Bytes
	return st, lw.tw.Close()
}

// ApplyDelta applies a delta written by WriteDelta to the tree at dir
// (the pre-copied one), within lim: removals, then each entry replacing
// what has its name (a directory keeps its content and takes the
// entry's attributes). Like ReadLayer, it works through an os.Root on
// dir.
func ApplyDelta(r io.Reader, dir string, lim Limits) (LayerStats, error) {
	return readLayer(r, dir, lim, true)
}

// PreCopied is what a migration's pre-copy left at the destination, in
// its staging: the uppers that the image's deltas apply to, by the
// container's path in the manifest ("/" for the root), and lowers (by
// digest, each verified).
type PreCopied struct {
	Uppers map[string]string
	Lowers map[string]string
}

// MoveTree moves the tree at src to dst, an empty directory or none:
// a rename, or across file systems a copy (a layer archive written and
// read back) after which src is removed.
func MoveTree(src, dst string) error {
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	err := os.Rename(src, dst)
	if !errors.Is(err, unix.EXDEV) {
		return err
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() {
		_, err := WriteLayer(pw, src)
		pw.CloseWithError(err)
	}()
	_, err = ReadLayer(pr, dst)
	pr.CloseWithError(err)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return os.RemoveAll(src)
}

// Lower is the pre-copied lower with that digest ("" if none).
func (p *PreCopied) Lower(digest string) string {
	if p == nil {
		return ""
	}
	return p.Lowers[digest]
}
