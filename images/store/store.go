// Package store owns cr's snapshot store: a directory that keeps many
// checkpoints of long-running jobs content-addressed and deduplicated, and
// applies a retention policy to them.
//
// Every file of a staging directory (the CRIU images of a subtree, as the
// dump package leaves them) is cut into content-defined chunks; a chunk is
// stored once, zstd-compressed, under the sha256 of its plaintext, so memory
// that did not change between two snapshots, and identical pages of two
// containers, take space once. A snapshot is a small JSON record that lists
// each file's chunks. Records appear atomically after their chunks are on
// disk, so a crash at any moment leaves only complete snapshots visible; a
// lock file keeps two writers (two overlapping cron runs) apart.
// docs/store-format.md specifies the layout byte by byte.
//
// Where the objects live is a backend: a local directory (dirBackend) or
// a prefix of an S3 bucket (s3Backend, through package objstore), with the
// same names as keys; in S3 the lock is a set of expiring lock objects,
// shared for writers and exclusive for garbage collection, so that many
// hosts snapshot into one bucket while one of them prunes.
package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// FormatName and FormatVersion identify the store layout in DIR/config. Open
// refuses a store whose version it does not know.
const (
	FormatName    = "cr-store"
	FormatVersion = 1
)

// Names inside the store directory.
const (
	configFile   = "config"
	lockFile     = "lock"
	chunksDir    = "chunks"
	snapshotsDir = "snapshots"
	tmpDir       = "tmp"
)

// Errors callers branch on; they are returned wrapped, with the detail.
var (
	// ErrLocked: another process (or another holder in this one) has the
	// store's lock and did not release it within the wait.
	ErrLocked = errors.New("store is locked")
	// ErrNotFound: no snapshot has that id or id prefix.
	ErrNotFound = errors.New("snapshot not found")
	// ErrAmbiguous: an id prefix matches more than one snapshot.
	ErrAmbiguous = errors.New("ambiguous snapshot id")
	// ErrDamaged: a chunk or snapshot record does not match its hash, is
	// missing or cannot be decoded. The error is a Damage naming it.
	ErrDamaged = errors.New("store damaged")
	// ErrNotStore: the directory exists but is not a cr store.
	ErrNotStore = errors.New("not a cr store")
	// ErrNoStore: there is no store at the directory (it does not exist or
	// is empty); Open never creates one, OpenOrCreate does.
	ErrNoStore = errors.New("no such store")
	// ErrUnsupportedVersion: the store was written by a newer format.
	ErrUnsupportedVersion = errors.New("unsupported store version")
	// ErrLockLost: an S3 lock could not be refreshed in time, so another
	// host may have taken the store; the writer stopped.
	ErrLockLost = errors.New("store lock lost")
)

// Damage names one damaged object: a chunk of a file of a snapshot, or a
// snapshot's record itself (File and Chunk empty). As an error it wraps
// ErrDamaged.
type Damage struct {
	SnapshotID string
	File       string
	Chunk      string
	Reason     string
}

func (d Damage) Error() string {
	var b bytes.Buffer
	b.WriteString("snapshot " + d.SnapshotID)
	if d.File != "" {
		b.WriteString(": file " + d.File)
	}
	if d.Chunk != "" {
		b.WriteString(": chunk " + d.Chunk)
	}
	b.WriteString(": " + d.Reason)
	return b.String()
}

// Unwrap makes errors.Is(d, ErrDamaged) true.
func (d Damage) Unwrap() error { return ErrDamaged }

// config is the content of DIR/config.
type config struct {
	Format  string    `json:"format"`
	Version int       `json:"version"`
	Created time.Time `json:"created"`
}

// Store is an open snapshot store. Reading methods (List, Get, Latest,
// Materialize, Export, Verify) need no lock. Methods that change the store
// (Add, Remove, Forget, Prune) run under the store's lock: taken by the
// caller with Lock (or LockShared), or, when this Store does not hold it,
// taken for the call without waiting (ErrLocked if another holder has it).
type Store struct {
	dir string // the directory of a directory store, "" for S3
	be  backend
	// Progress, if set, is called as Add reads the staged files, with
	// the bytes read so far.
	Progress func(done int64)
	// Host, if set, is recorded in the snapshots Add writes (the host
	// that took them); cr sets it to the machine's host name.
	Host string

	mu   sync.Mutex
	held []heldLock // locks of this Store not yet released
}

// Open opens the existing store at loc, a directory or s3://BUCKET/PREFIX
// (IsS3), for reading or changing it. It never creates one: a directory
// that does not exist or is empty (or holds only what an interrupted create
// leaves), or a prefix without a config object, is ErrNoStore, whose
// message names loc. It fails with ErrNotStore for a directory that holds
// something else, and with ErrUnsupportedVersion for a newer store.
func Open(loc string) (*Store, error) {
	s, err := newStore(loc)
	if err != nil {
		return nil, err
	}
	if err := s.open(); err != nil {
		if errors.Is(err, ErrNoStore) {
			return nil, fmt.Errorf("%w: %s", ErrNoStore, s.be)
		}
		return nil, fmt.Errorf("open store %s: %w", s.be, err)
	}
	return s, nil
}

// OpenOrCreate opens the store at loc, creating it (a directory with mode
// 0700 and its parents; in S3 its config object) when there is none yet;
// created says it did. It fails as Open does for a directory that holds
// something else.
func OpenOrCreate(loc string) (s *Store, created bool, err error) {
	s, err = newStore(loc)
	if err != nil {
		return nil, false, err
	}
	err = s.open()
	if errors.Is(err, ErrNoStore) {
		created, err = true, s.create()
	}
	if err != nil {
		return nil, false, fmt.Errorf("open store %s: %w", s.be, err)
	}
	return s, created, nil
}

func newStore(loc string) (*Store, error) {
	if IsS3(loc) {
		be, err := newS3Backend(loc)
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", loc, err)
		}
		return &Store{be: be, Host: HostName()}, nil
	}
	abs, err := filepath.Abs(loc)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", loc, err)
	}
	return &Store{dir: abs, be: &dirBackend{dir: abs}, Host: HostName()}, nil
}

// HostName is the name snapshots and S3 locks record for this machine:
// CR_HOSTNAME when set (two cr state directories on one machine acting as
// two hosts, or a name more stable than the kernel's), else the host name.
func HostName() string {
	if h := os.Getenv("CR_HOSTNAME"); h != "" {
		return h
	}
	h, _ := os.Hostname()
	return h
}

// open reads the config of an existing store; ErrNoStore when there is
// none and the directory is missing or holds no more than a half-created
// store's skeleton.
func (s *Store) open() error {
	b, err := s.be.readConfig(context.Background())
	if err != nil {
		return err
	}
	var c config
	if err := json.Unmarshal(b, &c); err != nil || c.Format != FormatName {
		return fmt.Errorf("%w: bad %s", ErrNotStore, configFile)
	}
	if c.Version != FormatVersion {
		return fmt.Errorf("%w: version %d, this cr reads version %d", ErrUnsupportedVersion, c.Version, FormatVersion)
	}
	return nil
}

// create lays out a new store. Two processes creating the same store at
// once both succeed: every step tolerates the other's.
func (s *Store) create() error {
	b, err := json.Marshal(config{Format: FormatName, Version: FormatVersion, Created: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		return err
	}
	return s.be.create(context.Background(), append(b, '\n'))
}

// Dir returns where the store is: its absolute directory, or
// s3://BUCKET/PREFIX.
func (s *Store) Dir() string { return s.be.String() }

// path, chunkPath and recordPath name files of a directory store.
func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

func (s *Store) chunkPath(name string) string { return (&dirBackend{dir: s.dir}).chunkPath(name) }

func (s *Store) recordPath(id string) string { return (&dirBackend{dir: s.dir}).recordPath(id) }

// tempPrefix starts the names of temporary files; a crash can leave them.
const tempPrefix = ".tmp-"

func isTemp(name string) bool {
	return len(name) > len(tempPrefix) && strings.HasPrefix(name, tempPrefix)
}

// recordName returns the id of a record's file or object name,
// <16 hex digits>.json.
func recordName(name string) (string, bool) {
	id, ok := strings.CutSuffix(name, ".json")
	return id, ok && len(id) == idLen && isLowerHex(id)
}

// writeAtomic writes b to path through a synced temporary file in tmpDir
// (on the same file system), renames it into place and syncs path's
// directory. step names the failpoints around the rename.
func writeAtomic(tmpDir, path string, b []byte, step string) (err error) {
	f, err := os.CreateTemp(tmpDir, tempPrefix+"*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	failpoint(step + "-written")
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	failpoint(step + "-renamed")
	return syncDir(filepath.Dir(path))
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

// syncFS flushes the whole file system that holds dir (syncfs(2)): one call
// makes thousands of freshly written chunk files durable.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// failpointHook, when set (by tests only), is called at the named steps of
// a write so that a test can stop the process exactly there.
var failpointHook func(name string)

func failpoint(name string) {
	if failpointHook != nil {
		failpointHook(name)
	}
}
