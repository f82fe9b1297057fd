package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/images/criuimg"
	"github.com/cr-dev/cr/scratch"
)

// Compression names accepted by WriteOptions.Compression.
const (
	CompressionZstd = "zstd"
	CompressionS2   = "s2"
	CompressionNone = "none"
)

// progressInterval is the least time between two Progress calls.
const progressInterval = 250 * time.Millisecond

// WriteOptions control how an archive is written.
type WriteOptions struct {
	// Compression is CompressionZstd (the default when empty) or
	// CompressionNone.
	Compression string
	// Concurrency is the number of zstd encoder goroutines; 0 means
	// runtime.NumCPU().
	Concurrency int
	// Progress, if set, is called with the raw (uncompressed file content)
	// bytes consumed so far, at most a few times per second and once at the
	// end.
	Progress func(done int64)
	// Overwrite lets WriteFile replace an existing file.
	Overwrite bool
	// Precompressed entries are written among the staging dir's, in the
	// order a walk would list them (see Precompressed); their compression
	// must be the archive's.
	Precompressed []Precompressed
	// Stats, if set, fills the manifest's Stats (created when nil) just
	// before the manifest is written: WriteMicros, RawBytes and ImageBytes
	// are set to what was written so far (everything but the manifest and
	// its trailer), then Stats is called with them, for the caller to add
	// what it knows only then, such as how long the source has been
	// frozen. Without it an archive depends only on the staging dir and
	// the manifest.
	Stats func(*Stats)
}

// WriteResult describes a written archive.
type WriteResult struct {
	RawBytes   int64 // bytes of file content read from the staging dir
	ImageBytes int64 // bytes written to the output
	Elapsed    time.Duration
}

// WriteArchive streams the staging dir src as an archive to w (format
// version 2): cr-image.json, manifest.json, manifest.sha256, then every
// file and directory of src, and the precompressed entries, in the
// manifest's order (streamOrder: the bulk of memory last, in the order
// CRIU restores it). It sets m.Format and m.Version, m.Created when zero,
// and m.Files (hashing each staged file before the manifest is written,
// and again while writing it). Only regular files and directories may be
// in src; a file that changes while it is read is an error.
func WriteArchive(ctx context.Context, w io.Writer, src string, m *Manifest, o WriteOptions) (WriteResult, error) {
	start := time.Now()
	out := &countWriter{w: w}
	res, err := writeArchive(ctx, out, src, m, o, start)
	res.ImageBytes = out.n
	res.Elapsed = time.Since(start)
	if err != nil {
		return res, fmt.Errorf("write image: %w", err)
	}
	return res, nil
}

func writeArchive(ctx context.Context, out *countWriter, src string, m *Manifest, o WriteOptions, start time.Time) (WriteResult, error) {
	var res WriteResult
	bw := bufio.NewWriterSize(out, 256<<10)
	var sink io.Writer = bw
	comp := o.Compression
	if comp == "" {
		comp = CompressionZstd
	}
	enc, err := newCompressor(bw, comp, o.Concurrency)
	if err != nil {
		return res, err
	}
	if enc != nil {
		defer enc.Close() // a no-op after the Close below
		sink = enc
	}
	for _, p := range o.Precompressed {
		if p.Compression != comp {
			return res, fmt.Errorf("entry %s is compressed as %s, the archive as %s", p.Name, p.Compression, comp)
		}
	}

	m.Format, m.Version = FormatName, FormatVersion
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	aw := &archiveWriter{
		ctx:      ctx,
		tw:       tar.NewWriter(sink),
		modTime:  m.Created.Truncate(time.Second),
		progress: o.Progress,
		buf:      make([]byte, 1<<20),
		sink:     sink,
		bw:       bw,
		enc:      enc,
	}
	staged, err := StagingEntries(src)
	if err != nil {
		return res, err
	}
	entries := streamOrder(mergeEntries(staged, o.Precompressed))
	// The manifest comes first (version 2), so that a reader can restore
	// while the rest arrives: every entry is described, and its staged
	// content hashed, before anything is written.
	m.Files = make([]File, 0, len(entries))
	seen := make(map[string]bool, len(entries))
	var raw int64
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if seen[e.name] {
			return res, fmt.Errorf("entry %s twice", e.name)
		}
		seen[e.name] = true
		f, err := aw.describe(e)
		if err != nil {
			return res, err
		}
		raw += f.Size
		m.Files = append(m.Files, f)
	}
	if o.Stats != nil {
		if m.Stats == nil {
			m.Stats = &Stats{}
		}
		// What is known before the content is written: its size, and
		// the time taken to hash what was staged.
		m.Stats.WriteMicros = time.Since(start).Microseconds()
		m.Stats.RawBytes = raw
		m.Stats.ImageBytes = 0
		o.Stats(m.Stats)
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return res, fmt.Errorf("encode manifest: %w", err)
	}
	mb = append(mb, '\n')
	sum := sha256.Sum256(mb)
	if err := aw.writeBytes(HeaderFile, headerBytes); err != nil {
		return res, err
	}
	if err := aw.writeBytes(ManifestFile, mb); err != nil {
		return res, err
	}
	if err := aw.writeBytes(TrailerFile, []byte(hex.EncodeToString(sum[:])+"\n")); err != nil {
		return res, err
	}
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var f File
		switch {
		case e.pre != nil:
			f, err = aw.writePre(e.pre)
		case e.staged.Dir:
			f, err = aw.writeDir(*e.staged)
		default:
			f, err = aw.writeFile(e.staged.Path, e.staged.Name)
			if err == nil && f != m.Files[i] {
				err = fmt.Errorf("read %s: file changed while archiving", e.name)
			}
		}
		if err != nil {
			res.RawBytes = aw.raw
			return res, err
		}
	}
	res.RawBytes = aw.raw
	if err := aw.tw.Close(); err != nil {
		return res, fmt.Errorf("close tar: %w", err)
	}
	if enc != nil {
		if err := enc.Close(); err != nil {
			return res, fmt.Errorf("close %s: %w", comp, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return res, err
	}
	if o.Progress != nil {
		o.Progress(aw.raw)
	}
	return res, nil
}

// archiveWriter writes tar entries with fixed ownership and time, so that an
// archive depends only on the staging dir's content and the manifest.
type archiveWriter struct {
	ctx      context.Context
	tw       *tar.Writer
	modTime  time.Time
	progress func(int64)
	last     time.Time // of the last progress call
	raw      int64
	buf      []byte
	sink     io.Writer     // what tw writes to: enc, or bw
	bw       *bufio.Writer // the output
	enc      compressor    // nil for a plain archive
}

// streamOrder orders an archive's entries as version 2 writes them: every
// directory and small file in walk order, then the memory pages images
// (IsPages), by their directory's place in the walk, then in the order in
// which CRIU restores them: first the shared memory's (the pages images a
// pagemap-shmem-*.img points to: SysV shared memory is restored with the
// IPC namespace, before any process), then by number, which is pstree
// order (pages-1, pages-2, ..., pages-10: CRIU restores a parent's memory
// before it forks its children, which inherit it). A reader can then feed
// a restore from the stream without holding any page.
func streamOrder(entries []archiveEntry) []archiveEntry {
	out := make([]archiveEntry, 0, len(entries))
	var bulk []archiveEntry
	dirRank := map[string]int{".": -1}
	shared := map[string]bool{} // pages images of shared memory
	for _, e := range entries {
		if IsPages(e.name) {
			bulk = append(bulk, e)
			continue
		}
		if e.staged != nil && e.staged.Dir {
			dirRank[e.name] = len(dirRank)
		}
		if base := path.Base(e.name); e.staged != nil && !e.staged.Dir && strings.HasPrefix(base, "pagemap-shmem-") {
			// Only an order: an image it cannot read is still written.
			if id, err := criuimg.PagesID(filepath.Dir(e.staged.Path), filepath.Base(e.staged.Path)); err == nil {
				shared[path.Join(path.Dir(e.name), fmt.Sprintf("pages-%d.img", id))] = true
			}
		}
		out = append(out, e)
	}
	rank := func(e archiveEntry) int {
		if shared[e.name] {
			return 0
		}
		return 1
	}
	slices.SortStableFunc(bulk, func(a, b archiveEntry) int {
		if c := cmp.Compare(dirRank[path.Dir(a.name)], dirRank[path.Dir(b.name)]); c != 0 {
			return c
		}
		if c := cmp.Compare(rank(a), rank(b)); c != 0 {
			return c
		}
		return cmp.Compare(pagesNumber(a.name), pagesNumber(b.name))
	})
	return append(out, bulk...)
}

// IsPages reports whether an entry name is a CRIU memory pages image,
// "pages-N.img" (N a decimal number): the bulk of an image, streamed
// last.
func IsPages(name string) bool { return pagesNumber(name) >= 0 }

// pagesNumber is N of a name ".../pages-N.img", or -1.
func pagesNumber(name string) int64 {
	base := path.Base(name)
	num, ok := strings.CutPrefix(base, "pages-")
	if !ok {
		return -1
	}
	num, ok = strings.CutSuffix(num, ".img")
	if !ok || num == "" || len(num) > 18 {
		return -1
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != num {
		return -1
	}
	return n
}

// describe returns the manifest's record of an entry, hashing a staged
// file's content.
func (a *archiveWriter) describe(e archiveEntry) (File, error) {
	switch {
	case e.pre != nil:
		p := e.pre
		if err := checkName(p.Name); err != nil || reserved(p.Name) || p.Mode > 0o777 || p.Size < 0 {
			return File{}, fmt.Errorf("precompressed entry %q: bad name, mode or size", p.Name)
		}
		return File{Name: p.Name, Size: p.Size, SHA256: p.SHA256, Mode: p.Mode}, nil
	case e.staged.Dir:
		return File{Name: e.staged.Name, Mode: e.staged.Mode, Dir: true}, nil
	}
	f, fi, err := openStaged(e.staged.Path, e.name)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, onlyReaderW{f}, a.buf)
	if err != nil {
		return File{}, fmt.Errorf("read %s: %w", e.name, err)
	}
	return File{Name: e.name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil)), Mode: uint32(fi.Mode().Perm())}, nil
}

// onlyReaderW hides a reader's WriteTo, so that io.CopyBuffer uses its
// buffer.
type onlyReaderW struct{ r io.Reader }

func (o onlyReaderW) Read(p []byte) (int, error) { return o.r.Read(p) }

// writePre writes a precompressed entry: its header (in a frame of its
// own when compressed), then its stored bytes as they are, then a new
// frame for what follows.
func (a *archiveWriter) writePre(p *Precompressed) (File, error) {
	if err := a.tw.Flush(); err != nil {
		return File{}, fmt.Errorf("write %s: %w", p.Name, err)
	}
	var hb bytes.Buffer
	if err := tar.NewWriter(&hb).WriteHeader(a.header(p.Name, tar.TypeReg, fs.FileMode(p.Mode), p.Size)); err != nil {
		return File{}, fmt.Errorf("write %s: %w", p.Name, err)
	}
	if _, err := a.sink.Write(hb.Bytes()); err != nil {
		return File{}, fmt.Errorf("write %s: %w", p.Name, err)
	}
	if a.enc != nil {
		if err := a.enc.Close(); err != nil {
			return File{}, fmt.Errorf("write %s: %w", p.Name, err)
		}
	}
	f, err := os.OpenFile(p.Path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() != p.Stored {
		return File{}, fmt.Errorf("read %s: its stored content is not the %d bytes written", p.Name, p.Stored)
	}
	base := a.raw
	for left := p.Stored; left > 0; {
		if err := a.ctx.Err(); err != nil {
			return File{}, err
		}
		chunk := a.buf[:min(left, int64(len(a.buf)))]
		n, err := io.ReadFull(f, chunk)
		if err != nil {
			return File{}, fmt.Errorf("read %s: %w", p.Name, err)
		}
		if _, err := a.bw.Write(chunk[:n]); err != nil {
			return File{}, fmt.Errorf("write %s: %w", p.Name, err)
		}
		left -= int64(n)
		// Progress in raw bytes, in proportion.
		a.raw = base + p.Size*(p.Stored-left)/p.Stored
		a.report()
	}
	a.raw = base + p.Size
	if a.enc != nil {
		a.enc.Reset(a.bw)
	}
	return File{Name: p.Name, Size: p.Size, SHA256: p.SHA256, Mode: p.Mode}, nil
}

func (a *archiveWriter) header(name string, typ byte, mode fs.FileMode, size int64) *tar.Header {
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     int64(mode.Perm()),
		Size:     size,
		ModTime:  a.modTime,
	}
}

func (a *archiveWriter) writeBytes(name string, b []byte) error {
	if err := a.tw.WriteHeader(a.header(name, tar.TypeReg, 0o644, int64(len(b)))); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := a.tw.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}

func (a *archiveWriter) writeDir(e StagedEntry) (File, error) {
	if err := a.tw.WriteHeader(a.header(e.Name+"/", tar.TypeDir, fs.FileMode(e.Mode), 0)); err != nil {
		return File{}, fmt.Errorf("write %s: %w", e.Name, err)
	}
	return File{Name: e.Name, Mode: e.Mode, Dir: true}, nil
}

// openStaged opens the staged file p (entry name) for reading, never
// through a symlink, and refuses anything but a regular file.
func openStaged(p, name string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("staging entry %q is not a regular file", name)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

func (a *archiveWriter) writeFile(p, name string) (File, error) {
	f, fi, err := openStaged(p, name)
	if err != nil {
		return File{}, err
	}
	defer f.Close()
	size := fi.Size()
	if err := a.tw.WriteHeader(a.header(name, tar.TypeReg, fi.Mode(), size)); err != nil {
		return File{}, fmt.Errorf("write %s: %w", name, err)
	}
	h := sha256.New()
	mw := io.MultiWriter(a.tw, h)
	for left := size; left > 0; {
		if err := a.ctx.Err(); err != nil {
			return File{}, err
		}
		chunk := a.buf[:min(left, int64(len(a.buf)))]
		n, err := io.ReadFull(f, chunk)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return File{}, fmt.Errorf("read %s: file shrank while archiving", name)
		}
		if err != nil {
			return File{}, fmt.Errorf("read %s: %w", name, err)
		}
		if _, err := mw.Write(chunk[:n]); err != nil {
			return File{}, fmt.Errorf("write %s: %w", name, err)
		}
		left -= int64(n)
		a.raw += int64(n)
		a.report()
	}
	// One more read: a file that grew would be archived incompletely.
	if n, _ := f.Read(a.buf[:1]); n > 0 {
		return File{}, fmt.Errorf("read %s: file grew while archiving", name)
	}
	return File{
		Name:   name,
		Size:   size,
		SHA256: hex.EncodeToString(h.Sum(nil)),
		Mode:   uint32(fi.Mode().Perm()),
	}, nil
}

func (a *archiveWriter) report() {
	if a.progress == nil {
		return
	}
	if now := time.Now(); now.Sub(a.last) >= progressInterval {
		a.last = now
		a.progress(a.raw)
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// WriteFile writes the archive of src to path atomically: to a temporary file
// ".<name>.tmp-<16 hex digits>" in the same directory, synced, then renamed
// to path, and the directory synced. On any error or cancellation nothing is
// left at path nor in the directory; if the writer is killed, the next
// WriteFile of the same name (or of any *.cr) in that directory removes the
// temporary file (it is a scratch entry, locked while its writer lives). An existing path is an error (wrapping fs.ErrExist)
// unless o.Overwrite is set. The file is created with mode 0600: images hold
// process memory.
func WriteFile(ctx context.Context, path string, src string, m *Manifest, o WriteOptions) (WriteResult, error) {
	res, err := writeFile(ctx, path, src, m, o)
	if err != nil {
		return res, fmt.Errorf("write image %s: %w", path, err)
	}
	return res, nil
}

// CheckOutput reports whether WriteFile could write an image at path,
// without writing it: path must not exist, not even as a symlink (dangling,
// a loop: WriteFile never writes through one), unless overwrite is set,
// and its directory must take a new file. Callers run it before anything
// costly (cr checkpoint: before the job is frozen); WriteFile runs it again.
func CheckOutput(path string, overwrite bool) error {
	if fi, err := os.Lstat(path); err == nil && !overwrite {
		what := "exists"
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			to, _ := os.Readlink(path)
			what = fmt.Sprintf("is a symlink (to %q); an image is never written through one", to)
		case fi.IsDir():
			what = "is a directory"
		}
		return fmt.Errorf("%w: %s %s", fs.ErrExist, path, what)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cannot write in %s: %w", filepath.Dir(path), err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".cr-probe-*")
	if err != nil {
		return fmt.Errorf("cannot write in %s: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

func writeFile(ctx context.Context, path string, src string, m *Manifest, o WriteOptions) (res WriteResult, err error) {
	if err := CheckOutput(path, o.Overwrite); err != nil {
		return res, err
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// The temporary file of an earlier write that was killed goes first.
	sweepTemp(dir)
	tmpE, err := scratch.Create(dir, tempPrefix(base))
	if err != nil {
		return res, err
	}
	tmp := tmpE.File()
	defer func() {
		if err != nil {
			tmpE.Remove()
		}
	}()
	res, err = WriteArchive(ctx, tmp, src, m, o)
	if err != nil {
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if err := tmp.Sync(); err != nil {
		return res, err
	}
	// Renamed while still locked: a sweep never sees it unowned.
	if err := rename(tmp.Name(), path, o.Overwrite); err != nil {
		return res, err
	}
	tmpE.Release()
	if err := syncDir(dir); err != nil {
		os.Remove(path)
		return res, err
	}
	return res, nil
}

// tempPrefix is the name of the temporary file of an image named base,
// before its random part: ".<base>.tmp-".
func tempPrefix(base string) string { return "." + base + ".tmp-" }

// sweepTemp removes from dir the temporary files that writers of images
// killed before they finished left (see package scratch): those of any
// image whose name ends in ".cr", the conventional extension.
func sweepTemp(dir string) {
	scratch.SweepMatch(dir, func(name string) bool {
		i := strings.LastIndex(name, ".tmp-")
		return strings.HasPrefix(name, ".") && i > 0 && strings.HasSuffix(name[:i], ".cr") &&
			scratch.IsName(name, name[:i]+".tmp-")
	}, scratch.Files, nil)
}

// rename moves oldpath to newpath, refusing to replace newpath unless
// overwrite is set.
func rename(oldpath, newpath string, overwrite bool) error {
	if overwrite {
		return os.Rename(oldpath, newpath)
	}
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return fs.ErrExist
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS):
		// The file system has no RENAME_NOREPLACE: a hard link fails just
		// as atomically when newpath exists.
		if err := os.Link(oldpath, newpath); err != nil {
			return err
		}
		return os.Remove(oldpath)
	default:
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
