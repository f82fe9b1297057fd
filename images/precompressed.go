package images

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Precompressed is a content entry that was hashed and compressed as it
// arrived (a CRIU pages image streamed out of criu dump --stream) instead
// of being staged as a file: Path holds the entry's content followed by
// its tar padding (zero bytes up to a multiple of 512), compressed as
// Compression: whole zstd frames, or the bytes themselves for
// CompressionNone. WriteArchive copies Path into the archive after the
// entry's tar header, as it is, so that the content is never
// decompressed nor compressed twice: the archive is still one tar stream,
// its zstd stream now a sequence of frames (which every reader decodes as
// one stream, docs/image-format.md §1).
type Precompressed struct {
	Name        string
	Mode        uint32
	Size        int64
	SHA256      string
	Compression string
	Path        string
	Stored      int64 // bytes of Path
}

// EntryWriter hashes and compresses one entry's content into a file, as
// it arrives; Close ends it and Entry then describes it. zstd and S2 are
// compressed on lanes (see lanes): pieces of LaneChunk bytes compressed
// concurrently and written in order, hashed on a goroutine of their own.
type EntryWriter struct {
	name, comp string
	mode       uint32
	f          *os.File
	out        *countWriter
	lanes      *lanes // nil for CompressionNone
	h          hash.Hash
	size       int64
	done       bool
}

// NewEntryWriter writes the entry name (mode) into f, compressed as
// compression (CompressionZstd, the default when empty, CompressionS2 or
// CompressionNone) on concurrency lanes (0: every CPU). f is the
// caller's: it stays open.
func NewEntryWriter(f *os.File, name string, mode uint32, compression string, concurrency int) (*EntryWriter, error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("entry %q: %w", name, err)
	}
	e := &EntryWriter{name: name, mode: mode, comp: compression, f: f, out: &countWriter{w: f}, h: sha256.New()}
	if e.comp == "" {
		e.comp = CompressionZstd
	}
	if e.comp == CompressionNone {
		return e, nil
	}
	l, err := newLanes(e.out, e.comp, concurrency, e.h)
	if err != nil {
		return nil, err
	}
	e.lanes = l
	return e, nil
}

// compressor is a streaming encoder of one of the compressions: Close
// ends its stream (a zstd frame, an S2 stream), Reset begins another.
type compressor interface {
	io.Writer
	Flush() error
	Close() error
	Reset(io.Writer)
}

// newCompressor returns the encoder of every image for compression, on
// n goroutines (0: every CPU), or nil for CompressionNone: zstd at its
// fastest level with the frame's content checksum; S2 (CRC-32C of every
// block). Both compress blocks in parallel.
func newCompressor(w io.Writer, compression string, n int) (compressor, error) {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	switch compression {
	case CompressionZstd:
		enc, err := zstd.NewWriter(w,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(n),
			zstd.WithConcurrentBlocks(n > 1),
			zstd.WithEncoderCRC(true))
		if err != nil {
			return nil, fmt.Errorf("start zstd: %w", err)
		}
		return enc, nil
	case CompressionS2:
		return s2.NewWriter(w, s2.WriterConcurrency(n)), nil
	case CompressionNone:
		return nil, nil
	}
	return nil, fmt.Errorf("unknown compression %q", compression)
}

// Write hashes and compresses p.
func (e *EntryWriter) Write(p []byte) (int, error) {
	if e.done {
		return 0, fmt.Errorf("write %s: entry closed", e.name)
	}
	var n int
	var err error
	if e.lanes != nil {
		n, err = e.lanes.Write(p)
	} else {
		n, err = e.out.Write(p)
		e.h.Write(p[:n])
	}
	e.size += int64(n)
	return n, err
}

// ReadFrom hashes and compresses what r gives until its end, reading it
// straight into the compressor's buffers.
func (e *EntryWriter) ReadFrom(r io.Reader) (int64, error) {
	if e.done {
		return 0, fmt.Errorf("write %s: entry closed", e.name)
	}
	if e.lanes == nil {
		return io.CopyBuffer(onlyWriter{e}, r, make([]byte, 1<<20))
	}
	n, err := e.lanes.ReadFrom(r)
	e.size += n
	return n, err
}

// onlyWriter hides a writer's ReadFrom, so that io.CopyBuffer copies
// through its buffer.
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

// Size is the content's bytes so far.
func (e *EntryWriter) Size() int64 { return e.size }

// Close writes the tar padding and ends the compressed stream.
func (e *EntryWriter) Close() error {
	if e.done {
		return nil
	}
	if pad := (512 - e.size%512) % 512; pad > 0 {
		var err error
		if e.lanes != nil {
			err = e.lanes.writePad(make([]byte, pad))
		} else {
			_, err = e.out.Write(make([]byte, pad))
		}
		if err != nil {
			e.Abort()
			return fmt.Errorf("write %s: %w", e.name, err)
		}
	}
	e.done = true
	if e.lanes != nil {
		if err := e.lanes.Close(); err != nil {
			return fmt.Errorf("write %s: %w", e.name, err)
		}
	}
	return nil
}

// Abort ends a write that will not be used: the compressor's goroutines
// finish and its buffers go back to the pool.
func (e *EntryWriter) Abort() {
	if e.done {
		return
	}
	e.done = true
	if e.lanes != nil {
		e.lanes.Abort()
	}
}

// Entry describes the entry written (after Close).
func (e *EntryWriter) Entry() Precompressed {
	return Precompressed{Name: e.name, Mode: e.mode, Size: e.size, SHA256: hex.EncodeToString(e.h.Sum(nil)),
		Compression: e.comp, Path: e.f.Name(), Stored: e.out.n}
}

// archiveEntry is what WriteArchive writes: a staged file or directory,
// or a precompressed entry.
type archiveEntry struct {
	name   string
	staged *StagedEntry
	pre    *Precompressed
}

// mergeEntries puts the staged and the precompressed entries in the order
// a walk of the staging dir would have listed them all (component by
// component, lexically), so that an image's order does not depend on how
// its entries were made.
func mergeEntries(staged []StagedEntry, pre []Precompressed) []archiveEntry {
	out := make([]archiveEntry, 0, len(staged)+len(pre))
	for i := range staged {
		out = append(out, archiveEntry{name: staged[i].Name, staged: &staged[i]})
	}
	for i := range pre {
		out = append(out, archiveEntry{name: pre[i].Name, pre: &pre[i]})
	}
	slices.SortStableFunc(out, func(a, b archiveEntry) int {
		return slices.Compare(strings.Split(a.name, "/"), strings.Split(b.name, "/"))
	})
	return out
}
