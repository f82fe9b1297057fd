package store

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cr-dev/cr/objstore"
)

// IsS3 reports whether a store location is in object storage
// (s3://BUCKET/PREFIX) rather than a directory.
func IsS3(loc string) bool { return objstore.IsURL(loc) }

// objects is what the S3 backend needs of a bucket (objstore.Client; a
// fake in the tests). Missing keys are fs.ErrNotExist.
type objects interface {
	Get(ctx context.Context, key string, limit int64) ([]byte, error)
	Put(ctx context.Context, key string, data []byte) error
	Stat(ctx context.Context, key string) (int64, error)
	List(ctx context.Context, prefix string, recursive bool, fn func(objstore.Object) error) error
	Remove(ctx context.Context, key string) error
}

// Lock timing in S3 (docs/store-format.md §11): a holder rewrites its lock
// object every lockRefresh; a lock whose expiry has passed is stale and
// ignored (its holder died or lost the bucket); a holder that could not
// refresh its lock for lockTTL-lockRefresh considers it lost and stops
// before writing a record.
var (
	lockTTL     = 5 * time.Minute
	lockRefresh = time.Minute
	lockRetry   = 300 * time.Millisecond
)

// maxRecord bounds what is read of one snapshot record or lock object.
const (
	maxRecord     = 1 << 30
	maxLockObject = 64 << 10
)

const locksDir = "locks"

// s3Backend keeps a store under a prefix of a bucket, with the names of a
// directory store as keys: PREFIX/config, PREFIX/chunks/xx/<sha256>,
// PREFIX/snapshots/<id>.json, and lock objects PREFIX/locks/<id>.json.
// An object PUT is atomic, so chunks and records go straight to their
// keys: there is no tmp/.
type s3Backend struct {
	obj    objects
	loc    string // s3://bucket/prefix, for messages
	prefix string // "" or ending in "/"
	host   string
	now    func() time.Time

	mu     sync.Mutex
	listed bool
	known  map[string]bool // chunks listed at the first hasChunk of an Add
}

func newS3Backend(loc string) (*s3Backend, error) {
	u, err := objstore.Parse(loc)
	if err != nil {
		return nil, err
	}
	c, err := objstore.Dial(context.Background(), u.Bucket)
	if err != nil {
		return nil, err
	}
	return newS3BackendWith(c, u), nil
}

func newS3BackendWith(obj objects, u objstore.URL) *s3Backend {
	prefix := strings.TrimSuffix(u.Key, "/")
	if prefix != "" {
		prefix += "/"
	}
	u.Key = strings.TrimSuffix(u.Key, "/")
	return &s3Backend{obj: obj, loc: u.String(), prefix: prefix, host: HostName(), now: time.Now}
}

func (b *s3Backend) String() string { return b.loc }

func (b *s3Backend) key(elem ...string) string { return b.prefix + strings.Join(elem, "/") }

func (b *s3Backend) chunkKey(name string) string { return b.key(chunksDir, name[:2], name) }

func (b *s3Backend) recordKey(id string) string { return b.key(snapshotsDir, id+".json") }

// errStop ends a List early.
var errStop = errors.New("stop")

func (b *s3Backend) readConfig(ctx context.Context) ([]byte, error) {
	c, err := b.obj.Get(ctx, b.key(configFile), maxLockObject)
	if err == nil {
		return c, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	// No config: an empty prefix is no store yet, anything else there
	// (but locks of a creation under way) is not a store.
	var other string
	err = b.obj.List(ctx, b.prefix, true, func(o objstore.Object) error {
		if !strings.HasPrefix(o.Key, b.key(locksDir)+"/") {
			other = o.Key
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, err
	}
	if other != "" {
		return nil, fmt.Errorf("%w: %s holds %s but no config", ErrNotStore, b.loc, other)
	}
	return nil, ErrNoStore
}

func (b *s3Backend) create(ctx context.Context, config []byte) error {
	return b.obj.Put(ctx, b.key(configFile), config)
}

// lockInfo is the content of a lock object.
type lockInfo struct {
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Exclusive bool      `json:"exclusive"`
	Time      time.Time `json:"time"`    // taken or last refreshed
	Expires   time.Time `json:"expires"` // stale after this unless refreshed
}

func (l lockInfo) String() string {
	kind := "shared"
	if l.Exclusive {
		kind = "exclusive"
	}
	return fmt.Sprintf("host %s pid %d (%s, since %s)", l.Host, l.PID, kind, l.Time.UTC().Format(time.RFC3339))
}

// s3Lock is a lock object this process holds.
type s3Lock struct {
	b    *s3Backend
	key  string
	mu   sync.Mutex
	info lockInfo
	// refreshed is when the last write of the object succeeded.
	refreshed time.Time
	lastErr   error
	stop      chan struct{}
	done      chan struct{}
	once      sync.Once
}

func (b *s3Backend) lock(ctx context.Context, wait time.Duration, exclusive bool) (heldLock, error) {
	var id [8]byte
	crand.Read(id[:])
	l := &s3Lock{b: b, key: b.key(locksDir, hex.EncodeToString(id[:])+".json"),
		info: lockInfo{Host: b.host, PID: os.Getpid(), Exclusive: exclusive}}
	deadline := time.Now().Add(wait)
	for {
		if err := l.write(ctx); err != nil {
			return nil, fmt.Errorf("lock store %s: %w", b.loc, err)
		}
		conflict, err := b.conflict(ctx, l.key, exclusive)
		if err == nil && conflict == nil {
			break
		}
		b.obj.Remove(context.WithoutCancel(ctx), l.key)
		if err != nil {
			return nil, fmt.Errorf("lock store %s: %w", b.loc, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("lock store %s: %w by %s", b.loc, ErrLocked, conflict)
		}
		// Jitter keeps two exclusive lockers that saw each other from
		// backing off in step forever.
		t := time.NewTimer(min(left, lockRetry/2+rand.N(lockRetry)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("lock store: %w", ctx.Err())
		case <-t.C:
		}
	}
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.refreshLoop()
	return l, nil
}

// conflict returns the first live lock other than own that excludes a lock
// of this kind: any, for an exclusive one; an exclusive one, for a shared
// one.
func (b *s3Backend) conflict(ctx context.Context, own string, exclusive bool) (*lockInfo, error) {
	var found *lockInfo
	err := b.eachLock(ctx, func(key string, info *lockInfo, stale bool) error {
		if key == own || stale {
			return nil
		}
		if exclusive || info.Exclusive {
			found = info
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return found, err
}

// eachLock calls fn for every lock object with what it says and whether it
// is stale: expired, or held by a process of this host that is gone. A lock
// object that does not decode counts as an exclusive lock until its
// modification time is lockTTL old.
func (b *s3Backend) eachLock(ctx context.Context, fn func(key string, info *lockInfo, stale bool) error) error {
	now := b.now()
	return b.obj.List(ctx, b.key(locksDir)+"/", false, func(o objstore.Object) error {
		data, err := b.obj.Get(ctx, o.Key, maxLockObject)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // released meanwhile
		}
		if err != nil {
			return err
		}
		var info lockInfo
		if json.Unmarshal(data, &info) != nil || info.Expires.IsZero() {
			info = lockInfo{Host: "unknown", PID: 0, Exclusive: true, Time: o.Modified, Expires: o.Modified.Add(lockTTL)}
		}
		stale := now.After(info.Expires)
		if !stale && info.Host == b.host && info.PID > 0 && info.PID != os.Getpid() {
			if err := syscall.Kill(info.PID, 0); errors.Is(err, syscall.ESRCH) {
				stale = true
			}
		}
		return fn(o.Key, &info, stale)
	})
}

// write (re)writes the lock object with a fresh time and expiry.
func (l *s3Lock) write(ctx context.Context) error {
	l.mu.Lock()
	now := l.b.now()
	l.info.Time, l.info.Expires = now.UTC().Round(0), now.Add(lockTTL).UTC().Round(0)
	data, err := json.Marshal(l.info)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	err = l.b.obj.Put(ctx, l.key, append(data, '\n'))
	l.mu.Lock()
	if err == nil {
		l.refreshed = now
	}
	l.lastErr = err
	l.mu.Unlock()
	return err
}

func (l *s3Lock) refreshLoop() {
	defer close(l.done)
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), lockRefresh)
			l.write(ctx) // a failure shows in valid
			cancel()
		}
	}
}

func (l *s3Lock) release() {
	l.once.Do(func() {
		if l.stop != nil {
			close(l.stop)
			<-l.done
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l.b.obj.Remove(ctx, l.key) // else it goes stale
	})
}

func (l *s3Lock) valid() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if age := l.b.now().Sub(l.refreshed); age > lockTTL-lockRefresh {
		return fmt.Errorf("%w: lock not refreshed for %s (%v)", ErrLockLost, age.Round(time.Second), l.lastErr)
	}
	return nil
}

func (l *s3Lock) exclusive() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.info.Exclusive
}

// upgrade rewrites the lock as exclusive and keeps it so when no other
// holder has a live lock; otherwise it is shared again and ErrLocked.
func (l *s3Lock) upgrade(ctx context.Context) error {
	l.mu.Lock()
	l.info.Exclusive = true
	l.mu.Unlock()
	err := l.write(ctx)
	var conflict *lockInfo
	if err == nil {
		conflict, err = l.b.conflict(ctx, l.key, true)
	}
	if err == nil && conflict == nil {
		return nil
	}
	l.mu.Lock()
	l.info.Exclusive = false
	l.mu.Unlock()
	l.write(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("lock store %s: %w", l.b.loc, err)
	}
	return fmt.Errorf("lock store %s: %w by %s", l.b.loc, ErrLocked, conflict)
}

func (b *s3Backend) hasChunk(ctx context.Context, name string) (bool, error) {
	// One listing of the chunks per Add (newChunkWriter starts it anew)
	// instead of a request per chunk; a chunk another writer adds
	// meanwhile is written again, with the same content. No prune can
	// remove a listed chunk before the record is written: the writer
	// holds a shared lock throughout.
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.listed {
		known := make(map[string]bool)
		err := b.listChunks(ctx, func(name string, _ int64) error {
			known[name] = true
			return nil
		})
		if err != nil {
			return false, err
		}
		b.known, b.listed = known, true
	}
	return b.known[name], nil
}

func (b *s3Backend) readChunk(ctx context.Context, name string) ([]byte, error) {
	return b.obj.Get(ctx, b.chunkKey(name), maxChunkFile)
}

func (b *s3Backend) listChunks(ctx context.Context, fn func(name string, size int64) error) error {
	base := b.key(chunksDir) + "/"
	return b.obj.List(ctx, base, true, func(o objstore.Object) error {
		shard, name, ok := strings.Cut(strings.TrimPrefix(o.Key, base), "/")
		if !ok || !isHash(name) || name[:2] != shard {
			return nil // not ours: leave it alone
		}
		return fn(name, o.Size)
	})
}

func (b *s3Backend) removeChunk(ctx context.Context, name string) error {
	return b.obj.Remove(ctx, b.chunkKey(name))
}

func (b *s3Backend) readRecord(ctx context.Context, id string) ([]byte, error) {
	return b.obj.Get(ctx, b.recordKey(id), maxRecord)
}

func (b *s3Backend) writeRecord(ctx context.Context, id string, data []byte) error {
	return b.obj.Put(ctx, b.recordKey(id), data)
}

func (b *s3Backend) recordIDs(ctx context.Context) ([]string, error) {
	base := b.key(snapshotsDir) + "/"
	var ids []string
	err := b.obj.List(ctx, base, false, func(o objstore.Object) error {
		if id, ok := recordName(strings.TrimPrefix(o.Key, base)); ok {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}

func (b *s3Backend) removeRecords(ctx context.Context, ids []string) error {
	for _, id := range ids {
		if err := b.obj.Remove(ctx, b.recordKey(id)); err != nil {
			return fmt.Errorf("remove snapshot %s: %w", id, err)
		}
	}
	return nil
}

// cleanTmp removes the stale lock objects (S3 has no temporary files: a
// PUT is whole or absent, and an interrupted multipart upload is no
// object).
func (b *s3Backend) cleanTmp(ctx context.Context, dryRun bool) (int, error) {
	n := 0
	err := b.eachLock(ctx, func(key string, _ *lockInfo, stale bool) error {
		if !stale {
			return nil
		}
		n++
		if dryRun {
			return nil
		}
		return b.obj.Remove(ctx, key)
	})
	return n, err
}

// s3Chunks puts each chunk straight to its key: a PUT is atomic, and a
// chunk put by a writer that then fails is garbage for prune (never
// removed here: another writer may already count on it).
type s3Chunks struct{ b *s3Backend }

func (b *s3Backend) newChunkWriter() chunkWriter {
	b.mu.Lock()
	b.listed, b.known = false, nil // a prune since the last Add may have removed some
	b.mu.Unlock()
	return s3Chunks{b}
}

func (w s3Chunks) put(ctx context.Context, name string, data []byte) error {
	return w.b.obj.Put(ctx, w.b.chunkKey(name), data)
}
func (w s3Chunks) commit(context.Context) error { return nil }
func (w s3Chunks) abort()                       {}
