package store

import (
	"context"
	"time"
)

// backend is where a store keeps its objects: the config, the chunks, the
// snapshot records and the lock. A directory (dirBackend, the layout of
// docs/store-format.md §1-§8) and an S3 bucket (s3Backend: the same names
// as objects under a prefix, §11) implement it; the Store above it owns
// the format (hashing, compression, records, retention, verification).
//
// Errors: a missing object is fs.ErrNotExist (wrapped); a chunk that can
// be found but not read is a *chunkFault.
type backend interface {
	// String names the store in messages: its directory or s3://BUCKET/PREFIX.
	String() string
	// readConfig returns the config's content; ErrNoStore when there is no
	// config and nothing else either, ErrNotStore when something else is
	// there.
	readConfig(ctx context.Context) ([]byte, error)
	// create lays out an empty store with the given config, tolerating
	// another process creating the same store at the same time.
	create(ctx context.Context, config []byte) error
	// lock takes the store's lock, waiting up to wait; exclusive for
	// removing chunks (prune), shared for the rest (a backend may make
	// every lock exclusive, as flock(2) on a directory store does). The
	// returned check reports whether the lock is still held (an S3 lock
	// that could not be refreshed may have expired).
	lock(ctx context.Context, wait time.Duration, exclusive bool) (held heldLock, err error)

	// hasChunk reports whether the chunk is in the store.
	hasChunk(ctx context.Context, name string) (bool, error)
	// newChunkWriter starts a batch of new chunks: they become visible
	// under their names no later than commit, each complete or not at all.
	newChunkWriter() chunkWriter
	// readChunk returns the stored (compressed) bytes of a chunk, at most
	// maxChunkFile+1 of them.
	readChunk(ctx context.Context, name string) ([]byte, error)
	// listChunks calls fn for every chunk in the store with its stored size.
	listChunks(ctx context.Context, fn func(name string, size int64) error) error
	removeChunk(ctx context.Context, name string) error

	readRecord(ctx context.Context, id string) ([]byte, error)
	// writeRecord makes the record visible atomically and durably.
	writeRecord(ctx context.Context, id string, b []byte) error
	// recordIDs lists the ids of the records, in no particular order.
	recordIDs(ctx context.Context) ([]string, error)
	// removeRecords deletes records (durably before it returns).
	removeRecords(ctx context.Context, ids []string) error
	// cleanTmp removes what interrupted writers left (the caller holds
	// the lock) and returns how much; with dryRun it only counts.
	cleanTmp(ctx context.Context, dryRun bool) (int, error)
}

// heldLock is a lock a backend gave.
type heldLock interface {
	// release gives the lock back.
	release()
	// valid returns nil while the lock is certainly held, or why not.
	valid() error
	// exclusive says whether it excludes every other holder.
	exclusive() bool
	// upgrade tries to make a shared lock exclusive without waiting
	// (ErrLocked if another holder has one).
	upgrade(ctx context.Context) error
}

// chunkWriter is one writer's batch of new chunks.
type chunkWriter interface {
	// put stores one chunk's compressed bytes; safe for concurrent use.
	put(ctx context.Context, name string, data []byte) error
	// commit makes every chunk put durable and visible under its name.
	commit(ctx context.Context) error
	// abort removes what put wrote and commit has not made visible.
	abort()
}
