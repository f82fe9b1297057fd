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
	"sync"
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
// is not modified.
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
	unlock, err := s.hold(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("add snapshot: %w", err)
	}
	defer unlock()
	snap, err := s.add(ctx, stagingDir, m, at)
	if err != nil {
		return nil, fmt.Errorf("add snapshot of %s: %w", m.Root, err)
	}
	return snap, nil
}

// addWorkers is the number of goroutines that hash, compress and write
// chunks: more than the CPUs, because creating a file can wait for the file
// system's journal far longer than compressing a chunk takes.
func addWorkers() int { return max(4*runtime.GOMAXPROCS(0), 8) }

// chunkJob carries one chunk from the reader to a worker and its name back.
type chunkJob struct {
	data []byte
	name string
}

// adder is the state of one Add: a reader that cuts the files into chunks
// and workers that hash, compress and write the new ones.
type adder struct {
	s      *Store
	ctx    context.Context
	cancel context.CancelCauseFunc
	jobs   chan *chunkJob
	free   chan []byte // bounds the chunks in flight
	wg     sync.WaitGroup

	chunks chunkWriter

	mu    sync.Mutex
	seen  map[string]bool // chunks in the store or written by this Add
	added int64
	read  int64 // bytes of the staged files read so far
}

func (s *Store) add(ctx context.Context, stagingDir string, m *images.Manifest, at time.Time) (snap *Snapshot, err error) {
	if at.IsZero() {
		at = time.Now()
	}
	at = at.Round(0)
	if _, err := s.be.cleanTmp(ctx, false); err != nil {
		return nil, err
	}
	// The entries as images.WriteArchive writes them, in its order.
	entries, err := images.StagingEntries(stagingDir)
	if err != nil {
		return nil, fmt.Errorf("walk staging dir: %w", err)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := addWorkers()
	a := &adder{
		s:      s,
		ctx:    ctx,
		cancel: cancel,
		jobs:   make(chan *chunkJob, workers),
		free:   make(chan []byte, 4*workers),
		seen:   make(map[string]bool),
		chunks: s.be.newChunkWriter(),
	}
	for range cap(a.free) {
		a.free <- make([]byte, 0, MaxChunk)
	}
	defer func() {
		if err != nil {
			a.chunks.abort()
		}
	}()
	a.wg.Add(workers)
	for range workers {
		go a.work()
	}

	type fileWork struct {
		ref  FileRef
		jobs []*chunkJob
	}
	work := make([]fileWork, len(entries))
	buf := make([]byte, 4*MaxChunk)
	var readErr error
	for i, e := range entries {
		work[i].ref = FileRef{Name: e.Name, Mode: e.Mode, Dir: e.Dir}
		if e.Dir {
			continue
		}
		var sum string
		work[i].jobs, work[i].ref.Size, sum, readErr = a.chunkFile(e, buf)
		if readErr != nil {
			break
		}
		work[i].ref.SHA256 = sum
	}
	close(a.jobs)
	a.wg.Wait()
	if readErr != nil {
		return nil, readErr
	}
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}

	files := make([]FileRef, len(work))
	mfiles := make([]images.File, len(work))
	var total int64
	for i, w := range work {
		for _, j := range w.jobs {
			w.ref.Chunks = append(w.ref.Chunks, j.name)
		}
		files[i] = w.ref
		mfiles[i] = images.File{Name: w.ref.Name, Size: w.ref.Size, SHA256: w.ref.SHA256, Mode: w.ref.Mode, Dir: w.ref.Dir}
		total += w.ref.Size
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
		Host:       s.Host,
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
	if err := s.lockValid(); err != nil {
		return nil, err
	}
	if err := s.be.writeRecord(ctx, id, b); err != nil {
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

// chunkFile cuts one file into chunks, hands each to the workers, and
// returns the jobs in file order with the file's size and sha256.
func (a *adder) chunkFile(e images.StagedEntry, buf []byte) (jobs []*chunkJob, size int64, sum string, err error) {
	f, err := os.OpenFile(e.Path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, 0, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, "", err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, "", fmt.Errorf("staging entry %q is not a regular file", e.Name)
	}
	var h hash.Hash = sha256.New()
	c := newChunker(f, buf)
	for {
		chunk, err := c.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, "", fmt.Errorf("read %s: %w", e.Name, err)
		}
		h.Write(chunk)
		size += int64(len(chunk))
		a.read += int64(len(chunk))
		if a.s.Progress != nil {
			a.s.Progress(a.read)
		}
		var b []byte
		select {
		case b = <-a.free:
		case <-a.ctx.Done():
			return nil, 0, "", context.Cause(a.ctx)
		}
		j := &chunkJob{data: append(b[:0], chunk...)}
		select {
		case a.jobs <- j:
		case <-a.ctx.Done():
			return nil, 0, "", context.Cause(a.ctx)
		}
		jobs = append(jobs, j)
	}
	if size != fi.Size() {
		return nil, 0, "", fmt.Errorf("read %s: file changed size while it was stored", e.Name)
	}
	return jobs, size, hex.EncodeToString(h.Sum(nil)), nil
}

func (a *adder) work() {
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
func (a *adder) storeChunk(data, dst []byte) (string, []byte, error) {
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
