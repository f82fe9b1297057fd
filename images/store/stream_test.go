package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeInPieces writes data to w in pieces of random sizes (1 byte to
// 3 MaxChunk), as a pipe delivers them.
func writeInPieces(t testing.TB, rng *rand.Rand, w *FileWriter, data []byte) {
	t.Helper()
	for len(data) > 0 {
		n := min(len(data), 1+rng.IntN(3*MaxChunk))
		if rng.IntN(4) == 0 {
			n = min(len(data), 1+rng.IntN(100))
		}
		k, err := w.Write(data[:n])
		if err != nil {
			t.Fatal(err)
		}
		if k != n {
			t.Fatalf("Write took %d of %d bytes", k, n)
		}
		data = data[n:]
	}
}

// A file written in pieces of any size is cut into the chunks of the
// whole file (docs/store-format.md §2): streamed content deduplicates
// against what was stored from a staging dir.
func TestFileWriterCutsAsWhole(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	rng := rand.New(rand.NewPCG(21, 22))
	for _, size := range []int{0, 1, MinChunk, MaxChunk - 1, MaxChunk, MaxChunk + 1, 3<<20 + 77} {
		data := makeMemory(rng, size)
		a, err := s.StartAdd(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w, err := a.Create("checkpoint/pages-1.img", 0o644)
		if err != nil {
			t.Fatal(err)
		}
		writeInPieces(t, rng, w, data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		staging := t.TempDir()
		writeTree(t, staging, map[string]string{"checkpoint/": ""})
		snap, err := a.Finish(staging, testManifest("/cut"), time.Unix(int64(size), 0))
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		off := 0
		for _, n := range chunkSizes(t, data) {
			sum := sha256.Sum256(data[off : off+n])
			want = append(want, hex.EncodeToString(sum[:]))
			off += n
		}
		f := snap.Files[1]
		if f.Name != "checkpoint/pages-1.img" || f.Size != int64(size) || !slices.Equal(f.Chunks, want) {
			t.Errorf("%d bytes streamed: %s, %d bytes, %d chunks; want %d chunks of the whole file", size, f.Name, f.Size, len(f.Chunks), len(want))
		}
		sum := sha256.Sum256(data)
		if f.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("%d bytes streamed: sha256 %s", size, f.SHA256)
		}
	}
}

// stageWithSecond is writeStaging plus a second container's pages image.
func stageWithSecond(t testing.TB, mem []byte, gen int) string {
	t.Helper()
	staging := t.TempDir()
	if err := writeStaging(staging, mem, gen); err != nil {
		t.Fatal(err)
	}
	writeTree(t, staging, map[string]string{"containers/1/checkpoint/pages-1.img": string(mem[len(mem)/3:])})
	if err := os.Chmod(filepath.Join(staging, "containers/1/checkpoint/pages-1.img"), 0o600); err != nil {
		t.Fatal(err)
	}
	return staging
}

// A snapshot whose pages were streamed in is the snapshot of the same
// staging dir stored whole: the same record (files, order, chunks,
// sizes, hashes, modes), in a directory and in S3; a second one of an
// unchanged job adds no chunk; both restore the staging dir exactly.
func TestStreamedAddIsTheStagedSnapshot(t *testing.T) {
	for _, kind := range []string{"dir", "s3"} {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			var s *Store
			if kind == "dir" {
				s = openStore(t)
			} else {
				s = openFake(t, newFakeBucket(), "fleet", "h")
			}
			rng := rand.New(rand.NewPCG(31, 32))
			mem := makeMemory(rng, 3<<20)
			staging := stageWithSecond(t, mem, 1)
			at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
			whole, err := s.Add(ctx, staging, testManifest("/job"), at)
			if err != nil {
				t.Fatal(err)
			}

			// The same content in a store of its own, streamed.
			var fresh *Store
			if kind == "dir" {
				fresh = openStore(t)
			} else {
				fresh = openFake(t, newFakeBucket(), "fleet", "h")
			}
			streamed := streamJob(t, fresh, rng, mem, 1, at)
			if streamed.ID != whole.ID || !reflect.DeepEqual(streamed.Files, whole.Files) || streamed.AddedBytes != whole.AddedBytes {
				t.Errorf("streamed snapshot %s (%d added) differs from the staged one %s (%d added):\n%+v\n%+v",
					streamed.ID, streamed.AddedBytes, whole.ID, whole.AddedBytes, streamed.Files, whole.Files)
			}

			// Into the store that has the staged one: nothing new.
			again := streamJob(t, s, rng, mem, 1, at.Add(time.Minute))
			if again.AddedBytes != 0 {
				t.Errorf("a streamed snapshot of unchanged content added %d bytes", again.AddedBytes)
			}
			// A changed small image adds its chunk, the pages nothing.
			changed := streamJob(t, s, rng, mem, 2, at.Add(2*time.Minute))
			if changed.AddedBytes == 0 || changed.AddedBytes > 1024 {
				t.Errorf("a snapshot whose small images changed added %d bytes", changed.AddedBytes)
			}
			for _, snap := range []*Snapshot{whole, again} {
				dst := filepath.Join(t.TempDir(), "out")
				if _, err := s.Materialize(ctx, snap.ID, dst); err != nil {
					t.Fatal(err)
				}
				compareTrees(t, staging, dst)
			}
			if rep, err := s.Verify(ctx); err != nil || len(rep.Damaged) != 0 {
				t.Errorf("Verify: %+v, %v", rep, err)
			}
		})
	}
}

// streamJob adds a snapshot of the staging dir that stageWithSecond lays
// out for mem, with both pages images streamed in, at once and in pieces,
// while the rest is staged: what a streamed dump gives the store.
func streamJob(t testing.TB, s *Store, rng *rand.Rand, mem []byte, gen int, at time.Time) *Snapshot {
	t.Helper()
	staging := stageWithSecond(t, mem, gen)
	a, err := s.StartAdd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, name := range []string{"containers/1/checkpoint/pages-1.img", "checkpoint/pages-1.img"} {
		p := filepath.Join(staging, filepath.FromSlash(name))
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		w, err := a.Create(name, uint32(fi.Mode().Perm()))
		if err != nil {
			t.Fatal(err)
		}
		prng := rand.New(rand.NewPCG(rng.Uint64(), 2))
		wg.Go(func() {
			writeInPieces(t, prng, w, data)
			if err := w.Close(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	snap, err := a.Finish(staging, testManifest("/job"), at)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// errPut is the failure of the store's chunk writes in the tests below.
var errPut = errors.New("disk on fire")

// A snapshot whose streamed file fails midway (the store cannot take a
// chunk, or the dump feeding it fails and the writer is never closed)
// lists nothing; in a directory its chunks are gone from DIR/tmp and none
// reached DIR/chunks; in S3 those already put are garbage, which the
// next prune removes. The store takes the next snapshot as before.
func TestStreamedAddFailsMidway(t *testing.T) {
	for _, tc := range []struct {
		kind string
		how  string // "store": a chunk write fails; "source": the writer stops
	}{{"dir", "store"}, {"dir", "source"}, {"s3", "store"}, {"s3", "source"}} {
		t.Run(tc.kind+"-"+tc.how, func(t *testing.T) {
			ctx := context.Background()
			var s *Store
			var bucket *fakeBucket
			if tc.kind == "dir" {
				s = openStore(t)
			} else {
				bucket = newFakeBucket()
				s = openFake(t, bucket, "", "h")
			}
			rng := rand.New(rand.NewPCG(41, 42))
			mem := makeMemory(rng, 4<<20)
			staging := t.TempDir()
			if err := writeStaging(staging, mem, 1); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(staging, "checkpoint", "pages-1.img")); err != nil {
				t.Fatal(err)
			}
			a, err := s.StartAdd(ctx)
			if err != nil {
				t.Fatal(err)
			}
			w, err := a.Create("checkpoint/pages-1.img", 0o644)
			if err != nil {
				t.Fatal(err)
			}
			var werr error
			switch tc.how {
			case "store":
				puts := 0
				var mu sync.Mutex
				failAfter := func() error {
					mu.Lock()
					defer mu.Unlock()
					puts++
					if puts > 5 {
						return errPut
					}
					return nil
				}
				if bucket != nil {
					bucket.fail = func(op, key string) error {
						if op == "put" && strings.HasPrefix(key, "chunks/") {
							return failAfter()
						}
						return nil
					}
				} else {
					chunkPutHook = failAfter
				}
				// Writes fail once a worker has failed (they do not wait
				// for the whole file).
				for off := 0; off < len(mem) && werr == nil; off += 64 << 10 {
					_, werr = w.Write(mem[off:min(off+64<<10, len(mem))])
					time.Sleep(time.Millisecond)
				}
				if werr == nil {
					werr = w.Close()
				}
				if !errors.Is(werr, errPut) {
					t.Fatalf("the file's writer: %v, want the store's failure", werr)
				}
			case "source":
				if _, err := w.Write(mem[:len(mem)/2]); err != nil {
					t.Fatal(err)
				}
			}
			_, ferr := a.Finish(staging, testManifest("/fail"), time.Now())
			if ferr == nil {
				t.Fatal("Finish of a snapshot whose file failed succeeded")
			}
			if tc.how == "store" && !errors.Is(ferr, errPut) {
				t.Errorf("Finish: %v, want the store's failure", ferr)
			}
			if tc.how == "source" && !strings.Contains(ferr.Error(), "checkpoint/pages-1.img was not written in full") {
				t.Errorf("Finish: %v, want the unfinished file named", ferr)
			}
			if list, err := s.List(""); err != nil || len(list) != 0 {
				t.Errorf("after a failed snapshot: %d listed, %v", len(list), err)
			}
			if bucket != nil {
				bucket.fail = nil
				if tc.how == "store" && len(bucket.keys("chunks/")) == 0 {
					t.Errorf("no chunk was put before the failure: the test did not fail midway")
				}
			} else {
				chunkPutHook = nil
				if left, _ := os.ReadDir(s.path(tmpDir)); len(left) != 0 {
					t.Errorf("%d files left in tmp", len(left))
				}
				if n := len(chunkFiles(t, s)); n != 0 {
					t.Errorf("%d chunks in chunks/ after a failed snapshot", n)
				}
			}
			// Garbage for prune; the lock was given back.
			if _, err := s.Prune(ctx, false); err != nil {
				t.Fatal(err)
			}
			if bucket != nil {
				if n := len(bucket.keys("chunks/")); n != 0 {
					t.Errorf("%d chunks left after prune", n)
				}
			}
			snap := streamJob(t, s, rng, mem, 2, time.Now())
			if list, err := s.List(""); err != nil || len(list) != 1 || list[0].ID != snap.ID {
				t.Errorf("the next snapshot: %v, %v", list, err)
			}
		})
	}
}

// Abort drops a snapshot whose files are still being written: their
// writers fail, nothing is listed, the lock is given back.
func TestAbortWhileWriting(t *testing.T) {
	s := openStore(t)
	a, err := s.StartAdd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	w, err := a.Create("checkpoint/pages-1.img", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(51, 52))
	mem := makeMemory(rng, 2<<20)
	done := make(chan error, 1)
	go func() {
		var err error
		for err == nil {
			_, err = w.Write(mem)
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	a.Abort()
	if err := <-done; !errors.Is(err, errAborted) {
		t.Errorf("a write after Abort: %v", err)
	}
	a.Abort() // again: nothing more
	if _, err := a.Create("checkpoint/pages-2.img", 0o644); err == nil {
		t.Errorf("Create after Abort succeeded")
	}
	if list, _ := s.List(""); len(list) != 0 {
		t.Errorf("%d snapshots after Abort", len(list))
	}
	if left, _ := os.ReadDir(s.path(tmpDir)); len(left) != 0 {
		t.Errorf("%d files left in tmp", len(left))
	}
	unlock, err := s.Lock(context.Background(), 0)
	if err != nil {
		t.Fatalf("the lock after Abort: %v", err)
	}
	unlock()
}

// Names and modes a record may not hold are refused before any content.
func TestCreateRefusesBadFiles(t *testing.T) {
	s := openStore(t)
	a, err := s.StartAdd(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Abort()
	for _, name := range []string{"", "/abs", "a/../b", "a//b", "."} {
		if _, err := a.Create(name, 0o644); err == nil {
			t.Errorf("Create(%q) succeeded", name)
		}
	}
	if _, err := a.Create("checkpoint/x.img", 0o4755); err == nil {
		t.Errorf("Create with a setuid mode succeeded")
	}
	x, err := a.Create("checkpoint/x.img", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	x.Close()
	if _, err := a.Create("checkpoint/x.img", 0o644); err == nil {
		t.Errorf("the same file created twice")
	}
	// A streamed file that the staging dir also holds is refused.
	staging := t.TempDir()
	writeTree(t, staging, map[string]string{"checkpoint/y.img": "y"})
	w, err := a.Create("checkpoint/y.img", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := a.Finish(staging, testManifest("/x"), time.Now()); err == nil || !strings.Contains(err.Error(), "also streamed") {
		t.Errorf("Finish with a file both streamed and staged: %v", err)
	}
}

// copyStore copies the store under testdata into a fresh directory (git
// keeps no empty tmp/).
func copyStore(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "store")
	if err := exec.Command("cp", "-r", src, dst).Run(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dst, tmpDir), 0o700); err != nil {
		t.Fatal(err)
	}
	return dst
}

// testdata/store-v1 was written by cr before the pages of a snapshot were
// streamed (main at b2b1129: Add of a staging dir from writeStaging with
// makeMemory(PCG(11, 17), 320 KiB), generation 1, pages-1.img mode 0644,
// as /old at 2026-11-30T12:00:00Z). It still verifies and restores, and
// a streamed snapshot of the same content is the same record and adds
// nothing to it.
func TestStoreWrittenBeforeStreaming(t *testing.T) {
	ctx := context.Background()
	dir := copyStore(t, filepath.Join("testdata", "store-v1"))
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.List("")
	if err != nil || len(list) != 1 {
		t.Fatalf("List: %v, %v", list, err)
	}
	old := list[0]
	if rep, err := s.Verify(ctx); err != nil || len(rep.Damaged) != 0 {
		t.Fatalf("Verify: %+v, %v", rep, err)
	}
	mem := makeMemory(rand.New(rand.NewPCG(11, 17)), 320<<10)
	want := t.TempDir()
	if err := writeStaging(want, mem, 1); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(want, "checkpoint", "pages-1.img"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := filepath.Join(t.TempDir(), "out")
	if _, err := s.Materialize(ctx, old.ID, got); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, want, got)

	// The same job, its pages streamed.
	if err := os.Remove(filepath.Join(want, "checkpoint", "pages-1.img")); err != nil {
		t.Fatal(err)
	}
	a, err := s.StartAdd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w, err := a.Create("checkpoint/pages-1.img", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(mem); off += 5000 { // smaller than a chunk
		if _, err := w.Write(mem[off:min(off+5000, len(mem))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	snap, err := a.Finish(want, testManifest("/old"), old.Time)
	if err != nil {
		t.Fatal(err)
	}
	if snap.AddedBytes != 0 || !reflect.DeepEqual(snap.Files, old.Files) {
		t.Errorf("streamed snapshot of the old content added %d bytes, files equal: %v", snap.AddedBytes, reflect.DeepEqual(snap.Files, old.Files))
	}
	before := 0
	_ = filepath.WalkDir(filepath.Join("testdata", "store-v1", chunksDir), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			before++
		}
		return nil
	})
	if n := len(chunkFiles(t, s)); n != before {
		t.Errorf("%d chunks after the streamed snapshot, %d before", n, before)
	}
}
