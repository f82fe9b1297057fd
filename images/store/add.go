package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cr-dev/cr/images"
	"github.com/klauspost/compress/zstd"
)

// encoder and decoder are shared: EncodeAll and DecodeAll are safe for
// concurrent use, each call on one goroutine.
var (
	encoder = sync.OnceValue(func() *zstd.Encoder {
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
			zstd.WithEncoderCRC(true),
			zstd.WithZeroFrames(true))
		if err != nil {
			panic(err) // only for invalid options
		}
		return enc
	})
	decoder = sync.OnceValue(func() *zstd.Decoder {
		dec, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
			zstd.WithDecoderMaxMemory(MaxChunk))
		if err != nil {
			panic(err)
		}
		return dec
	})
)

// Add stores the staging dir stagingDir as a new snapshot of m.Root taken
// at at (now when zero) and returns it. The manifest is stored with Files
// filled from the staging dir (a non-empty m.Files must match it); m itself
// is not modified. It is StartAdd and Finish with no file streamed in.
//
// Add writes every new chunk to DIR/tmp, makes them durable (syncfs),
// renames them into DIR/chunks, makes that durable, and only then writes the
// snapshot record through a synced temporary file renamed into
// DIR/snapshots. A crash at any point leaves no visible snapshot that is not
// complete; the chunks of an unfinished Add are removed by the next Add
// (DIR/tmp) or by Prune (DIR/chunks).
func (s *Store) Add(ctx context.Context, stagingDir string, m *images.Manifest, at time.Time) (*Snapshot, error) {
	if m == nil || m.Root == "" {
		return nil, errors.New("add snapshot: manifest has no root path")
	}
	a, err := s.StartAdd(ctx)
	if err != nil {
		return nil, err
	}
	return a.Finish(stagingDir, m, at)
}

// addWorkers is the number of goroutines that hash, compress and write
// chunks: more than the CPUs, because creating a file can wait for the file
// system's journal far longer than compressing a chunk takes.
func addWorkers() int { return max(4*runtime.GOMAXPROCS(0), 8) }

// chunkJob carries one chunk from a file's writer to a worker and its
// name back.
type chunkJob struct {
	data []byte
	name string
}

// Adding is a snapshot being added: its files are cut into chunks as
// their content arrives, by Create's writers (the pages of a streamed
// dump, as CRIU writes them, several at once) and by Finish (the files of
// a staging dir), while workers hash, compress and write the new chunks.
// Finish then writes the record, Abort drops it all: until the record is
// written nothing of the snapshot is listed, and the chunks already
// written are what an interrupted Add leaves (in DIR/tmp, removed by
// Abort or the next Add; in S3, garbage for Prune). It holds the store's
// lock (Store.hold) from StartAdd to Finish or Abort.
type Adding struct {
	s      *Store
	ctx    context.Context
	cancel context.CancelCauseFunc
	unlock func()
	jobs   chan *chunkJob
	free   chan []byte // bounds the chunks in flight
	wg     sync.WaitGroup
	chunks chunkWriter
	read   atomic.Int64 // bytes of content cut so far

	// sending is held (read) by writers while they hand chunks over, and
	// (write) by whoever closes jobs.
	sending sync.RWMutex
	ended   bool // jobs closed

	mu       sync.Mutex
	seen     map[string]bool // chunks in the store or written by this Add
	added    int64
	streamed []*FileWriter
}

// errAborted ends an Add that Abort dropped.
var errAborted = errors.New("snapshot abandoned")

// StartAdd begins a new snapshot under the store's lock (the one this
// Store holds, or one taken without waiting), removing what interrupted
// writers left. ctx bounds the whole Add, Finish included.
func (s *Store) StartAdd(ctx context.Context) (*Adding, error) {
	unlock, err := s.hold(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("add snapshot: %w", err)
	}
	if _, err := s.be.cleanTmp(ctx, false); err != nil {
		unlock()
		return nil, fmt.Errorf("add snapshot: %w", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	workers := addWorkers()
	a := &Adding{
		s:      s,
		ctx:    ctx,
		cancel: cancel,
		unlock: unlock,
		jobs:   make(chan *chunkJob, workers),
		free:   make(chan []byte, 4*workers),
		seen:   make(map[string]bool),
		chunks: s.be.newChunkWriter(),
	}
	for range cap(a.free) {
		a.free <- make([]byte, 0, MaxChunk)
	}
	a.wg.Add(workers)
	for range workers {
		go a.work()
	}
	return a, nil
}

// Create starts the file name (mode: permission bits) of the snapshot,
// whose content is then written to the returned writer and ended by its
// Close; Finish lists it with the staging dir's files, in their order.
// Several files may be written at once, each by one goroutine.
func (a *Adding) Create(name string, mode uint32) (*FileWriter, error) {
	if err := a.checkFile(name, mode); err != nil {
		return nil, err
	}
	w := a.newFile(name, mode)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, o := range a.streamed {
		if o.ref.Name == name {
			return nil, fmt.Errorf("add snapshot: file %q created twice", name)
		}
	}
	a.streamed = append(a.streamed, w)
	return w, nil
}

// checkFile refuses what no record may hold (§3), before any of its
// content is taken.
func (a *Adding) checkFile(name string, mode uint32) error {
	if err := checkFileRef(FileRef{Name: name, Mode: mode, SHA256: strings.Repeat("0", 2*sha256.Size)}); err != nil {
		return fmt.Errorf("add snapshot: file %q: %w", name, err)
	}
	return context.Cause(a.ctx)
}

func (a *Adding) newFile(name string, mode uint32) *FileWriter {
	return &FileWriter{a: a, ref: FileRef{Name: name, Mode: mode}, h: sha256.New()}
}

// Abort drops the snapshot: the workers stop, the chunks written to
// DIR/tmp are removed (in S3 those put stay, garbage for Prune), and the
// lock is given back. It may be called more than once, and after Finish.
func (a *Adding) Abort() {
	a.cancel(errAborted)
	a.end()
	a.chunks.abort()
	a.unlock()
}

// end closes the workers' queue, once, and waits for them.
func (a *Adding) end() {
	a.sending.Lock()
	if !a.ended {
		a.ended = true
		close(a.jobs)
	}
	a.sending.Unlock()
	a.wg.Wait()
}

// Finish adds the files of the staging dir stagingDir to those written
// through Create (each of which must be closed), stores the snapshot of
// m.Root taken at at (now when zero) and returns it, as Add does. The
// manifest is stored with Files filled from the files (a non-empty
// m.Files must match them); m itself is not modified. Whatever the
// outcome, the Add is over when it returns.
func (a *Adding) Finish(stagingDir string, m *images.Manifest, at time.Time) (*Snapshot, error) {
	defer a.Abort() // after a success: gives the lock back, nothing else
	if m == nil || m.Root == "" {
		return nil, errors.New("add snapshot: manifest has no root path")
	}
	snap, err := a.finish(stagingDir, m, at)
	if err != nil {
		return nil, fmt.Errorf("add snapshot of %s: %w", m.Root, err)
	}
	return snap, nil
}

func (a *Adding) finish(stagingDir string, m *images.Manifest, at time.Time) (*Snapshot, error) {
	ctx := a.ctx
	if at.IsZero() {
		at = time.Now()
	}
	at = at.Round(0)
	// The entries as images.WriteArchive writes them, in its order.
	entries, err := images.StagingEntries(stagingDir)
	if err != nil {
		return nil, fmt.Errorf("walk staging dir: %w", err)
	}
	a.mu.Lock()
	streamed := slices.Clone(a.streamed)
	a.mu.Unlock()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	names := make(map[string]bool, len(streamed))
	for _, w := range streamed {
		if w.err != nil {
			return nil, w.err
		}
		if !w.closed {
			return nil, fmt.Errorf("file %s was not written in full", w.ref.Name)
		}
		names[w.ref.Name] = true
	}
	work := make([]*FileWriter, 0, len(entries)+len(streamed))
	for _, e := range entries {
		if names[e.Name] {
			return nil, fmt.Errorf("staging dir holds %q, which was also streamed", e.Name)
		}
		if e.Dir {
			work = append(work, &FileWriter{ref: FileRef{Name: e.Name, Mode: e.Mode, Dir: true}, closed: true})
			continue
		}
		w, err := a.addStaged(e)
		if err != nil {
			return nil, err
		}
		work = append(work, w)
	}
	// In the order a walk of one staging dir holding them all would list
	// them (component by component, lexically), as images.WriteArchive
	// merges a streamed dump's entries.
	work = append(work, streamed...)
	slices.SortStableFunc(work, func(x, y *FileWriter) int {
		return slices.Compare(strings.Split(x.ref.Name, "/"), strings.Split(y.ref.Name, "/"))
	})
	a.end()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}

	files := make([]FileRef, len(work))
	mfiles := make([]images.File, len(work))
	var total int64
	for i, w := range work {
		ref := w.ref
		for _, j := range w.jobs {
			ref.Chunks = append(ref.Chunks, j.name)
		}
		files[i] = ref
		mfiles[i] = images.File{Name: ref.Name, Size: ref.Size, SHA256: ref.SHA256, Mode: ref.Mode, Dir: ref.Dir}
		total += ref.Size
	}
	if len(m.Files) > 0 {
		if err := sameFiles(m.Files, mfiles); err != nil {
			return nil, err
		}
	}
	mc := *m
	mc.Files = mfiles
	if mc.Format == "" {
		mc.Format, mc.Version = images.FormatName, images.FormatVersion
	}
	if mc.Created.IsZero() {
		mc.Created = at
	}

	// What a reader would refuse is not stored.
	if err := images.ValidateManifest(&mc); err != nil {
		return nil, fmt.Errorf("invalid manifest: %w", err)
	}
	if err := checkManifestFiles(&mc, files); err != nil {
		return nil, fmt.Errorf("invalid manifest: %w", err)
	}
	if err := a.chunks.commit(ctx); err != nil {
		return nil, err
	}
	mb, err := json.Marshal(&mc)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	r := &record{
		Version:    FormatVersion,
		Path:       m.Root,
		Host:       a.s.Host,
		Time:       at,
		Manifest:   mb,
		Files:      files,
		AddedBytes: a.added,
		TotalBytes: total,
	}
	b, id, err := encodeRecord(r)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// A lock lost meanwhile (an S3 lock that could not be refreshed) may
	// have let a prune remove chunks this snapshot trusted to be there.
	if err := a.s.lockValid(); err != nil {
		return nil, err
	}
	if err := a.s.be.writeRecord(ctx, id, b); err != nil {
		return nil, fmt.Errorf("write snapshot record: %w", err)
	}
	return &Snapshot{
		ID:         id,
		Path:       r.Path,
		Host:       r.Host,
		Time:       r.Time,
		Manifest:   &mc,
		Files:      files,
		AddedBytes: r.AddedBytes,
		TotalBytes: r.TotalBytes,
	}, nil
}

// addStaged cuts one regular file of the staging dir into chunks.
func (a *Adding) addStaged(e images.StagedEntry) (*FileWriter, error) {
	f, err := os.OpenFile(e.Path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("staging entry %q is not a regular file", e.Name)
	}
	w := a.newFile(e.Name, e.Mode)
	if _, err := io.CopyBuffer(w, onlyReader{f}, make([]byte, MaxChunk)); err != nil {
		return nil, fmt.Errorf("read %s: %w", e.Name, err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("read %s: %w", e.Name, err)
	}
	if w.ref.Size != fi.Size() {
		return nil, fmt.Errorf("read %s: file changed size while it was stored", e.Name)
	}
	return w, nil
}

// onlyReader hides a reader's WriteTo, so that io.CopyBuffer reads
// through its buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// FileWriter is one file of an Adding, cut into content-defined chunks as
// its content is written: exactly the chunks a whole file of the same
// content is cut into (cutPoint sees at least MaxChunk bytes, or the
// rest of the file), so a streamed file deduplicates against a staged
// one. Each chunk goes to the Add's workers as soon as it is cut.
type FileWriter struct {
	a      *Adding
	ref    FileRef // without Chunks: the jobs' names, once written
	h      hash.Hash
	buf    []byte // content not cut yet; less than MaxChunk between Writes
	jobs   []*chunkJob
	closed bool
	err    error // the first failure; every later call returns it
}

// Write takes the next bytes of the file. It fails once the Add failed
// (a chunk could not be stored, the Add's context ended, Abort).
func (w *FileWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, fmt.Errorf("write %s: file closed", w.ref.Name)
	}
	if w.buf == nil {
		w.buf = make([]byte, 0, 2*MaxChunk)
	}
	n := 0
	for len(p) > 0 {
		k := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p, n = p[k:], n+k
		if err := w.cut(MaxChunk); err != nil {
			return n, err
		}
	}
	return n, nil
}

// cut hands over chunks while at least keep bytes are pending (1: all
// of them), then moves the rest to the buffer's start.
func (w *FileWriter) cut(keep int) error {
	off := 0
	for len(w.buf)-off >= keep {
		n := cutPoint(w.buf[off:])
		if err := w.emit(w.buf[off : off+n]); err != nil {
			w.err = err
			return err
		}
		off += n
	}
	w.buf = w.buf[:copy(w.buf, w.buf[off:])]
	return nil
}

// emit hashes one chunk and gives a copy of it to the workers.
func (w *FileWriter) emit(chunk []byte) error {
	a := w.a
	w.h.Write(chunk)
	w.ref.Size += int64(len(chunk))
	if read := a.read.Add(int64(len(chunk))); a.s.Progress != nil {
		a.s.Progress(read)
	}
	var b []byte
	select {
	case b = <-a.free:
	case <-a.ctx.Done():
		return context.Cause(a.ctx)
	}
	j := &chunkJob{data: append(b[:0], chunk...)}
	a.sending.RLock()
	defer a.sending.RUnlock()
	if a.ended {
		return errAborted
	}
	select {
	case a.jobs <- j:
	case <-a.ctx.Done():
		a.free <- b
		return context.Cause(a.ctx)
	}
	w.jobs = append(w.jobs, j)
	return nil
}

// Close cuts the rest of the file and ends it; its chunks may still be
// being written (Finish waits for them).
func (w *FileWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	if err := w.cut(1); err != nil {
		return err
	}
	w.closed, w.buf = true, nil
	w.ref.SHA256 = hex.EncodeToString(w.h.Sum(nil))
	return nil
}

func (a *Adding) work() {
	defer a.wg.Done()
	var dst []byte
	for j := range a.jobs {
		if a.ctx.Err() == nil {
			var err error
			j.name, dst, err = a.storeChunk(j.data, dst)
			if err != nil {
				a.cancel(err)
			}
		}
		a.free <- j.data
		j.data = nil
	}
}

// storeChunk names data and, unless the store or this Add already has it,
// writes it compressed to DIR/tmp.
func (a *Adding) storeChunk(data, dst []byte) (string, []byte, error) {
	sum := sha256.Sum256(data)
	name := hex.EncodeToString(sum[:])
	a.mu.Lock()
	seen := a.seen[name]
	a.seen[name] = true
	a.mu.Unlock()
	if seen {
		return name, dst, nil
	}
	if ok, err := a.s.be.hasChunk(a.ctx, name); err != nil {
		return "", dst, err
	} else if ok {
		return name, dst, nil
	}
	dst = encoder().EncodeAll(data, dst[:0])
	a.mu.Lock()
	a.added += int64(len(dst))
	a.mu.Unlock()
	if err := a.chunks.put(a.ctx, name, dst); err != nil {
		return "", dst, err
	}
	return name, dst, nil
}

// sameFiles reports how the staging dir differs from the files a manifest
// lists.
func sameFiles(want, got []images.File) error {
	g := make(map[string]images.File, len(got))
	for _, f := range got {
		g[f.Name] = f
	}
	for _, w := range want {
		f, ok := g[w.Name]
		switch {
		case !ok:
			return fmt.Errorf("staging dir lacks %q listed in the manifest", w.Name)
		case f.Dir != w.Dir || f.Size != w.Size || (w.SHA256 != "" && f.SHA256 != w.SHA256):
			return fmt.Errorf("staging entry %q differs from the manifest", w.Name)
		}
		delete(g, w.Name)
	}
	for name := range g {
		return fmt.Errorf("staging entry %q is not in the manifest", name)
	}
	return nil
}
