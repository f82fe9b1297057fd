package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Crashes leave nothing behind: a cr killed with SIGKILL in the middle of
// its work leaves its staging directory, an image's temporary file, or
// half-restored nodes, and the next cr that touches the same place removes
// them. The job is never lost and never runs twice.

// killCrWhen runs cr args in the background and kills it with SIGKILL as
// soon as cond holds, then waits for the processes cr had started (CRIU,
// which cr never kills) to end. It fails the test if cr ends first.
func killCrWhen(t *testing.T, what string, cond func() bool, args ...string) {
	t.Helper()
	c := exec.Command(crBin, args...)
	c.Env = append(os.Environ(), env...)
	c.Dir = workDir
	var out strings.Builder
	c.Stdout, c.Stderr = &out, &out
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		select {
		case <-done:
			t.Fatalf("cr %s ended before %s: %s", strings.Join(args, " "), what, out.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = c.Process.Kill()
			<-done
			t.Fatalf("cr %s: timed out waiting for %s", strings.Join(args, " "), what)
		}
		time.Sleep(2 * time.Millisecond)
	}
	kids := childrenOf(c.Process.Pid)
	_ = c.Process.Signal(syscall.SIGKILL)
	<-done
	t.Logf("killed cr %s %s (its children: %v)", strings.Join(args, " "), what, kids)
	waitFor(t, 60*time.Second, "the CRIU of the killed cr to end", func() bool {
		for _, pid := range kids {
			if alive(pid) {
				return false
			}
		}
		return true
	})
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var kids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}

// staged lists the staging area's entries whose name starts with prefix.
func staged(prefix string) []string {
	m, _ := filepath.Glob(filepath.Join(workDir, "staging", prefix+"*"))
	return m
}

// stagedBytes is the size of what the staging area's entries named
// prefix* hold.
func stagedBytes(prefix string) int64 {
	var n int64
	for _, d := range staged(prefix) {
		_ = filepath.Walk(d, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n += fi.Size()
			}
			return nil
		})
	}
	return n
}

// tempBeside lists the temporary files of the image img.
func tempBeside(img string) []string {
	m, _ := filepath.Glob(filepath.Join(filepath.Dir(img), "."+filepath.Base(img)+".tmp-*"))
	return m
}

// restoringHere reports whether a node of the private tree is being
// restored.
// streamRestoring reports whether a criu restore --stream of this run's
// cr is running.
func streamRestoring() bool {
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("restore\x00--stream\x00")) && bytes.Contains(b, []byte(workDir)) {
			return true
		}
	}
	return false
}

func restoringHere() bool {
	return restoring(filepath.Join(workDir, "state", "c", "*", "config.json"))
}

// runsIntact checks that j runs as before: one container at its path,
// the same pid, its memory intact, its counter going on.
func runsIntact(t *testing.T, j *job, before Report) {
	t.Helper()
	if got := filterPrefix(ls(t), j.path); len(got) != 1 {
		t.Fatalf("containers at %s: %v, want exactly one", j.path, got)
	}
	if st := ls(t)[j.path].State; st != "running" {
		t.Logf("%s is %s after the crash; thawing it", j.path, st)
		mustCr(t, "thaw", j.path)
		if st := ls(t)[j.path].State; st != "running" {
			t.Fatalf("%s is %s after cr thaw", j.path, st)
		}
	}
	now := j.ask(t)
	if now.Pid != before.Pid || now.MemSHA != before.MemSHAAtInit {
		t.Errorf("job after the crash: pid %d, memory %s; want pid %d, memory %s", now.Pid, now.MemSHA, before.Pid, before.MemSHAAtInit)
	}
	if !j.progresses(t, now.Counter) {
		t.Errorf("job makes no progress after the crash")
	}
}

// A checkpoint killed while CRIU dumps, then one killed while it writes
// the image: the job stays (frozen, at worst), and the next checkpoint to
// the same file leaves no staging directory and no temporary file.
func TestCheckpointKilledLeavesNothing(t *testing.T) {
	j := startJob(t, "/kck", "--mem", "256")
	before := j.ask(t)
	img := image(t)

	killCrWhen(t, "while CRIU dumps", func() bool { return stagedBytes("ckpt-") > 16<<20 }, "checkpoint", "/kck", "-o", img)
	if len(staged("ckpt-")) == 0 {
		t.Fatal("the killed checkpoint left no staging directory: nothing to test")
	}
	runsIntact(t, j, before)

	killCrWhen(t, "while it writes the image", func() bool {
		for _, p := range tempBeside(img) {
			if fi, err := os.Stat(p); err == nil && fi.Size() > 1<<20 {
				return true
			}
		}
		return false
	}, "checkpoint", "/kck", "-o", img)
	if len(tempBeside(img)) == 0 {
		t.Fatal("the killed checkpoint left no temporary file: nothing to test")
	}
	if _, err := os.Stat(img); err == nil {
		t.Fatal("a checkpoint killed while writing left an image")
	}
	runsIntact(t, j, before)

	mustCr(t, "checkpoint", "--leave-running", "/kck", "-o", img)
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("staging after the next checkpoint: %v", s)
	}
	if tmp := tempBeside(img); len(tmp) != 0 {
		t.Errorf("temporary files after the next checkpoint: %v", tmp)
	}
	runsIntact(t, j, before)
	mustCr(t, "inspect", img)
}

// criuDumpsPages reports whether a streamed dump in the staging area is
// amid the pages of its second process (the job, after the init): CRIU
// has written that process's pagemap, and not yet inventory.img, which
// it writes last. The pages themselves never appear there.
func criuDumpsPages() bool {
	for _, d := range staged("ckpt-") {
		pm, _ := filepath.Glob(filepath.Join(d, "checkpoint", "pagemap-*.img"))
		if _, err := os.Stat(filepath.Join(d, "checkpoint", "inventory.img")); len(pm) >= 2 && err != nil {
			return true
		}
	}
	return false
}

// A snapshot killed while CRIU dumps leaves its staging directory; the
// next snapshot removes it, and the store has exactly that one snapshot.
func TestSnapshotKilledLeavesNothing(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	j := startJob(t, "/ksn", "--mem", "256")
	before := j.ask(t)
	killCrWhen(t, "while CRIU dumps", criuDumpsPages, "snapshot", "/ksn", "--store", store)
	if len(staged("ckpt-")) == 0 {
		t.Fatal("the killed snapshot left no staging directory: nothing to test")
	}
	// CRIU, which cr does not kill, thaws the job when its dump is done.
	waitFor(t, 20*time.Second, "the job to run again", func() bool { return ls(t)["/ksn"].State == "running" })
	runsIntact(t, j, before)
	snapshot(t, "/ksn", "--store", store)
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("staging after the next snapshot: %v", s)
	}
	if es := snapshots(t, store); len(es) != 1 {
		t.Errorf("store has %d snapshots, want the one that finished", len(es))
	}
	runsIntact(t, j, before)
}

// A restore killed while CRIU reads the pages from it (the image is
// restored as it is read: no page is staged) leaves its staging; one
// killed while CRIU restores leaves half-made nodes (state "restoring")
// too. The next restore removes both and restores the job: one container,
// its pid and memory intact.
func TestRestoreKilledLeavesNothing(t *testing.T) {
	j := startJob(t, "/krs", "--mem", "256")
	before := j.ask(t)
	leaves := countLeaves(t) - 1
	img := image(t)
	mustCr(t, "checkpoint", "/krs", "-o", img)
	gone(t, "/krs")

	killCrWhen(t, "while CRIU reads the pages from it", streamRestoring, "restore", img)
	if n := stagedBytes("rst-"); n > 16<<20 {
		t.Errorf("%d bytes staged by a streamed restore of a 256 MiB job: its pages were staged", n)
	}
	if len(staged("rst-")) == 0 {
		t.Fatal("the killed restore left no staging directory: nothing to test")
	}

	killCrWhen(t, "while CRIU restores", restoringHere, "restore", img)
	if len(staged("rst-")) == 0 {
		t.Fatal("the killed restore left no staging directory: nothing to test")
	}

	r := cr(t, "restore", img)
	killAtCleanup(t, "/krs")
	if r.code != 0 || !strings.HasPrefix(r.out, "restored /krs (1 container) in ") ||
		r.err != "cr: interrupted restore of /krs: removed what was restored\n" {
		t.Fatalf("restore after the killed ones: %s", r)
	}
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("staging after the next restore: %v", s)
	}
	if n := countLeaves(t); n != leaves+1 {
		t.Errorf("%d container cgroups, want %d", n, leaves+1)
	}
	runsIntact(t, j, before)
	if restoringHere() {
		t.Errorf("a node is still marked restoring")
	}
	if got := ls(t); len(got) != 1 {
		t.Errorf("cr ls shows %d containers, want /krs only", len(got))
	}
}

// A migration whose sender is killed while it streams: the receiver drops
// it, the source stays here (frozen: thawed by hand), and the next
// migration leaves no staging at the source and moves the job intact.
func TestMigrateSenderKilledLeavesNothing(t *testing.T) {
	h := newHost(t, "token")
	j := startJob(t, "/kmg", "--mem", "256")
	before := j.ask(t)
	killCrWhen(t, "while it streams", func() bool { return len(h.incoming(t)) > 0 }, migrateArgs(h, "/kmg")...)
	if len(staged("ckpt-")) == 0 {
		t.Fatal("the killed sender left no staging directory: nothing to test")
	}
	h.waitClean(t)
	if got := h.ls(t); len(got) != 0 {
		t.Fatalf("destination has %v after the sender died", got)
	}
	runsIntact(t, j, before)
	mustCr(t, migrateArgs(h, "/kmg")...)
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("source staging after the next migration: %v", s)
	}
	if _, ok := ls(t)["/kmg"]; ok {
		t.Errorf("source still has /kmg")
	}
	if after := h.ask(t, j, "/kmg"); after.Pid != before.Pid || after.MemSHA != before.MemSHAAtInit {
		t.Errorf("job at the destination: pid %d, memory %s; want pid %d, memory %s", after.Pid, after.MemSHA, before.Pid, before.MemSHAAtInit)
	}
}
