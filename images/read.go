package images

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Limits bound what a reader accepts. Zero fields take the defaults.
type Limits struct {
	MaxBytes int64 // total bytes of file content; 0 means DefaultMaxBytes
	MaxFiles int   // entries (files and directories); 0 means DefaultMaxFiles
	MaxEntry int64 // bytes of one file; 0 means MaxBytes
	// Free, if positive, is the space the extraction may take: the free
	// space of the destination's file system (FreeSpace), measured before
	// anything is written. An entry whose declared size would take the
	// content past it is refused, before it is written, with ErrTooLarge.
	Free int64
}

// Default limits.
const (
	DefaultMaxBytes = 64 << 30
	DefaultMaxFiles = 100000
)

// Fixed bounds of the format, independent of Limits.
const (
	maxHeaderSize   = 4 << 10  // cr-image.json
	maxManifestSize = 64 << 20 // manifest.json
	trailerSize     = 65       // manifest.sha256: 64 hex digits and "\n"
	maxPadding      = 1 << 20  // zero bytes after the end-of-archive marker
	entryOverhead   = 4 << 10  // tar header blocks and padding allowed per entry
	maxWindow       = 128 << 20
	blockSize       = 512
)

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	if l.MaxEntry <= 0 || l.MaxEntry > l.MaxBytes {
		l.MaxEntry = l.MaxBytes
	}
	return l
}

// streamBudget is how many decompressed bytes a reader processes at most:
// the file content, the fixed entries, and the tar blocks around them. It
// stops decompression bombs that hide their size from tar headers.
func (l Limits) streamBudget() int64 {
	return l.MaxBytes + maxHeaderSize + maxManifestSize + trailerSize + maxPadding +
		int64(l.MaxFiles+3)*entryOverhead
}

// Verify reads a whole archive from r, checks it as Extract does without
// writing anything, and returns its manifest. It reads r to its end.
func Verify(ctx context.Context, r io.Reader, l Limits) (*Manifest, error) {
	m, err := read(ctx, r, l, nil)
	if err != nil {
		return nil, fmt.Errorf("verify image: %w", err)
	}
	return m, nil
}

// VerifyFile is Verify on the image file at path.
func VerifyFile(ctx context.Context, path string, l Limits) (*Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("verify image: %w", err)
	}
	defer f.Close()
	m, err := read(ctx, f, l, nil)
	if err != nil {
		return nil, fmt.Errorf("verify image %s: %w", path, err)
	}
	return m, nil
}

// Extract reads an archive from r into dst, an existing empty directory, and
// returns its manifest. Everything is created beneath dst (through os.Root).
// Extract rejects unsafe entries, entries over l, and any mismatch with the
// manifest, the trailer or the format version (see the package's errors). On
// any error dst is left empty.
//
// Extract reads r to its end (a zstd stream may hold further frames, and the
// end-of-archive marker must be followed only by zero padding): a caller
// that streams an image inside a longer conversation must delimit it.
// Cancelling ctx takes effect at the next read from r; close r to interrupt
// a read that blocks.
func Extract(ctx context.Context, r io.Reader, dst string, l Limits) (*Manifest, error) {
	m, err := extract(ctx, r, dst, l)
	if err != nil {
		return nil, fmt.Errorf("extract image: %w", err)
	}
	return m, nil
}

// ExtractFile is Extract from the image file at path.
func ExtractFile(ctx context.Context, path, dst string, l Limits) (*Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("extract image: %w", err)
	}
	defer f.Close()
	m, err := extract(ctx, f, dst, l)
	if err != nil {
		return nil, fmt.Errorf("extract image %s: %w", path, err)
	}
	return m, nil
}

func extract(ctx context.Context, r io.Reader, dst string, l Limits) (*Manifest, error) {
	root, err := openEmptyRoot(dst)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	out := &dirSink{root: root}
	m, err := read(ctx, r, l, out)
	if err != nil {
		if cerr := empty(root); cerr != nil {
			return nil, errors.Join(err, fmt.Errorf("empty %s: %w", dst, cerr))
		}
		return nil, err
	}
	return m, nil
}

// openEmptyRoot opens dst, an existing directory that must be empty, as
// the root beneath which an extraction creates everything.
func openEmptyRoot(dst string) (*os.Root, error) {
	root, err := os.OpenRoot(dst)
	if err != nil {
		return nil, err
	}
	names, err := readDirNames(root)
	if err == nil && len(names) > 0 {
		err = fmt.Errorf("destination %s is not empty", dst)
	}
	if err != nil {
		root.Close()
		return nil, err
	}
	return root, nil
}

func readDirNames(root *os.Root) ([]string, error) {
	d, err := root.Open(".")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// empty removes everything beneath root.
func empty(root *os.Root) error {
	names, err := readDirNames(root)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if err := root.RemoveAll(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sink receives the entries of an archive as they are read. A nil sink
// discards them.
type sink interface {
	mkdir(name string) error
	create(name string) (*os.File, error)
	// finish applies the directories' modes once everything is verified.
	finish(files []File) error
}

type dirSink struct{ root *os.Root }

func (s *dirSink) mkdir(name string) error { return s.root.Mkdir(name, 0o700) }

func (s *dirSink) create(name string) (*os.File, error) {
	return s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

func (s *dirSink) finish(files []File) error {
	for i := len(files) - 1; i >= 0; i-- {
		f := files[i]
		if !f.Dir {
			continue
		}
		d, err := s.root.Open(f.Name)
		if err != nil {
			return err
		}
		err = d.Chmod(os.FileMode(f.Mode))
		d.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// errReader remembers the first error other than io.EOF its reader returned.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// inputBound fails once the compressed input is out of proportion to the
// content it decompressed to (MaxCompressed): a stream of empty zstd blocks
// from a pipe would otherwise be read forever.
type inputBound struct {
	r       io.Reader
	n       int64        // bytes read so far
	content func() int64 // bytes of tar stream decompressed so far; nil: no bound
}

func (b *inputBound) Read(p []byte) (int, error) {
	if b.content != nil {
		if c := b.content(); b.n > MaxCompressed(c) {
			return 0, fmt.Errorf("%w: %d bytes of compressed input for %d bytes of content", ErrCorrupt, b.n, c)
		}
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	return n, err
}

var errBudget = errors.New("decompressed stream over budget")

// budgetReader counts the bytes read and fails once there are more than
// left.
type budgetReader struct {
	r        io.Reader
	n        int64 // bytes read so far
	left     int64
	exceeded bool
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// Allow a probe of one byte past the budget to tell an exact fit
		// from an overrun.
		var one [1]byte
		n, err := b.r.Read(one[:])
		if n > 0 {
			b.exceeded = true
			return 0, errBudget
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	b.left -= int64(n)
	return n, err
}

// reader reads and checks one archive.
type reader struct {
	ctx    context.Context
	lim    Limits
	src    *errReader
	dec    *errReader // nil for a plain tar
	budget *budgetReader
	tr     *tar.Reader
	out    sink
	buf    []byte
	wbufs  [][]byte // the asynchronous writers' buffers

	seen  map[string]File
	order []File
	total int64
	last  string // name of the last entry read, for messages

	version int       // of cr-image.json
	m       *Manifest // version 2: read first
	next    int       // version 2: index in m.Files of the next entry
	close   func()
}

func read(ctx context.Context, r io.Reader, l Limits, out sink) (*Manifest, error) {
	rd, err := openReader(ctx, r, l, out)
	if err != nil {
		return nil, err
	}
	defer rd.close()
	if rd.version == 1 {
		return rd.readEntries()
	}
	if err := rd.readHead(); err != nil {
		return nil, err
	}
	for rd.next < len(rd.m.Files) {
		if err := rd.ctx.Err(); err != nil {
			return nil, err
		}
		if err := rd.entryV2(); err != nil {
			return nil, err
		}
	}
	if err := rd.endV2(); err != nil {
		return nil, err
	}
	return rd.m, nil
}

// openReader starts reading an archive from r: it detects the
// compression and reads cr-image.json. close releases the decoder.
func openReader(ctx context.Context, r io.Reader, l Limits, out sink) (*reader, error) {
	in := &inputBound{r: r}
	rd := &reader{
		ctx:   ctx,
		lim:   l.withDefaults(),
		src:   &errReader{r: in},
		out:   out,
		seen:  make(map[string]File),
		close: func() {},
	}
	br := bufio.NewReaderSize(rd.src, 64<<10)
	magic, _ := br.Peek(len(s2Magic))
	if len(magic) == 0 {
		if rd.src.err != nil {
			return nil, fmt.Errorf("read input: %w", rd.src.err)
		}
		return nil, fmt.Errorf("%w: empty input", ErrNotImage)
	}
	var stream io.Reader = br
	switch {
	case bytes.HasPrefix(magic, s2Magic):
		// S2's framing: every chunk's CRC-32C is checked; synchronous.
		rd.dec = &errReader{r: s2.NewReader(br, s2.ReaderMaxBlockSize(s2MaxBlock))}
		stream = rd.dec
	case bytes.HasPrefix(magic, zstdMagic):
		// Synchronous decoding, inside Read: no goroutine is left reading
		// r once the reader returns.
		dec, err := zstd.NewReader(br,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxWindow))
		if err != nil {
			return nil, fmt.Errorf("start zstd: %w", err)
		}
		rd.close = dec.Close
		rd.dec = &errReader{r: dec}
		stream = rd.dec
	}
	rd.budget = &budgetReader{r: stream, left: rd.lim.streamBudget()}
	if rd.dec != nil {
		in.content = func() int64 { return rd.budget.n }
	}
	rd.tr = tar.NewReader(rd.budget)
	rd.buf = make([]byte, 1<<20)
	if err := rd.readHeader(); err != nil {
		rd.close()
		return nil, err
	}
	return rd, nil
}

var (
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
	// s2Magic is the stream identifier chunk of S2's framing format.
	s2Magic = []byte{0xff, 0x06, 0x00, 0x00, 'S', '2', 's', 'T', 'w', 'O'}
)

// s2MaxBlock bounds an S2 block (its writer's default is 1 MiB; the
// format allows 4 MiB).
const s2MaxBlock = 4 << 20

// fail turns an error met while reading what into the error to report: the
// context's, the source's, or one of the package's sentinels.
func (rd *reader) fail(what string, err error) error {
	if cerr := rd.ctx.Err(); cerr != nil {
		return cerr
	}
	if rd.src.err != nil {
		return fmt.Errorf("read %s: %w", what, rd.src.err)
	}
	if rd.dec != nil && rd.dec.err != nil {
		if errors.Is(rd.dec.err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %s: truncated", ErrCorrupt, what)
		}
		return fmt.Errorf("%w: %s: decompress: %v", ErrCorrupt, what, rd.dec.err)
	}
	if rd.budget.exceeded || errors.Is(err, errBudget) {
		return fmt.Errorf("%w: more than %d bytes of tar stream (at %s)", ErrTooLarge, rd.lim.streamBudget(), what)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: truncated", ErrCorrupt, what)
	}
	return fmt.Errorf("%w: %s: %v", ErrCorrupt, what, err)
}

// readHeader reads and checks cr-image.json, the first entry.
func (rd *reader) readHeader() error {
	hdr, err := rd.tr.Next()
	if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
		ferr := rd.fail("first entry", err)
		if errors.Is(ferr, ErrCorrupt) && (rd.dec == nil || rd.dec.err == nil) {
			// The stream itself was read fine: it is not a tar archive.
			return fmt.Errorf("%w: no tar header", ErrNotImage)
		}
		return ferr
	}
	if hdr.Name != HeaderFile || hdr.Typeflag != tar.TypeReg {
		return fmt.Errorf("%w: first entry is %q, not %s", ErrNotImage, hdr.Name, HeaderFile)
	}
	if hdr.Size > maxHeaderSize {
		return fmt.Errorf("%w: %s of %d bytes", ErrNotImage, HeaderFile, hdr.Size)
	}
	b, err := io.ReadAll(rd.tr)
	if err != nil {
		return rd.fail(HeaderFile, err)
	}
	var h header
	if err := json.Unmarshal(b, &h); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNotImage, HeaderFile, err)
	}
	switch {
	case h.Format != FormatName:
		return fmt.Errorf("%w: format %q", ErrNotImage, h.Format)
	case h.Version > FormatVersion:
		return fmt.Errorf("%w: version %d, this cr reads version %d", ErrUnsupportedVersion, h.Version, FormatVersion)
	case h.Version < 1:
		return fmt.Errorf("%w: version %d", ErrNotImage, h.Version)
	}
	rd.last = HeaderFile
	rd.version = h.Version
	return nil
}

// readEntries reads the content entries up to manifest.json, then the
// manifest, the trailer and the end of the stream, and checks the manifest
// against what was read.
func (rd *reader) readEntries() (*Manifest, error) {
	for {
		if err := rd.ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := rd.tr.Next()
		if errors.Is(err, tar.ErrInsecurePath) {
			return nil, fmt.Errorf("%w: %q: not a local name", ErrUnsafeEntry, hdr.Name)
		}
		if err == io.EOF {
			return nil, fmt.Errorf("%w: truncated: archive ends after %s without %s", ErrCorrupt, rd.last, ManifestFile)
		}
		if err != nil {
			return nil, rd.fail("entry after "+rd.last, err)
		}
		if hdr.Name == ManifestFile {
			return rd.readManifest(hdr)
		}
		if err := rd.entry(hdr); err != nil {
			return nil, err
		}
	}
}

// entry checks and reads one content entry.
func (rd *reader) entry(hdr *tar.Header) error {
	f, err := rd.checkEntry(hdr)
	if err != nil {
		return err
	}
	if f.Dir {
		if rd.out != nil {
			if err := rd.out.mkdir(f.Name); err != nil {
				return err
			}
		}
	} else {
		sum, err := rd.copyFile(f.Name, f.Size, os.FileMode(f.Mode))
		if err != nil {
			return err
		}
		f.SHA256 = sum
	}
	rd.record(f)
	return nil
}

// record notes an entry read in full.
func (rd *reader) record(f File) {
	rd.seen[f.Name] = f
	rd.order = append(rd.order, f)
	rd.last = f.Name
}

// checkEntry checks a content entry's header against the format and the
// limits, and returns what it declares (without its checksum).
func (rd *reader) checkEntry(hdr *tar.Header) (File, error) {
	name := hdr.Name
	dir := hdr.Typeflag == tar.TypeDir
	if dir {
		name = strings.TrimSuffix(name, "/")
	}
	if err := entryType(hdr); err != nil {
		return File{}, fmt.Errorf("%w: %q: %v", ErrUnsafeEntry, hdr.Name, err)
	}
	if err := checkName(name); err != nil {
		return File{}, fmt.Errorf("%w: %q: %v", ErrUnsafeEntry, hdr.Name, err)
	}
	if hdr.Mode&^0o777 != 0 {
		return File{}, fmt.Errorf("%w: %q: mode %#o", ErrUnsafeEntry, name, hdr.Mode)
	}
	if reserved(name) {
		return File{}, fmt.Errorf("%w: %s: unexpected entry", ErrCorrupt, name)
	}
	if _, dup := rd.seen[name]; dup {
		return File{}, fmt.Errorf("%w: %q: duplicate entry", ErrUnsafeEntry, name)
	}
	if p := path.Dir(name); p != "." && !rd.seen[p].Dir {
		return File{}, fmt.Errorf("%w: %s: parent directory not in archive before it", ErrCorrupt, name)
	}
	if len(rd.seen) >= rd.lim.MaxFiles {
		return File{}, fmt.Errorf("%w: more than %d entries", ErrTooLarge, rd.lim.MaxFiles)
	}
	f := File{Name: name, Mode: uint32(hdr.Mode), Dir: dir}
	if dir {
		if hdr.Size != 0 {
			return File{}, fmt.Errorf("%w: %s: directory of size %d", ErrCorrupt, name, hdr.Size)
		}
		return f, nil
	}
	switch {
	case hdr.Size < 0:
		return File{}, fmt.Errorf("%w: %s: size %d", ErrCorrupt, name, hdr.Size)
	case hdr.Size > rd.lim.MaxEntry:
		return File{}, fmt.Errorf("%w: %s: %d bytes, more than %d per file", ErrTooLarge, name, hdr.Size, rd.lim.MaxEntry)
	case rd.total+hdr.Size > rd.lim.MaxBytes:
		return File{}, fmt.Errorf("%w: %s: more than %d bytes in all", ErrTooLarge, name, rd.lim.MaxBytes)
	case rd.lim.Free > 0 && rd.total+hdr.Size > rd.lim.Free && rd.out != nil:
		return File{}, fmt.Errorf("%w: %s takes the image to %s, %s free in the staging directory", ErrTooLarge, name, FormatBytes(rd.total+hdr.Size), FormatBytes(rd.lim.Free))
	}
	rd.total += hdr.Size
	f.Size = hdr.Size
	return f, nil
}

// entryType allows regular files and directories only.
func entryType(hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir:
	case tar.TypeSymlink:
		return fmt.Errorf("symlink to %q", hdr.Linkname)
	case tar.TypeLink:
		return fmt.Errorf("hard link to %q", hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return errors.New("device")
	case tar.TypeFifo:
		return errors.New("fifo")
	default:
		return fmt.Errorf("entry type %q", hdr.Typeflag)
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return errors.New("sparse file")
		}
	}
	return nil
}

// copyFile reads size bytes of the current entry, writes them to the sink,
// and returns their sha256.
func (rd *reader) copyFile(name string, size int64, mode os.FileMode) (string, error) {
	var w *fileWriter
	if rd.out != nil {
		f, err := rd.out.create(name)
		if err != nil {
			return "", err
		}
		if f != nil { // nil: hashed, not kept
			defer f.Close()
			if rd.wbufs == nil && size > int64(len(rd.buf)) {
				for range writeBuffers {
					rd.wbufs = append(rd.wbufs, make([]byte, len(rd.buf)))
				}
			}
			w = startFileWriter(f, rd.wbufs, size > int64(len(rd.buf)))
			defer w.stop()
		}
	}
	h := sha256.New()
	for left := size; left > 0; {
		if err := rd.ctx.Err(); err != nil {
			return "", err
		}
		buf := rd.buf
		if w != nil && w.async {
			var err error
			if buf, err = w.buffer(); err != nil {
				return "", err
			}
		}
		chunk := buf[:min(left, int64(len(buf)))]
		n, err := io.ReadFull(rd.tr, chunk)
		if err != nil {
			return "", rd.fail(name, err)
		}
		h.Write(chunk[:n])
		if w != nil {
			if err := w.write(chunk[:n]); err != nil {
				return "", err
			}
		}
		left -= int64(n)
	}
	if w != nil {
		if err := w.stop(); err != nil {
			return "", err
		}
		if err := w.f.Chmod(mode); err != nil {
			return "", err
		}
		if err := w.f.Close(); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileWriter writes a file. A file larger than one chunk is written on a
// goroutine of its own (async), so that writing (first touch of new memory,
// for a tmpfs staging area) overlaps with decompressing and hashing the next
// chunk; a small one is written in place, as starting a goroutine would
// cost more than it saves.
type fileWriter struct {
	f       *os.File
	async   bool
	todo    chan []byte
	free    chan []byte
	done    chan struct{}
	stopped bool

	mu  sync.Mutex
	err error // the first write error
}

const writeBuffers = 3

// startFileWriter writes f, asynchronously with bufs (the reader's, reused
// from file to file) if async.
func startFileWriter(f *os.File, bufs [][]byte, async bool) *fileWriter {
	w := &fileWriter{f: f, async: async}
	if !async {
		return w
	}
	w.todo, w.free, w.done = make(chan []byte, len(bufs)), make(chan []byte, len(bufs)), make(chan struct{})
	for _, b := range bufs {
		w.free <- b
	}
	go func() {
		defer close(w.done)
		for b := range w.todo {
			if w.failed() == nil {
				if _, err := f.Write(b); err != nil {
					w.mu.Lock()
					w.err = err
					w.mu.Unlock()
				}
			}
			w.free <- b[:cap(b)]
		}
	}()
	return w
}

func (w *fileWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// buffer returns a free buffer, or the error a write met.
func (w *fileWriter) buffer() ([]byte, error) {
	if err := w.failed(); err != nil {
		return nil, err
	}
	return <-w.free, nil
}

// write writes b, or (async) queues it: b is then a buffer from buffer.
func (w *fileWriter) write(b []byte) error {
	if !w.async {
		_, err := w.f.Write(b)
		return err
	}
	w.todo <- b
	return nil
}

// stop waits until everything queued is written and returns the first
// write error. It may be called more than once.
func (w *fileWriter) stop() error {
	if !w.async {
		return nil
	}
	if !w.stopped {
		w.stopped = true
		close(w.todo)
		<-w.done
	}
	return w.failed()
}

// readManifest reads manifest.json and manifest.sha256, compares the
// manifest with the entries read, and checks the end of the stream
// (version 1, where the manifest comes last).
func (rd *reader) readManifest(hdr *tar.Header) (*Manifest, error) {
	m, err := rd.readManifestEntries(hdr)
	if err != nil {
		return nil, err
	}
	// Compare before reading the end of the stream, so that damage inside a
	// file is reported with its name rather than as the zstd frame's
	// checksum failure that follows it.
	if err := rd.compare(m); err != nil {
		return nil, err
	}
	if err := rd.readEnd(); err != nil {
		return nil, err
	}
	if rd.out != nil {
		if err := rd.out.finish(rd.order); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// readManifestEntries reads manifest.json (its header hdr) and the
// manifest.sha256 that must follow it, checks the one against the other,
// and decodes the manifest.
func (rd *reader) readManifestEntries(hdr *tar.Header) (*Manifest, error) {
	if hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrCorrupt, ManifestFile)
	}
	if hdr.Size > maxManifestSize {
		return nil, fmt.Errorf("%w: %s of %d bytes, more than %d", ErrTooLarge, ManifestFile, hdr.Size, maxManifestSize)
	}
	mb, err := io.ReadAll(rd.tr)
	if err != nil {
		return nil, rd.fail(ManifestFile, err)
	}
	rd.last = ManifestFile

	hdr, err = rd.tr.Next()
	if err == io.EOF {
		return nil, fmt.Errorf("%w: truncated: no %s", ErrCorrupt, TrailerFile)
	}
	if err != nil {
		return nil, rd.fail("entry after "+ManifestFile, err)
	}
	if hdr.Name != TrailerFile || hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: %q follows %s, not %s", ErrCorrupt, hdr.Name, ManifestFile, TrailerFile)
	}
	if hdr.Size != trailerSize {
		return nil, fmt.Errorf("%w: %s of %d bytes", ErrCorrupt, TrailerFile, hdr.Size)
	}
	tb, err := io.ReadAll(rd.tr)
	if err != nil {
		return nil, rd.fail(TrailerFile, err)
	}
	sum := sha256.Sum256(mb)
	if string(tb) != hex.EncodeToString(sum[:])+"\n" {
		return nil, fmt.Errorf("%w: %s: sha256 of %s mismatch", ErrCorrupt, TrailerFile, ManifestFile)
	}
	rd.last = TrailerFile

	m, err := DecodeManifest(mb)
	if errors.Is(err, ErrUnsupportedVersion) || errors.Is(err, ErrUnsafeEntry) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if m.Version != rd.version {
		return nil, fmt.Errorf("%w: %s says version %d, %s %d", ErrCorrupt, ManifestFile, m.Version, HeaderFile, rd.version)
	}
	return m, nil
}

// readHead reads what follows cr-image.json in version 2: manifest.json
// and manifest.sha256. The manifest is checked against the limits before
// any content is read: an image over them is refused at once.
func (rd *reader) readHead() error {
	hdr, err := rd.tr.Next()
	if err == io.EOF {
		return fmt.Errorf("%w: truncated: archive ends after %s without %s", ErrCorrupt, HeaderFile, ManifestFile)
	}
	if err != nil {
		return rd.fail("entry after "+HeaderFile, err)
	}
	if hdr.Name != ManifestFile {
		return fmt.Errorf("%w: %q follows %s, not %s", ErrCorrupt, hdr.Name, HeaderFile, ManifestFile)
	}
	m, err := rd.readManifestEntries(hdr)
	if err != nil {
		return err
	}
	if len(m.Files) > rd.lim.MaxFiles {
		return fmt.Errorf("%w: more than %d entries (the manifest lists %d)", ErrTooLarge, rd.lim.MaxFiles, len(m.Files))
	}
	var total int64
	for _, f := range m.Files {
		switch {
		case f.Size > rd.lim.MaxEntry:
			return fmt.Errorf("%w: %s: %d bytes, more than %d per file", ErrTooLarge, f.Name, f.Size, rd.lim.MaxEntry)
		case f.Size < 0 || (f.Dir && f.Size != 0):
			return fmt.Errorf("%w: %s: size %d in the manifest", ErrCorrupt, f.Name, f.Size)
		}
		total += f.Size
		if total > rd.lim.MaxBytes {
			return fmt.Errorf("%w: %s: more than %d bytes in all", ErrTooLarge, f.Name, rd.lim.MaxBytes)
		}
	}
	if rd.lim.Free > 0 && total > rd.lim.Free && rd.out != nil {
		return fmt.Errorf("%w: image of %s, %s free in the staging directory", ErrTooLarge, FormatBytes(total), FormatBytes(rd.lim.Free))
	}
	dirs := make(map[string]bool)
	for _, f := range m.Files {
		if f.Dir {
			dirs[f.Name] = true
		}
	}
	if err := m.checkContainerDirs(func(name string) bool { return dirs[name] }); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	rd.m = m
	return nil
}

// nextV2 reads the header of the next content entry of a version 2
// archive and checks it against the manifest's record of it, which it
// returns.
func (rd *reader) nextV2() (File, error) {
	want := rd.m.Files[rd.next]
	hdr, err := rd.tr.Next()
	if errors.Is(err, tar.ErrInsecurePath) {
		return File{}, fmt.Errorf("%w: %q: not a local name", ErrUnsafeEntry, hdr.Name)
	}
	if err == io.EOF {
		return File{}, fmt.Errorf("%w: truncated: archive ends after %s without %s", ErrCorrupt, rd.last, want.Name)
	}
	if err != nil {
		return File{}, rd.fail("entry after "+rd.last, err)
	}
	got, err := rd.checkEntry(hdr)
	if err != nil {
		return File{}, err
	}
	switch {
	case got.Name != want.Name:
		return File{}, fmt.Errorf("%w: %s follows %s, the manifest lists %s", ErrCorrupt, got.Name, rd.last, want.Name)
	case got.Dir != want.Dir:
		return File{}, fmt.Errorf("%w: %s: directory in only one of manifest and archive", ErrCorrupt, want.Name)
	case got.Size != want.Size:
		return File{}, fmt.Errorf("%w: %s: size %d, manifest says %d", ErrCorrupt, want.Name, got.Size, want.Size)
	case got.Mode != want.Mode:
		return File{}, fmt.Errorf("%w: %s: mode %#o, manifest says %#o", ErrCorrupt, want.Name, got.Mode, want.Mode)
	}
	rd.next++
	return want, nil
}

// entryV2 reads the next content entry of a version 2 archive into the
// sink, checked against the manifest.
func (rd *reader) entryV2() error {
	want, err := rd.nextV2()
	if err != nil {
		return err
	}
	if want.Dir {
		if rd.out != nil {
			if err := rd.out.mkdir(want.Name); err != nil {
				return err
			}
		}
	} else {
		sum, err := rd.copyFile(want.Name, want.Size, os.FileMode(want.Mode))
		if err != nil {
			return err
		}
		if sum != want.SHA256 {
			return fmt.Errorf("%w: %s: sha256 mismatch", ErrCorrupt, want.Name)
		}
	}
	rd.record(want)
	return nil
}

// endV2 checks the end of a version 2 archive once every entry the
// manifest lists was read, and gives the directories their modes.
func (rd *reader) endV2() error {
	if err := rd.readEnd(); err != nil {
		return err
	}
	if rd.out != nil {
		return rd.out.finish(rd.order)
	}
	return nil
}

// readEnd checks that the trailer is followed by the end-of-archive marker
// (two zero blocks), at most maxPadding zero bytes, and the end of the
// stream; for zstd, this reaches the frame's end and its checksum.
func (rd *reader) readEnd() error {
	// The trailer's data ends here; its padding and the end marker follow.
	end := (rd.budget.n+blockSize-1)/blockSize*blockSize + 2*blockSize
	hdr, err := rd.tr.Next()
	if err == nil {
		if terr := entryType(hdr); terr != nil {
			return fmt.Errorf("%w: %q: %v", ErrUnsafeEntry, hdr.Name, terr)
		}
		if rd.version >= 2 {
			return fmt.Errorf("%w: %s: not in the manifest (after %s, the last it lists)", ErrCorrupt, hdr.Name, rd.last)
		}
		return fmt.Errorf("%w: %q after %s", ErrCorrupt, hdr.Name, rd.last)
	}
	if err != io.EOF {
		return rd.fail("end of archive", err)
	}
	if rd.budget.n < end {
		return fmt.Errorf("%w: truncated: no end-of-archive marker", ErrCorrupt)
	}
	buf := rd.buf[:64<<10]
	var pad int64
	for {
		n, err := rd.budget.Read(buf)
		for _, c := range buf[:n] {
			if c != 0 {
				return fmt.Errorf("%w: data after the end of the archive", ErrCorrupt)
			}
		}
		pad += int64(n)
		if pad > maxPadding {
			return fmt.Errorf("%w: more than %d bytes of padding after the archive", ErrCorrupt, maxPadding)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return rd.fail("end of archive", err)
		}
	}
}

// compare checks that the manifest lists exactly the entries read, with
// their type, size, checksum and mode.
func (rd *reader) compare(m *Manifest) error {
	listed := make(map[string]bool, len(m.Files))
	for _, mf := range m.Files {
		listed[mf.Name] = true
		f, ok := rd.seen[mf.Name]
		switch {
		case !ok:
			return fmt.Errorf("%w: %s: in the manifest, missing from the archive", ErrCorrupt, mf.Name)
		case f.Dir != mf.Dir:
			return fmt.Errorf("%w: %s: directory in only one of manifest and archive", ErrCorrupt, mf.Name)
		case f.Size != mf.Size:
			return fmt.Errorf("%w: %s: size %d, manifest says %d", ErrCorrupt, mf.Name, f.Size, mf.Size)
		case f.SHA256 != mf.SHA256:
			return fmt.Errorf("%w: %s: sha256 mismatch", ErrCorrupt, mf.Name)
		case f.Mode != mf.Mode:
			return fmt.Errorf("%w: %s: mode %#o, manifest says %#o", ErrCorrupt, mf.Name, f.Mode, mf.Mode)
		}
	}
	for _, f := range rd.order {
		if !listed[f.Name] {
			return fmt.Errorf("%w: %s: not in the manifest", ErrCorrupt, f.Name)
		}
	}
	if err := m.checkContainerDirs(func(name string) bool { return rd.seen[name].Dir }); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return nil
}

// MaxCompressed is the most compressed input a stream may take for raw bytes
// of content: zstd's worst case on incompressible data (a block header per
// 128 KiB) with room to spare, plus a fixed allowance. A stream over it is
// not an image cr wrote (for example: endless empty zstd blocks, which
// decompress to nothing), whatever its content's own limits.
func MaxCompressed(raw int64) int64 { return raw + raw/64 + 1<<20 }

// FreeSpace is the space an unprivileged write may still take in dir's
// file system (statfs: available blocks times block size).
func FreeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// CheckSpace refuses, with ErrTooLarge, an image of size bytes of content
// (the sum of its files' sizes) that does not fit in the free space of dir
// (the staging directory), before anything is written. cr serve applies it
// to a sender's declared size, a store restore to the snapshot's total.
func CheckSpace(dir string, size int64) error {
	free, err := FreeSpace(dir)
	if err != nil {
		return err
	}
	if size > free {
		return fmt.Errorf("%w: image of %s, %s free in the staging directory", ErrTooLarge, FormatBytes(size), FormatBytes(free))
	}
	return nil
}

// FormatBytes prints a size in binary units: "512 B", "1.5 GiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
