package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// dirBackend keeps a store in a local directory (docs/store-format.md §1-§8):
// chunks written to tmp/, made durable with one syncfs(2) and renamed into
// chunks/xx/; records through a synced temporary file renamed into
// snapshots/; flock(2) on DIR/lock, always exclusive.
type dirBackend struct {
	dir string
}

func (d *dirBackend) String() string { return d.dir }

func (d *dirBackend) path(elem ...string) string {
	return filepath.Join(append([]string{d.dir}, elem...)...)
}

// chunkPath is chunks/<first two hex digits>/<64 hex digits>.
func (d *dirBackend) chunkPath(name string) string {
	return filepath.Join(d.dir, chunksDir, name[:2], name)
}

func (d *dirBackend) recordPath(id string) string {
	return filepath.Join(d.dir, snapshotsDir, id+".json")
}

func (d *dirBackend) readConfig(context.Context) ([]byte, error) {
	b, err := os.ReadFile(d.path(configFile))
	if errors.Is(err, fs.ErrNotExist) {
		if err := d.checkEmpty(); err != nil {
			return nil, err
		}
		return nil, ErrNoStore
	}
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{chunksDir, snapshotsDir, tmpDir} {
		if err := os.Mkdir(d.path(sub), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
	}
	return b, nil
}

// checkEmpty fails with ErrNotStore when the directory holds anything but
// what create makes (a crash may have left it half-made, or another
// process may be creating it at the same time); a missing directory is
// empty.
func (d *dirBackend) checkEmpty() error {
	ents, err := os.ReadDir(d.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		switch e.Name() {
		case chunksDir, snapshotsDir, tmpDir, lockFile, configFile:
		default:
			if !isTemp(e.Name()) {
				return fmt.Errorf("%w: directory is not empty", ErrNotStore)
			}
		}
	}
	return nil
}

// create lays out a new store. Two processes creating the same store at
// once both succeed: every step tolerates the other's.
func (d *dirBackend) create(_ context.Context, config []byte) error {
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return err
	}
	if err := d.checkEmpty(); err != nil {
		return err
	}
	for _, sub := range []string{chunksDir, snapshotsDir, tmpDir} {
		if err := os.Mkdir(d.path(sub), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return writeAtomic(d.dir, d.path(configFile), config, "config")
}

// lockPoll is how often a waiting Lock tries again.
const lockPoll = 50 * time.Millisecond

// lock takes flock(2) on DIR/lock, exclusive whatever was asked: the
// kernel releases it when the holder dies.
func (d *dirBackend) lock(ctx context.Context, wait time.Duration, _ bool) (heldLock, error) {
	f, err := os.OpenFile(d.path(lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock store: flock %s: %w", f.Name(), err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			holder := readHolder(f)
			f.Close()
			if holder != "" {
				return nil, fmt.Errorf("lock store %s: %w by pid %s", d.dir, ErrLocked, holder)
			}
			return nil, fmt.Errorf("lock store %s: %w", d.dir, ErrLocked)
		}
		t := time.NewTimer(min(left, lockPoll))
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("lock store: %w", ctx.Err())
		case <-t.C:
		}
	}
	// The pid is only a hint for the ErrLocked message of the next waiter.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &flockHeld{f: f}, nil
}

func readHolder(f *os.File) string {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid := strings.TrimSpace(string(b[:n]))
	if _, err := strconv.Atoi(pid); err != nil {
		return ""
	}
	return pid
}

type flockHeld struct {
	once sync.Once
	f    *os.File
}

// release closes the last descriptor, which releases the flock.
func (h *flockHeld) release()                      { h.once.Do(func() { h.f.Close() }) }
func (h *flockHeld) valid() error                  { return nil }
func (h *flockHeld) exclusive() bool               { return true }
func (h *flockHeld) upgrade(context.Context) error { return nil }

func (d *dirBackend) hasChunk(_ context.Context, name string) (bool, error) {
	if _, err := os.Lstat(d.chunkPath(name)); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	return false, nil
}

func (d *dirBackend) readChunk(_ context.Context, name string) ([]byte, error) {
	f, err := os.Open(d.chunkPath(name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxChunkFile+1))
	if errors.Is(err, syscall.EIO) {
		return nil, &chunkFault{"read: " + err.Error()}
	}
	return b, err
}

func (d *dirBackend) listChunks(ctx context.Context, fn func(name string, size int64) error) error {
	shards, err := os.ReadDir(d.path(chunksDir))
	if err != nil {
		return err
	}
	for _, shard := range shards {
		if !shard.IsDir() || len(shard.Name()) != 2 || !isLowerHex(shard.Name()) {
			continue
		}
		ents, err := os.ReadDir(d.path(chunksDir, shard.Name()))
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			name := e.Name()
			if !isHash(name) || name[:2] != shard.Name() {
				continue // not ours: leave it alone
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			if err := fn(name, fi.Size()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *dirBackend) removeChunk(_ context.Context, name string) error {
	if err := os.Remove(d.chunkPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (d *dirBackend) readRecord(_ context.Context, id string) ([]byte, error) {
	return os.ReadFile(d.recordPath(id))
}

func (d *dirBackend) writeRecord(_ context.Context, id string, b []byte) error {
	return writeAtomic(d.path(tmpDir), d.recordPath(id), b, "record")
}

func (d *dirBackend) recordIDs(context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.path(snapshotsDir))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if id, ok := recordName(e.Name()); ok && e.Type().IsRegular() {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func (d *dirBackend) removeRecords(_ context.Context, ids []string) error {
	for _, id := range ids {
		if err := os.Remove(d.recordPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove snapshot %s: %w", id, err)
		}
	}
	if len(ids) > 0 {
		return syncDir(d.path(snapshotsDir))
	}
	return nil
}

// cleanTmp removes the temporary files in DIR/tmp (left by a crash; the
// caller holds the lock, so no writer owns them) and returns their count.
func (d *dirBackend) cleanTmp(_ context.Context, dryRun bool) (int, error) {
	ents, err := os.ReadDir(d.path(tmpDir))
	if err != nil {
		return 0, fmt.Errorf("clean %s: %w", tmpDir, err)
	}
	for _, e := range ents {
		if !dryRun {
			if err := os.RemoveAll(d.path(tmpDir, e.Name())); err != nil {
				return 0, fmt.Errorf("clean %s: %w", tmpDir, err)
			}
		}
	}
	return len(ents), nil
}

type pendingChunk struct {
	tmp, name string
}

// dirChunks writes new chunks to DIR/tmp and renames them into place at
// commit, after one syncfs(2).
type dirChunks struct {
	d       *dirBackend
	mu      sync.Mutex
	pending []pendingChunk // written to DIR/tmp, not yet renamed
}

func (d *dirBackend) newChunkWriter() chunkWriter { return &dirChunks{d: d} }

// chunkPutHook, when set (by tests only), is called before each chunk is
// written to DIR/tmp; its error is the write's.
var chunkPutHook func() error

func (w *dirChunks) put(_ context.Context, name string, data []byte) error {
	if chunkPutHook != nil {
		if err := chunkPutHook(); err != nil {
			return err
		}
	}
	f, err := os.CreateTemp(w.d.path(tmpDir), tempPrefix+"chunk-*")
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.pending = append(w.pending, pendingChunk{tmp: f.Name(), name: name})
	w.mu.Unlock()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write chunk: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write chunk: %w", err)
	}
	return nil
}

func (w *dirChunks) abort() {
	for _, p := range w.pending {
		os.Remove(p.tmp)
	}
	w.pending = nil
}

// commit moves the new chunks into DIR/chunks: their content is made
// durable before the renames, and the renames before the record is written.
func (w *dirChunks) commit(context.Context) error {
	if len(w.pending) == 0 {
		return nil
	}
	failpoint("chunks-written")
	if err := syncFS(w.d.dir); err != nil {
		return err
	}
	shards := make(map[string]bool)
	for i, p := range w.pending {
		shard := p.name[:2]
		if !shards[shard] {
			if err := os.Mkdir(w.d.path(chunksDir, shard), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("store chunk: %w", err)
			}
			shards[shard] = true
		}
		if err := os.Rename(p.tmp, w.d.chunkPath(p.name)); err != nil {
			return fmt.Errorf("store chunk: %w", err)
		}
		if i == len(w.pending)/2 {
			failpoint("chunks-half-renamed")
		}
	}
	w.pending = nil // renamed chunks are garbage for Prune now, not for us
	failpoint("chunks-renamed")
	return syncFS(w.d.dir)
}
