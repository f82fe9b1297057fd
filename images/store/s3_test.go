package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cr-dev/cr/objstore"
)

// fakeBucket is an in-memory bucket for the S3 backend's unit tests, with
// hooks to fail requests. The end-to-end tests use a real server.
type fakeBucket struct {
	mu      sync.Mutex
	objs    map[string]fakeObject
	now     func() time.Time
	fail    func(op, key string) error // nil: succeed
	puts    int
	removed []string
}

type fakeObject struct {
	data []byte
	mod  time.Time
}

func newFakeBucket() *fakeBucket {
	return &fakeBucket{objs: map[string]fakeObject{}, now: time.Now}
}

func (f *fakeBucket) hook(op, key string) error {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		return fail(op, key)
	}
	return nil
}

func (f *fakeBucket) Get(_ context.Context, key string, limit int64) ([]byte, error) {
	if err := f.hook("get", key); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.objs[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, fs.ErrNotExist)
	}
	b := o.data
	if int64(len(b)) > limit+1 {
		b = b[:limit+1]
	}
	return slices.Clone(b), nil
}

func (f *fakeBucket) Put(_ context.Context, key string, data []byte) error {
	if err := f.hook("put", key); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts++
	f.objs[key] = fakeObject{slices.Clone(data), f.now()}
	return nil
}

func (f *fakeBucket) Stat(_ context.Context, key string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.objs[key]
	if !ok {
		return 0, fs.ErrNotExist
	}
	return int64(len(o.data)), nil
}

func (f *fakeBucket) List(_ context.Context, prefix string, recursive bool, fn func(objstore.Object) error) error {
	if err := f.hook("list", prefix); err != nil {
		return err
	}
	f.mu.Lock()
	var objs []objstore.Object
	for k, o := range f.objs {
		if strings.HasPrefix(k, prefix) && (recursive || !strings.Contains(k[len(prefix):], "/")) {
			objs = append(objs, objstore.Object{Key: k, Size: int64(len(o.data)), Modified: o.mod})
		}
	}
	f.mu.Unlock()
	slices.SortFunc(objs, func(a, b objstore.Object) int { return strings.Compare(a.Key, b.Key) })
	for _, o := range objs {
		if err := fn(o); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeBucket) Remove(_ context.Context, key string) error {
	if err := f.hook("remove", key); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.objs, key)
	f.removed = append(f.removed, key)
	return nil
}

func (f *fakeBucket) keys(prefix string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ks []string
	for k := range f.objs {
		if strings.HasPrefix(k, prefix) {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

// openFake opens (creating) the store s3://bucket/prefix in f as host.
func openFake(t testing.TB, f *fakeBucket, prefix, host string) *Store {
	t.Helper()
	be := newS3BackendWith(f, objstore.URL{Bucket: "bucket", Key: prefix})
	be.host = host
	be.now = f.now
	s := &Store{be: be, Host: host}
	if err := s.open(); errors.Is(err, ErrNoStore) {
		if err := s.create(); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	return s
}

func stageJob(t testing.TB, rng *rand.Rand, mem []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := writeStaging(dir, mem, int(rng.Int32())); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestS3Layout: an S3 store keeps the names of a directory store as keys
// under its prefix, and a snapshot round-trips through it.
func TestS3Layout(t *testing.T) {
	ctx := context.Background()
	f := newFakeBucket()
	s := openFake(t, f, "fleet/", "host-a")
	rng := rand.New(rand.NewPCG(1, 2))
	mem := makeMemory(rng, 2<<20)
	staging := stageJob(t, rng, mem)
	snap, err := s.Add(ctx, staging, testManifest("/lab"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if snap.Host != "host-a" {
		t.Errorf("host %q, want host-a", snap.Host)
	}
	if got := f.keys("fleet/snapshots/"); !slices.Equal(got, []string{"fleet/snapshots/" + snap.ID + ".json"}) {
		t.Errorf("records %v", got)
	}
	if _, ok := f.objs["fleet/config"]; !ok {
		t.Error("no fleet/config")
	}
	chunks := f.keys("fleet/chunks/")
	if len(chunks) == 0 {
		t.Fatal("no chunks")
	}
	for _, k := range chunks {
		rest := strings.TrimPrefix(k, "fleet/chunks/")
		shard, name, _ := strings.Cut(rest, "/")
		if !isHash(name) || name[:2] != shard {
			t.Errorf("chunk key %s", k)
		}
	}
	if locks := f.keys("fleet/locks/"); len(locks) != 0 {
		t.Errorf("locks left after Add: %v", locks)
	}
	// Another host reads it.
	other := openFake(t, f, "fleet", "host-b")
	latest, err := other.LatestFrom("/lab", "host-a")
	if err != nil || latest.ID != snap.ID {
		t.Fatalf("LatestFrom host-a: %v, %v", latest, err)
	}
	if _, err := other.LatestFrom("/lab", "host-b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("LatestFrom host-b: %v, want ErrNotFound", err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	if _, err := other.Materialize(ctx, snap.ID, dst); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, staging, dst)
	rep, err := other.Verify(ctx)
	if err != nil || len(rep.Damaged) != 0 || rep.Chunks != len(chunks) {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	// A damaged chunk is reported, not repaired.
	f.objs[chunks[0]] = fakeObject{data: []byte("garbage")}
	rep, err = other.Verify(ctx)
	if err != nil || len(rep.Damaged) == 0 || !strings.HasPrefix(rep.Damaged[0].Reason, "decode") {
		t.Fatalf("verify of a damaged chunk: %+v, %v", rep, err)
	}
	if string(f.objs[chunks[0]].data) != "garbage" {
		t.Error("verify changed the damaged chunk")
	}
}

// TestS3OpenRejects: a prefix with other objects and no config is not a
// store; an empty one is no store; Open never creates.
func TestS3OpenRejects(t *testing.T) {
	f := newFakeBucket()
	be := newS3BackendWith(f, objstore.URL{Bucket: "bucket", Key: "p"})
	s := &Store{be: be}
	if err := s.open(); !errors.Is(err, ErrNoStore) {
		t.Errorf("empty prefix: %v, want ErrNoStore", err)
	}
	if len(f.keys("")) != 0 {
		t.Errorf("open created %v", f.keys(""))
	}
	f.objs["p/photos/cat.jpg"] = fakeObject{data: []byte("x")}
	if err := s.open(); !errors.Is(err, ErrNotStore) {
		t.Errorf("foreign prefix: %v, want ErrNotStore", err)
	}
	// A sibling prefix is not part of it.
	s2 := &Store{be: newS3BackendWith(f, objstore.URL{Bucket: "bucket", Key: "q/"})}
	if err := s2.open(); !errors.Is(err, ErrNoStore) {
		t.Errorf("other prefix: %v, want ErrNoStore", err)
	}
}

// TestS3SharedLocks: hosts snapshot at the same time (shared locks); a
// prune (exclusive) waits for none of them silently: it fails with
// ErrLocked naming the holder while any holds a lock, and runs once they
// are gone, losing no chunk a snapshot uses.
func TestS3SharedLocks(t *testing.T) {
	ctx := context.Background()
	f := newFakeBucket()
	a := openFake(t, f, "", "host-a")
	b := openFake(t, f, "", "host-b")
	unlockA, err := a.LockShared(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	unlockB, err := b.LockShared(ctx, 0)
	if err != nil {
		t.Fatalf("second shared lock: %v", err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	mem := makeMemory(rng, 1<<20)
	snapA, err := a.Add(ctx, stageJob(t, rng, mem), testManifest("/lab"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	// B's snapshot of the same memory shares A's chunks.
	snapB, err := b.Add(ctx, stageJob(t, rng, mem), testManifest("/lab"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if snapB.AddedBytes*4 > snapA.AddedBytes {
		t.Errorf("host B added %d bytes for the same memory, host A %d", snapB.AddedBytes, snapA.AddedBytes)
	}
	// A removes its snapshot and prunes while B holds its lock: refused.
	if err := a.Remove(snapA.ID); err != nil {
		t.Fatalf("remove under a shared lock: %v", err)
	}
	_, err = a.Prune(ctx, false)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "host host-b pid") {
		t.Fatalf("prune while host-b holds a lock: %v, want ErrLocked naming host-b", err)
	}
	if _, err := b.Lock(ctx, 200*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("exclusive lock while host-a holds a shared one: %v", err)
	}
	unlockB()
	// Now A's upgrade succeeds; it prunes only what no record uses.
	res, err := a.Prune(ctx, false)
	if err != nil {
		t.Fatalf("prune once alone: %v", err)
	}
	// While A holds the exclusive lock, B cannot even take a shared one.
	if _, err := b.LockShared(ctx, 0); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "exclusive") {
		t.Errorf("shared lock while host-a holds an exclusive one: %v", err)
	}
	unlockA()
	if len(f.keys("locks/")) != 0 {
		t.Errorf("locks left: %v", f.keys("locks/"))
	}
	rep, err := b.Verify(ctx)
	if err != nil || len(rep.Damaged) != 0 || rep.Snapshots != 1 {
		t.Fatalf("verify after prune: %+v, %v (pruned %+v)", rep, err, res)
	}
	if _, err := b.Materialize(ctx, snapB.ID, filepath.Join(t.TempDir(), "x")); err != nil {
		t.Fatalf("B's snapshot after A's prune: %v", err)
	}
}

// TestS3LockExpiry: a lock whose holder stopped refreshing it is ignored
// once expired, and removed by the next writer; a holder that cannot
// refresh its lock stops before writing its record.
func TestS3LockExpiry(t *testing.T) {
	ctx := context.Background()
	f := newFakeBucket()
	var mu sync.Mutex
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	// A dead host's exclusive lock, as it left it.
	f.objs["locks/0000000000000001.json"] = fakeObject{data: fmt.Appendf(nil,
		`{"host":"dead","pid":1,"exclusive":true,"time":%q,"expires":%q}`+"\n",
		now.Format(time.RFC3339), now.Add(lockTTL).Format(time.RFC3339)), mod: now}
	s := openFake(t, f, "", "host-a")
	_, err := s.LockShared(ctx, 0)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "host dead pid 1 (exclusive") {
		t.Fatalf("lock while a live exclusive lock is there: %v", err)
	}
	advance(lockTTL + time.Second)
	unlock, err := s.LockShared(ctx, 0)
	if err != nil {
		t.Fatalf("lock after the other expired: %v", err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	if _, err := s.Add(ctx, stageJob(t, rng, makeMemory(rng, 64<<10)), testManifest("/lab"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.objs["locks/0000000000000001.json"]; ok {
		t.Error("the expired lock is still there after Add")
	}
	unlock()

	// A lock object that does not decode counts as exclusive until it is
	// lockTTL old by its modification time.
	f.objs["locks/0000000000000002.json"] = fakeObject{data: []byte("{"), mod: now}
	if _, err := s.LockShared(ctx, 0); !errors.Is(err, ErrLocked) {
		t.Fatalf("lock next to an unreadable lock object: %v", err)
	}
	advance(lockTTL + time.Second)
	unlock, err = s.LockShared(ctx, 0)
	if err != nil {
		t.Fatalf("lock after the unreadable one aged: %v", err)
	}
	unlock()

	// A holder whose refreshes fail: past lockTTL-lockRefresh its Add
	// refuses to write the record.
	unlock, err = s.LockShared(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	f.fail = func(op, key string) error {
		if op == "put" && strings.HasPrefix(key, "locks/") {
			return errors.New("503 SlowDown")
		}
		return nil
	}
	held := s.held[0].(*s3Lock)
	advance(lockTTL - lockRefresh + time.Second)
	held.write(ctx) // the refresh the ticker would do, failing
	before := f.keys("snapshots/")
	_, err = s.Add(ctx, stageJob(t, rng, makeMemory(rng, 64<<10)), testManifest("/lab"), time.Time{})
	if !errors.Is(err, ErrLockLost) {
		t.Fatalf("Add with a lost lock: %v, want ErrLockLost", err)
	}
	if got := f.keys("snapshots/"); !slices.Equal(got, before) {
		t.Errorf("Add with a lost lock wrote a record: %v", got)
	}
	f.fail = nil
}

// TestS3Errors: the bucket's errors reach the caller wrapped, so that cr
// can tell them apart; a failing chunk read in Materialize leaves nothing.
func TestS3Errors(t *testing.T) {
	ctx := context.Background()
	f := newFakeBucket()
	s := openFake(t, f, "", "h")
	rng := rand.New(rand.NewPCG(7, 8))
	staging := stageJob(t, rng, makeMemory(rng, 1<<20))
	for _, want := range []error{objstore.ErrAuth, objstore.ErrUnreachable, objstore.ErrNoBucket} {
		f.fail = func(op, key string) error {
			if op == "put" && strings.HasPrefix(key, "chunks/") {
				return fmt.Errorf("put %s: %w", key, want)
			}
			return nil
		}
		// a fresh Store: the chunk listing is per Add
		s2 := openFake(t, f, "", "h")
		if _, err := s2.Add(ctx, staging, testManifest("/lab"), time.Time{}); !errors.Is(err, want) {
			t.Errorf("Add with puts failing with %v: %v", want, err)
		}
		if recs := f.keys("snapshots/"); len(recs) != 0 {
			t.Errorf("a failed Add left records %v", recs)
		}
		if locks := f.keys("locks/"); len(locks) != 0 {
			t.Errorf("a failed Add left locks %v", locks)
		}
	}
	f.fail = nil
	snap, err := s.Add(ctx, staging, testManifest("/lab"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	f.fail = func(op, key string) error {
		if op == "get" && strings.HasPrefix(key, "chunks/") {
			return fmt.Errorf("get %s: %w", key, objstore.ErrUnreachable)
		}
		return nil
	}
	dst := filepath.Join(t.TempDir(), "out")
	if _, err := s.Materialize(ctx, snap.ID, dst); !errors.Is(err, objstore.ErrUnreachable) || errors.Is(err, ErrDamaged) {
		t.Errorf("Materialize with gets failing: %v, want ErrUnreachable and not damage", err)
	}
	if _, err := filepath.Glob(dst); err != nil {
		t.Fatal(err)
	}
	if ents, _ := filepath.Glob(filepath.Join(dst, "*")); len(ents) != 0 {
		t.Errorf("a failed Materialize left %v", ents)
	}
	// Verify: an unreachable bucket is an error of the check, not damage.
	if _, err := s.Verify(ctx); !errors.Is(err, objstore.ErrUnreachable) {
		t.Errorf("Verify with gets failing: %v", err)
	}
	f.fail = nil
}

// TestVerifySubset: a subset reads that share of the chunks; N/T over
// every N reads each chunk exactly once.
func TestVerifySubset(t *testing.T) {
	ctx := context.Background()
	f := newFakeBucket()
	s := openFake(t, f, "", "h")
	rng := rand.New(rand.NewPCG(9, 10))
	if _, err := s.Add(ctx, stageJob(t, rng, makeMemory(rng, 4<<20)), testManifest("/lab"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	all, err := s.Verify(ctx)
	if err != nil || all.Chunks < 40 || all.Chunks != all.TotalChunks {
		t.Fatalf("verify all: %+v, %v", all, err)
	}
	sub, err := ParseSubset("25%")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.VerifySubset(ctx, sub)
	if err != nil || rep.Chunks != (all.Chunks+3)/4 || rep.TotalChunks != all.Chunks || len(rep.Damaged) != 0 {
		t.Fatalf("verify 25%%: %+v, %v (of %d)", rep, err, all.Chunks)
	}
	sum := 0
	for n := 1; n <= 3; n++ {
		rep, err := s.VerifySubset(ctx, Subset{N: n, T: 3})
		if err != nil {
			t.Fatal(err)
		}
		sum += rep.Chunks
	}
	if sum != all.Chunks {
		t.Errorf("1/3+2/3+3/3 read %d chunks, want %d", sum, all.Chunks)
	}
	for in, want := range map[string]string{"10%": "10%", "0.5": "50%", "2/5": "2/5", "100%": "100%"} {
		got, err := ParseSubset(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseSubset(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"0", "0%", "101%", "1.5", "0/3", "4/3", "x", "", "-1"} {
		if _, err := ParseSubset(in); err == nil {
			t.Errorf("ParseSubset(%q) accepted", in)
		}
	}
}

// TestS3AddAfterPrune: a Store whose Add listed chunks that a prune then
// removed uploads them again in its next Add (it does not trust an old
// listing of the bucket).
func TestS3AddAfterPrune(t *testing.T) {
	ctx := context.Background()
	f := newFakeBucket()
	other := openFake(t, f, "", "h")
	s := openFake(t, f, "", "h")
	rng := rand.New(rand.NewPCG(13, 14))
	staging := stageJob(t, rng, makeMemory(rng, 256<<10))
	// other's chunks are in the bucket when s lists it.
	for i, st := range []*Store{other, s} {
		snap, err := st.Add(ctx, staging, testManifest("/lab"), time.Now().Add(time.Duration(i-2)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Remove(snap.ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Prune(ctx, false); err != nil {
		t.Fatal(err)
	}
	if n := len(f.keys("chunks/")); n != 0 {
		t.Fatalf("%d chunks after prune", n)
	}
	second, err := s.Add(ctx, staging, testManifest("/lab"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Materialize(ctx, second.ID, filepath.Join(t.TempDir(), "x")); err != nil {
		t.Fatalf("the snapshot after the prune: %v", err)
	}
}
