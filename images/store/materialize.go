package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sync"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/scratch"
)

// maxChunkFile bounds what is read of one chunk file: a zstd frame of at
// most MaxChunk bytes is never much larger than that.
const maxChunkFile = MaxChunk + 4096

// chunkFault is why a chunk cannot be used; readChunk returns it for damage
// (as opposed to an error of the machine, such as running out of files).
type chunkFault struct{ reason string }

func (c *chunkFault) Error() string { return c.reason }

// readChunk reads, decompresses and checks one chunk, appending its
// plaintext to dst[:0].
func (s *Store) readChunk(name string, dst []byte) ([]byte, error) {
	b, err := s.be.readChunk(context.Background(), name)
	var fault *chunkFault
	if errors.Is(err, fs.ErrNotExist) {
		return dst, &chunkFault{"missing"}
	}
	if errors.As(err, &fault) {
		return dst, fault
	}
	if err != nil {
		return dst, fmt.Errorf("read chunk %s: %w", name, err)
	}
	if len(b) > maxChunkFile {
		return dst, &chunkFault{"file too large"}
	}
	dst, err = decoder().DecodeAll(b, dst[:0])
	if err != nil {
		return dst, &chunkFault{"decode: " + err.Error()}
	}
	if sum := sha256.Sum256(dst); hex.EncodeToString(sum[:]) != name {
		return dst, &chunkFault{"hash mismatch"}
	}
	return dst, nil
}

// fetched is one chunk's plaintext, or why it has none.
type fetched struct {
	data []byte
	err  error
}

// fetchChunks reads the chunks named by names with a few workers, keeping a
// bounded window ahead of the consumer, and returns their results in order.
// The consumer must read every result or cancel ctx and drain the channel.
func (s *Store) fetchChunks(ctx context.Context, names []string, pool *sync.Pool) <-chan chan fetched {
	workers := s.readers()
	out := make(chan chan fetched, 2*workers)
	sem := make(chan struct{}, workers)
	go func() {
		defer close(out)
		for _, name := range names {
			ch := make(chan fetched, 1)
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			select {
			case out <- ch:
			case <-ctx.Done():
				<-sem
				return
			}
			go func() {
				defer func() { <-sem }()
				b, _ := pool.Get().(*[]byte)
				if b == nil {
					b = new([]byte)
				}
				data, err := s.readChunk(name, *b)
				ch <- fetched{data, err}
			}()
		}
	}()
	return out
}

// readers is how many chunks are read at once: one per CPU from a local
// disk, more from object storage, where each read waits for a round trip.
func (s *Store) readers() int {
	if s.dir == "" {
		return max(16, runtime.GOMAXPROCS(0))
	}
	return runtime.GOMAXPROCS(0)
}

// freeSpace is images.FreeSpace; tests replace it.
var freeSpace = images.FreeSpace

// Materialize rebuilds the staging dir of the snapshot id (or unique id
// prefix) at dst, which must not exist or be an empty directory, and returns
// its manifest. Every chunk's hash and every file's size and sha256 are
// checked: a mismatch fails with a Damage (ErrDamaged) naming the file and
// chunk, and nothing is left at dst.
func (s *Store) Materialize(ctx context.Context, id string, dst string) (*images.Manifest, error) {
	snap, err := s.Get(id)
	if err != nil {
		return nil, fmt.Errorf("materialize: %w", err)
	}
	if err := s.materialize(ctx, snap, dst); err != nil {
		return nil, fmt.Errorf("materialize snapshot %s: %w", snap.ID, err)
	}
	return snap.Manifest, nil
}

func (s *Store) materialize(ctx context.Context, snap *Snapshot, dst string) (err error) {
	created := false
	if fi, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return err
		}
		created = true
	} else if err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dst)
	} else if ents, err := os.ReadDir(dst); err != nil {
		return err
	} else if len(ents) > 0 {
		return fmt.Errorf("%s is not empty", dst)
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return err
	}
	defer root.Close()
	defer func() {
		if err == nil {
			return
		}
		if created {
			os.RemoveAll(dst)
			return
		}
		ents, _ := os.ReadDir(dst)
		for _, e := range ents {
			os.RemoveAll(filepath.Join(dst, e.Name()))
		}
	}()
	// The declared sizes against the free space, before anything is
	// written (images.CheckSpace, as cr serve and an image restore do).
	if free, ferr := freeSpace(dst); ferr == nil && snap.TotalBytes > free {
		return fmt.Errorf("%w: snapshot of %s, %s free in the staging directory", images.ErrTooLarge, images.FormatBytes(snap.TotalBytes), images.FormatBytes(free))
	}

	ctx, cancel := context.WithCancel(ctx)
	var names []string
	for _, f := range snap.Files {
		names = append(names, f.Chunks...)
	}
	pool := &sync.Pool{}
	results := s.fetchChunks(ctx, names, pool)
	defer func() {
		cancel()
		for ch := range results {
			<-ch
		}
	}()

	var dirs []FileRef
	for _, f := range snap.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if dir := path.Dir(f.Name); dir != "." {
			if err := root.MkdirAll(dir, 0o700); err != nil {
				return err
			}
		}
		if f.Dir {
			if err := root.Mkdir(f.Name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			dirs = append(dirs, f)
			continue
		}
		if err := writeFile(root, snap.ID, f, results, pool); err != nil {
			return err
		}
	}
	// Directory modes last: a read-only directory could not be filled.
	for _, d := range slices.Backward(dirs) {
		if err := root.Chmod(d.Name, fs.FileMode(d.Mode)); err != nil {
			return err
		}
	}
	return nil
}

// writeFile writes one file from the next len(f.Chunks) results.
func writeFile(root *os.Root, id string, f FileRef, results <-chan chan fetched, pool *sync.Pool) error {
	out, err := root.OpenFile(f.Name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	h := sha256.New()
	var size int64
	for _, c := range f.Chunks {
		r, ok := <-results
		if !ok {
			return context.Canceled
		}
		got := <-r
		if got.err != nil {
			var fault *chunkFault
			if errors.As(got.err, &fault) {
				return Damage{SnapshotID: id, File: f.Name, Chunk: c, Reason: fault.reason}
			}
			return got.err
		}
		if _, err := out.Write(got.data); err != nil {
			return err
		}
		h.Write(got.data)
		size += int64(len(got.data))
		pool.Put(&got.data)
	}
	if size != f.Size {
		return Damage{SnapshotID: id, File: f.Name, Reason: fmt.Sprintf("size %d, want %d", size, f.Size)}
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != f.SHA256 {
		return Damage{SnapshotID: id, File: f.Name, Reason: "sha256 mismatch"}
	}
	if err := out.Chmod(fs.FileMode(f.Mode)); err != nil {
		return err
	}
	return out.Close()
}

// Export writes the snapshot id (or unique id prefix) as a single image
// file at path (images.WriteFile: atomic, mode 0600), going through a
// temporary staging dir next to path that is removed afterwards (a
// scratch entry: one that a killed export left goes with the next export
// there).
func (s *Store) Export(ctx context.Context, id string, path string, o images.WriteOptions) error {
	if !o.Overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("export snapshot to %s: %w", path, fs.ErrExist)
		}
	}
	tmp, err := scratch.Mkdir(filepath.Dir(path), ".cr-export-")
	if err != nil {
		return fmt.Errorf("export snapshot: %w", err)
	}
	defer tmp.Remove()
	m, err := s.Materialize(ctx, id, tmp.Path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if _, err := images.WriteFile(ctx, path, tmp.Path, m, o); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}
