package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

type snapEntry struct {
	ID         string    `json:"id"`
	Path       string    `json:"path"`
	Time       time.Time `json:"time"`
	AddedBytes int64     `json:"added_bytes"`
	TotalBytes int64     `json:"total_bytes"`
}

func snapshots(t *testing.T, store string) []snapEntry {
	t.Helper()
	var es []snapEntry
	out := mustCr(t, "images", "ls", "--store", store, "--json")
	if err := json.Unmarshal([]byte(out), &es); err != nil {
		t.Fatalf("cr images ls --json: %v\n%s", err, out)
	}
	return es
}

type snapReport struct {
	ID            string  `json:"id"`
	FrozenSeconds float64 `json:"frozen_seconds"`
	AddedBytes    int64   `json:"added_bytes"`
	TotalBytes    int64   `json:"total_bytes"`
	Retention     []struct {
		ID      string   `json:"id"`
		Keep    bool     `json:"keep"`
		Reasons []string `json:"reasons"`
	} `json:"retention"`
}

func snapshot(t *testing.T, args ...string) snapReport {
	t.Helper()
	var r snapReport
	out := mustCr(t, append([]string{"snapshot", "--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("cr snapshot --json: %v\n%s", err, out)
	}
	return r
}

func TestSnapshots(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	j := startJob(t, "/snap", "--mem", "64")
	j.ask(t) // its memory is filled once it answers
	// Quiet on success, for cron.
	if out := mustCr(t, "snapshot", "/snap", "--store", store); out != "" {
		t.Errorf("cr snapshot printed %q on success", out)
	}
	var reps []snapReport
	var counters [][2]int64 // the job's counter just before and after each snapshot
	for i := 0; i < 3; i++ {
		before := j.ask(t).Counter
		reps = append(reps, snapshot(t, "/snap", "--store", store))
		counters = append(counters, [2]int64{before, j.ask(t).Counter})
	}
	if ls(t)["/snap"].State != "running" {
		t.Fatalf("the job does not run on after snapshots")
	}
	first := snapshots(t, store)[0]
	for i, r := range reps {
		if r.AddedBytes*5 > first.AddedBytes {
			t.Errorf("snapshot %d added %d bytes, the first %d: no deduplication", i+2, r.AddedBytes, first.AddedBytes)
		}
	}
	if n := len(snapshots(t, store)); n != 4 {
		t.Fatalf("%d snapshots listed, want 4", n)
	}
	// Each snapshot is in the journal, with its store and id.
	var snapEvs []Event
	for _, ev := range events(t, "/snap") {
		if ev.Type == "checkpointed" {
			snapEvs = append(snapEvs, ev)
		}
	}
	if len(snapEvs) != 4 || snapEvs[3].Snapshot != reps[2].ID || snapEvs[3].Store != store {
		t.Errorf("checkpointed events of /snap: %+v, want 4, the last of snapshot %s in %s", snapEvs, reps[2].ID, store)
	}
	// Restore the second of the three: its counter is the one of that time.
	mustCr(t, "restore", "--store", store, "--as", "/snap-then", reps[1].ID)
	killAtCleanup(t, "/snap-then")
	then := (&job{path: "/snap-then", report: j.report}).ask(t)
	if then.Counter < counters[1][0] || then.Counter > counters[1][1]+100 {
		t.Errorf("restored snapshot's counter %d, want about %v", then.Counter, counters[1])
	}
	if then.MemSHA != then.MemSHAAtInit {
		t.Errorf("restored snapshot's memory differs")
	}
	// The latest of a path.
	mustCr(t, "restore", "--store", store, "--as", "/snap-latest", "/snap")
	killAtCleanup(t, "/snap-latest")
	// Retention: keep the last two; the others go, with reasons printed.
	r := snapshot(t, "/snap", "--store", store, "--keep-last", "2")
	kept := 0
	for _, d := range r.Retention {
		if d.Keep {
			kept++
			if len(d.Reasons) == 0 || !strings.Contains(d.Reasons[0], "last") {
				t.Errorf("kept %s for %v, want 'last snapshot'", d.ID, d.Reasons)
			}
		}
	}
	if es := snapshots(t, store); kept != 2 || len(es) != 2 || es[1].ID != r.ID {
		t.Errorf("after --keep-last 2: kept %d, listed %v", kept, es)
	}
	out := mustCr(t, "images", "prune", "--store", store, "--keep-last", "1", "--dry-run")
	if !strings.Contains(out, "keep") || len(snapshots(t, store)) != 2 {
		t.Errorf("prune --dry-run removed something or said nothing:\n%s", out)
	}
	mustCr(t, "images", "verify", "--store", store)
	// Export is an ordinary image.
	img := filepath.Join(t.TempDir(), "exported.cr")
	mustCr(t, "images", "export", "--store", store, r.ID, "-o", img)
	mustCr(t, "restore", "--as", "/snap-exported", img)
	killAtCleanup(t, "/snap-exported")
	if got := (&job{path: "/snap-exported", report: j.report}).ask(t); got.Pid != then.Pid {
		t.Errorf("exported snapshot restored with job pid %d, want %d", got.Pid, then.Pid)
	}
}

// A snapshot killed at any point leaves the store consistent: every listed
// snapshot verifies and restores.
func TestSnapshotCrashSafety(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	startJob(t, "/crash", "--mem", "128")
	snapshot(t, "/crash", "--store", store)
	for _, delay := range []time.Duration{30 * time.Millisecond, 120 * time.Millisecond, 300 * time.Millisecond, 600 * time.Millisecond, 1200 * time.Millisecond} {
		c := exec.Command(crBin, "snapshot", "/crash", "--store", store)
		c.Env = append(os.Environ(), env...)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = c.Process.Kill()
		_ = c.Wait()
		// CRIU, which cr does not kill, thaws the job when its dump is done.
		waitFor(t, 20*time.Second, "the job to run again", func() bool { return ls(t)["/crash"].State == "running" })
	}
	mustCr(t, "images", "verify", "--store", store)
	es := snapshots(t, store)
	if len(es) == 0 {
		t.Fatalf("no snapshot survived")
	}
	for i, e := range es {
		as := "/crash-" + string(rune('a'+i))
		mustCr(t, "restore", "--store", store, "--as", as, e.ID)
		killAtCleanup(t, as)
		mustCr(t, "kill", as)
	}
	// The store stays usable.
	snapshot(t, "/crash", "--store", store)
	mustCr(t, "images", "prune", "--store", store)
	mustCr(t, "images", "verify", "--store", store)
}

// Two snapshots at once on one store: both end well or one is refused
// with the documented status (9); nothing is corrupted.
func TestSnapshotConcurrent(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	startJob(t, "/conc", "--mem", "64")
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = cr(t, "snapshot", "/conc", "--store", store, "--lock-wait", "20s").code
		}()
	}
	wg.Wait()
	sort.Ints(codes)
	if !(codes[0] == 0 && (codes[1] == 0 || codes[1] == 9)) {
		t.Errorf("exit statuses of two concurrent snapshots: %v, want 0 and 0 (or 9)", codes)
	}
	// Two successes store two snapshots; a refusal (9) stores none.
	want := 2
	if codes[1] == 9 {
		want = 1
	}
	if n := len(snapshots(t, store)); n != want {
		t.Errorf("%d snapshots after exit statuses %v, want %d", n, codes, want)
	}
	mustCr(t, "images", "verify", "--store", store)
	// A run that cannot get the lock in time exits 9.
	lock := exec.Command("flock", filepath.Join(store, "lock"), "sleep", "3")
	if err := lock.Start(); err != nil {
		t.Fatal(err)
	}
	defer lock.Wait()
	time.Sleep(200 * time.Millisecond)
	wantFail(t, 9, "lock", "snapshot", "/conc", "--store", store, "--lock-wait", "300ms")
	if ls(t)["/conc"].State != "running" {
		t.Errorf("a refused snapshot disturbed the job")
	}
}

// A damaged chunk is found by verify, named, and the affected snapshot is
// refused at restore.
func TestSnapshotDamage(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	startJob(t, "/dmg")
	r := snapshot(t, "/dmg", "--store", store)
	var chunks []string
	_ = filepath.Walk(filepath.Join(store, "chunks"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			chunks = append(chunks, p)
		}
		return nil
	})
	if len(chunks) == 0 {
		t.Fatal("no chunks in the store")
	}
	// Damage the largest chunk (page data).
	sort.Slice(chunks, func(i, j int) bool { return size(chunks[i]) > size(chunks[j]) })
	b, _ := os.ReadFile(chunks[0])
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(chunks[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	res := cr(t, "images", "verify", "--store", store)
	if res.code != 8 || !strings.Contains(res.out+res.err, r.ID) || !strings.Contains(res.out, filepath.Base(chunks[0])[:12]) {
		t.Errorf("verify of a damaged store: want exit 8 naming snapshot %s and the chunk, got %s", r.ID, res)
	}
	wantFail(t, 8, "damage", "restore", "--store", store, "--as", "/dmg-x", r.ID)
	if _, ok := ls(t)["/dmg-x"]; ok {
		t.Errorf("a refused restore created /dmg-x")
	}
}

func size(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// A read never creates a store: a mistyped --store is "no such store" with
// the path, exit 3, and nothing appears there. cr snapshot creates one on
// first use and says so on stderr, once.
func TestStoreNotCreatedByReads(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "mistyped", "path")
	empty := t.TempDir()
	for _, dir := range []string{missing, empty} {
		for _, args := range [][]string{
			{"restore", "--store", dir, "/lab"},
			{"restore", "--store", dir, "--as", "/x", "3fa9c2"},
			{"images", "ls", "--store", dir},
			{"images", "inspect", "--store", dir, "3fa9c2"},
			{"images", "rm", "--store", dir, "3fa9c2"},
			{"images", "prune", "--store", dir, "--keep-last", "1"},
			{"images", "verify", "--store", dir},
			{"images", "export", "--store", dir, "3fa9c2", "-o", filepath.Join(t.TempDir(), "x.cr")},
		} {
			wantFail(t, 3, "Error: no such store: "+dir+"\n", args...)
		}
	}
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Errorf("reading a mistyped store created something there: %v", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Errorf("reading an empty directory as a store wrote %v", ents)
	}

	start(t, "/mkstore", "sleep", "1000")
	r := cr(t, "snapshot", "/mkstore", "--store", missing)
	if r.code != 0 || r.err != "created store "+missing+"\n" || r.out != "" {
		t.Errorf("first snapshot into a new store: want exit 0 and %q on stderr only, got %s", "created store "+missing, r)
	}
	r = cr(t, "snapshot", "/mkstore", "--store", missing)
	if r.code != 0 || r.err != "" || r.out != "" {
		t.Errorf("second snapshot: want exit 0 and silence, got %s", r)
	}
	if n := len(snapshots(t, missing)); n != 2 {
		t.Errorf("%d snapshots in the new store, want 2", n)
	}
}

// A snapshot of a 256 MiB job goes through CRIU's image streamer: while
// it runs, no uncompressed pages image appears in the staging area (the
// pages go from CRIU's pipe, through the spool, into the store's
// chunker); the job is frozen only for CRIU's dump, not while the store
// cuts and writes the chunks; a second snapshot of the unchanged job
// adds almost nothing; the first restores from the store with its
// memory and pids.
func TestSnapshotStream(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	j := startJob(t, "/snapstream", "--mem", "256")
	before := j.ask(t)
	if before.MemSHA != before.MemSHAAtInit || before.MemBytes != 256<<20 {
		t.Fatalf("job not set up: %+v", before)
	}
	staging := filepath.Join(workDir, "staging")
	w := watchStaging(staging)
	start := time.Now()
	first := snapshot(t, "/snapstream", "--store", store)
	wall := time.Since(start)
	w.end()
	if len(w.rawPages) > 0 {
		t.Errorf("uncompressed pages images appeared in staging: %v", w.rawPages)
	}
	if !w.small {
		t.Errorf("the watch never saw the small images in staging: it did not watch the dump")
	}
	if left, _ := filepath.Glob(filepath.Join(staging, "ckpt-*")); len(left) != 0 {
		t.Errorf("the snapshot left staging entries: %v", left)
	}
	// Cutting, hashing and compressing 256 MiB into chunks takes most of
	// the snapshot's time; the job is frozen only for the dump before it.
	if frozen := time.Duration(first.FrozenSeconds * float64(time.Second)); frozen <= 0 || frozen > wall/2 {
		t.Errorf("frozen %s of a snapshot that took %s: frozen while the store was written", frozen, wall)
	}
	if first.TotalBytes < 256<<20 || first.AddedBytes <= 0 {
		t.Errorf("first snapshot: %d bytes, %d added", first.TotalBytes, first.AddedBytes)
	}
	t.Logf("snapshot of 256 MiB in %s, frozen %.3fs, %d bytes added, staging peak %d", wall, first.FrozenSeconds, first.AddedBytes, w.peak)
	if ls(t)["/snapstream"].State != "running" || !j.progresses(t, before.Counter) {
		t.Fatalf("the job does not run on after the snapshot")
	}

	second := snapshot(t, "/snapstream", "--store", store)
	if second.AddedBytes*50 > first.AddedBytes {
		t.Errorf("second snapshot of an unchanged job added %d bytes, the first %d: no deduplication", second.AddedBytes, first.AddedBytes)
	}

	mustCr(t, "restore", "--store", store, "--as", "/snapstream-r", first.ID)
	killAtCleanup(t, "/snapstream-r")
	after := (&job{path: "/snapstream-r", report: j.report}).ask(t)
	if after.MemSHA != before.MemSHAAtInit || after.MemBytes != before.MemBytes {
		t.Errorf("memory after restore from the store %s (%d bytes), want %s", after.MemSHA, after.MemBytes, before.MemSHAAtInit)
	}
	if after.Pid != before.Pid {
		t.Errorf("job pid %d after restore, want %d", after.Pid, before.Pid)
	}
	mustCr(t, "images", "verify", "--store", store)
}
