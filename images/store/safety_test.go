package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helper starts this test binary in a helper mode against the store at dir.
// The child is killed and reaped when the test ends.
func helper(t *testing.T, mode, dir string, env ...string) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + mode, "CR_STORE_DIR=" + dir}, env...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, stdin, bufio.NewReader(stdout)
}

func TestLockInProcess(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	other, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	_, err = other.Lock(ctx, 300*time.Millisecond)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Lock: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Errorf("second Lock gave up after %v, want the 300ms wait", d)
	}
	if !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("ErrLocked does not name the holder: %v", err)
	}

	// Mutations through another Store do not wait for the holder.
	staging := t.TempDir()
	writeTree(t, staging, map[string]string{"f": "data", "checkpoint/": ""})
	if _, err := other.Add(ctx, staging, testManifest("/a"), time.Time{}); !errors.Is(err, ErrLocked) {
		t.Errorf("Add while another holds the lock: %v, want ErrLocked", err)
	}
	if _, err := other.Prune(ctx, false); !errors.Is(err, ErrLocked) {
		t.Errorf("Prune while another holds the lock: %v, want ErrLocked", err)
	}
	// The holder's own mutations run under its lock.
	snap, err := s.Add(ctx, staging, testManifest("/a"), time.Time{})
	if err != nil {
		t.Fatalf("Add under the Store's own lock: %v", err)
	}
	if err := other.Remove(snap.ID); !errors.Is(err, ErrLocked) {
		t.Errorf("Remove while another holds the lock: %v, want ErrLocked", err)
	}

	// A waiting Lock ends with its context.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := other.Lock(cctx, time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock with an expiring context: %v", err)
	}

	// A waiting Lock gets the lock when it is released within the wait.
	time.AfterFunc(200*time.Millisecond, unlock)
	unlock2, err := other.Lock(ctx, 10*time.Second)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	unlock()  // a second call is a no-op
	unlock2() // released: the next Lock succeeds at once
	unlock3, err := s.Lock(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	unlock3()
}

func TestLockTwoProcesses(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	cmd, stdin, out := helper(t, "lock", s.Dir())
	if line, err := out.ReadString('\n'); line != "locked\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}
	_, err := s.Lock(ctx, 200*time.Millisecond)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Lock while another process holds it: %v, want ErrLocked", err)
	}
	if want := fmt.Sprintf("pid %d", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Errorf("ErrLocked %q does not name %s", err, want)
	}
	// The other process releases while we wait.
	time.AfterFunc(200*time.Millisecond, func() { stdin.Close() })
	unlock, err := s.Lock(ctx, 10*time.Second)
	if err != nil {
		t.Fatalf("Lock after the other process released it: %v", err)
	}
	unlock()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}

	// A holder killed by SIGKILL leaves the store unlocked.
	cmd, _, out = helper(t, "lock", s.Dir())
	if line, err := out.ReadString('\n'); line != "locked\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	unlock, err = s.Lock(ctx, 5*time.Second)
	if err != nil {
		t.Fatalf("Lock after the holder was killed: %v", err)
	}
	unlock()
}

// checkConsistent is what a crash must leave: Verify finds nothing, and
// every listed snapshot materializes (except those in done, which were
// materialized before; the new ones are added to done).
func checkConsistent(t *testing.T, dir string, done ...map[string]bool) []*Snapshot {
	t.Helper()
	ctx := context.Background()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) > 0 {
		t.Fatalf("damage after a crash: %v", rep.Damaged)
	}
	snaps, err := s.List("")
	if err != nil {
		t.Fatal(err)
	}
	if rep.Snapshots != len(snaps) {
		t.Errorf("Verify checked %d snapshots, List shows %d", rep.Snapshots, len(snaps))
	}
	for _, snap := range snaps {
		if len(done) > 0 {
			if done[0][snap.ID] {
				continue
			}
			done[0][snap.ID] = true
		}
		dst := filepath.Join(t.TempDir(), "out")
		if _, err := s.Materialize(ctx, snap.ID, dst); err != nil {
			t.Fatalf("materialize %s after a crash: %v", snap.ID, err)
		}
		os.RemoveAll(dst)
	}
	return snaps
}

// TestCrashAtFailpoints kills a process running Add at each step of the
// write protocol and checks what a later run finds.
func TestCrashAtFailpoints(t *testing.T) {
	for _, tc := range []struct {
		point   string
		visible bool // the crashed snapshot is listed afterwards
	}{
		{"chunks-written", false},
		{"chunks-half-renamed", false},
		{"chunks-renamed", false},
		{"record-written", false},
		{"record-renamed", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			ctx := context.Background()
			s := openStore(t)
			rng := rand.New(rand.NewPCG(8, 9))
			mem := makeMemory(rng, 4<<20)
			staging := filepath.Join(t.TempDir(), "staging")
			if err := writeStaging(staging, mem, 0); err != nil {
				t.Fatal(err)
			}
			before, err := s.Add(ctx, staging, testManifest("/crash"), time.Unix(1, 0))
			if err != nil {
				t.Fatal(err)
			}
			changeMemory(rng, mem, 0.3, 3)
			if err := writeStaging(staging, mem, 1); err != nil {
				t.Fatal(err)
			}

			cmd, _, _ := helper(t, "add", s.Dir(), "CR_STORE_STAGING="+staging, "CR_STORE_CRASH_AT="+tc.point)
			err = cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper did not die at %s: %v", tc.point, err)
			}

			snaps := checkConsistent(t, s.Dir())
			want := 1
			if tc.visible {
				want = 2
			}
			if len(snaps) != want || snaps[0].ID != before.ID {
				t.Fatalf("after a crash at %s: %d snapshots, want %d", tc.point, len(snaps), want)
			}
			if tc.visible {
				dst := t.TempDir()
				if _, err := s.Materialize(ctx, snaps[1].ID, dst); err != nil {
					t.Fatal(err)
				}
				compareTrees(t, staging, dst)
			}

			// Prune removes what the crash left and nothing else.
			res, err := s.Prune(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.visible && res.Chunks+res.TempFiles == 0 {
				t.Errorf("crash at %s left no garbage for Prune: %+v", tc.point, res)
			}
			if tc.visible && res.Chunks != 0 {
				t.Errorf("prune removed %d chunks of a complete snapshot", res.Chunks)
			}
			checkConsistent(t, s.Dir())
			if ents, _ := os.ReadDir(s.path(tmpDir)); len(ents) != 0 {
				t.Errorf("%d files left in tmp after Prune", len(ents))
			}
			// The store keeps working.
			if _, err := s.Add(ctx, staging, testManifest("/crash"), time.Unix(3, 0)); err != nil {
				t.Fatal(err)
			}
			checkConsistent(t, s.Dir())
		})
	}
}

// TestCrashRandomKill kills a process that adds snapshots in a loop at
// random moments; every time, the store must be consistent.
func TestCrashRandomKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills several writers")
	}
	s := openStore(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	total := 0
	done := make(map[string]bool)
	for i := range 5 {
		staging := filepath.Join(t.TempDir(), "staging")
		cmd, _, out := helper(t, "add-loop", s.Dir(), "CR_STORE_STAGING="+staging)
		// Kill at a random moment of the loop, after its first Add.
		if line, err := out.ReadString('\n'); line != "added\n" {
			t.Fatalf("run %d: helper: %q, %v", i, line, err)
		}
		delay := time.Duration(rng.IntN(500)) * time.Millisecond
		time.Sleep(delay)
		cmd.Process.Kill()
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("run %d: helper ended before the kill: %v", i, err)
		}
		snaps := checkConsistent(t, s.Dir(), done)
		t.Logf("run %d: killed %v after its first snapshot, %d snapshots", i, delay, len(snaps))
		if len(snaps) <= total {
			t.Errorf("run %d: the snapshot it reported is not listed", i)
		}
		total = len(snaps)
	}
	if _, err := s.Prune(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	// Verify finds every chunk of every snapshot after Prune.
	checkConsistent(t, s.Dir(), done)
}

func TestDamage(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	rng := rand.New(rand.NewPCG(10, 11))
	shared := string(makeMemory(rng, 1<<20))
	stagA, stagB := t.TempDir(), t.TempDir()
	writeTree(t, stagA, map[string]string{"shared.img": shared, "checkpoint/pages-1.img": string(makeMemory(rng, 1<<20))})
	writeTree(t, stagB, map[string]string{"shared.img": shared, "checkpoint/pages-1.img": string(makeMemory(rng, 1<<20))})
	a, err := s.Add(ctx, stagA, testManifest("/a"), time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Add(ctx, stagB, testManifest("/b"), time.Unix(2, 0))
	if err != nil {
		t.Fatal(err)
	}
	// A chunk only a has: the second chunk of its pages.
	var pagesA FileRef
	for _, f := range a.Files {
		if f.Name == "checkpoint/pages-1.img" {
			pagesA = f
		}
	}
	victim := pagesA.Chunks[1]
	if snapshotChunks(b)[victim] {
		t.Fatal("random pages share a chunk")
	}
	flipByte(t, s.chunkPath(victim))

	rep, err := s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Snapshots != 2 || rep.Chunks != len(mergeSets(snapshotChunks(a), snapshotChunks(b))) {
		t.Errorf("Verify checked %d snapshots and %d chunks", rep.Snapshots, rep.Chunks)
	}
	if len(rep.Damaged) != 1 {
		t.Fatalf("damage %v, want one entry", rep.Damaged)
	}
	d := rep.Damaged[0]
	if d.SnapshotID != a.ID || d.File != "checkpoint/pages-1.img" || d.Chunk != victim || d.Reason == "" {
		t.Errorf("damage %+v, want snapshot %s file checkpoint/pages-1.img chunk %s", d, a.ID, victim)
	}
	if ids := rep.DamagedSnapshots(); len(ids) != 1 || ids[0] != a.ID {
		t.Errorf("DamagedSnapshots = %v", ids)
	}

	dst := filepath.Join(t.TempDir(), "a")
	_, err = s.Materialize(ctx, a.ID, dst)
	var dmg Damage
	if !errors.Is(err, ErrDamaged) || !errors.As(err, &dmg) || dmg.Chunk != victim || dmg.File != "checkpoint/pages-1.img" {
		t.Fatalf("Materialize of the damaged snapshot: %v", err)
	}
	if !strings.Contains(err.Error(), victim) || !strings.Contains(err.Error(), "checkpoint/pages-1.img") {
		t.Errorf("error does not name the chunk and file: %v", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed Materialize left %s behind", dst)
	}
	dst = t.TempDir()
	if _, err := s.Materialize(ctx, b.ID, dst); err != nil {
		t.Fatalf("Materialize of the undamaged snapshot: %v", err)
	}
	compareTrees(t, stagB, dst)

	// A missing chunk is damage too, and a shared one damages both.
	var sharedChunk string
	for _, f := range a.Files {
		if f.Name == "shared.img" {
			sharedChunk = f.Chunks[0]
		}
	}
	if err := os.Remove(s.chunkPath(sharedChunk)); err != nil {
		t.Fatal(err)
	}
	rep, err = s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for _, d := range rep.Damaged {
		if d.Chunk == sharedChunk && d.Reason == "missing" && d.File == "shared.img" {
			missing = append(missing, d.SnapshotID)
		}
	}
	if len(rep.Damaged) != 3 || len(missing) != 2 {
		t.Errorf("after removing a shared chunk: %v", rep.Damaged)
	}

	// A damaged record: Verify names it, List refuses, Prune refuses,
	// Remove deletes it.
	flipByte(t, s.recordPath(b.ID))
	rep, err = s.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range rep.Damaged {
		if d.SnapshotID == b.ID && d.File == "" && strings.HasPrefix(d.Reason, "record") {
			found = true
		}
	}
	if !found {
		t.Errorf("damaged record not reported: %v", rep.Damaged)
	}
	if _, err := s.List(""); !errors.Is(err, ErrDamaged) {
		t.Errorf("List with a damaged record: %v", err)
	}
	if _, err := s.Prune(ctx, false); !errors.Is(err, ErrDamaged) {
		t.Errorf("Prune with a damaged record: %v", err)
	}
	if err := s.Remove(b.ID); err != nil {
		t.Fatal(err)
	}
	if snaps, err := s.List(""); err != nil || len(snaps) != 1 || snaps[0].ID != a.ID {
		t.Errorf("List after removing the damaged record: %v, %v", snaps, err)
	}
}

func flipByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func mergeSets(sets ...map[string]bool) map[string]bool {
	out := make(map[string]bool)
	for _, s := range sets {
		for k := range s {
			out[k] = true
		}
	}
	return out
}

func TestPrune(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	rng := rand.New(rand.NewPCG(12, 13))
	mem := makeMemory(rng, 2<<20)
	staging := filepath.Join(t.TempDir(), "staging")
	var snaps []*Snapshot
	for i := range 3 {
		changeMemory(rng, mem, 0.25, 1)
		if err := writeStaging(staging, mem, i); err != nil {
			t.Fatal(err)
		}
		snap, err := s.Add(ctx, staging, testManifest("/p"), time.Unix(int64(i), 0))
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, snap)
	}
	keep := mergeSets(snapshotChunks(snaps[1]), snapshotChunks(snaps[2]))
	gone := 0
	for c := range snapshotChunks(snaps[0]) {
		if !keep[c] {
			gone++
		}
	}
	if gone == 0 {
		t.Fatal("the first snapshot has no chunk of its own")
	}

	// Nothing is unreferenced yet.
	if res, err := s.Prune(ctx, false); err != nil || res.Chunks != 0 || res.KeptChunks != len(keep)+gone {
		t.Fatalf("Prune of a clean store = %+v, %v", res, err)
	}
	if err := s.Remove(snaps[0].ID[:8]); err != nil {
		t.Fatal(err)
	}
	before := chunkFiles(t, s)
	res, err := s.Prune(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Chunks != gone || res.Bytes <= 0 || res.KeptChunks != len(keep) {
		t.Errorf("dry run: %+v, want %d chunks to go, %d kept", res, gone, len(keep))
	}
	if after := chunkFiles(t, s); len(after) != len(before) {
		t.Errorf("dry run removed %d chunks", len(before)-len(after))
	}
	res, err = s.Prune(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Chunks != gone {
		t.Errorf("Prune removed %d chunks, want %d", res.Chunks, gone)
	}
	after := chunkFiles(t, s)
	if len(after) != len(keep) {
		t.Errorf("%d chunks left, want %d", len(after), len(keep))
	}
	for _, c := range after {
		if !keep[c] {
			t.Errorf("Prune left unreferenced chunk %s", c)
		}
	}
	checkConsistent(t, s.Dir())
	if _, err := s.Get(snaps[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a removed snapshot: %v", err)
	}
	if err := s.Remove("0123456789abcdef"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Remove of an unknown id: %v", err)
	}
}

func TestForget(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	staging := t.TempDir()
	var ids []string
	for i := range 4 {
		writeTree(t, staging, map[string]string{"f": strconv.Itoa(i), "checkpoint/": ""})
		snap, err := s.Add(ctx, staging, testManifest("/a"), time.Unix(int64(1000*i), 0))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, snap.ID)
	}
	b, err := s.Add(ctx, staging, testManifest("/b"), time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}

	ds, err := s.Forget(ctx, "", Policy{Last: 2}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 5 {
		t.Fatalf("%d decisions", len(ds))
	}
	if all, _ := s.List(""); len(all) != 5 {
		t.Fatalf("dry run removed snapshots: %d left", len(all))
	}
	if _, err := s.Forget(ctx, "", Policy{Last: 2}, false); err != nil {
		t.Fatal(err)
	}
	all, err := s.List("")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, snap := range all {
		got = append(got, snap.ID)
	}
	want := []string{b.ID, ids[2], ids[3]} // by time: b at 0, then 2000, 3000
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after Forget: %v, want %v", got, want)
	}
	if _, err := s.Forget(ctx, "", Policy{Last: -1}, false); err == nil {
		t.Error("Forget with a negative count succeeded")
	}
}
