package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// precopyJob is a --rootfs job whose upper first gets n files of 10 MiB
// of random data (real data, no holes), then runs the test job.
func precopyJob(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "dd if=/dev/urandom of=/big-%02d bs=1048576 count=10 2>/dev/null && ", i)
	}
	b.WriteString("exec /testjob --report /report.json --counter-file /counter --mem 16")
	return b.String()
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// migrateDowntime migrates the --rootfs container at path to h and
// returns its report (with --with-rootfs: the lower goes too, before the
// freeze, if h lacks it), after checking that the job runs there as it ran
// here and that nothing of it is left here.
func migrateDowntime(t *testing.T, h *host, path string) migrateReport {
	t.Helper()
	before := askRootfs(t, nil, path)
	out := mustCr(t, append(migrateArgs(h, path, "--with-rootfs"), "--json")...)
	var rep migrateReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("cr migrate --json: %v\n%s", err, out)
	}
	after := askRootfs(t, h.env, path)
	if after.Pid != before.Pid || after.MemSHA != before.MemSHAAtInit || after.Counter < before.Counter {
		t.Errorf("%s at the destination: pid %d -> %d, counter %d -> %d, memory %s (want %s)", path, before.Pid, after.Pid, before.Counter, after.Counter, after.MemSHA, before.MemSHAAtInit)
	}
	if l := ls(t); len(filterPrefix(l, path)) != 0 {
		t.Errorf("the source still has %v", filterPrefix(l, path))
	}
	if d := nodeDir(t, filepath.Join(workDir, "state"), strings.TrimPrefix(path, "/")); d != "" {
		t.Errorf("the source's state %s is left", d)
	}
	return rep
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// The file systems of a --rootfs container go to the destination before
// the freeze: a container whose upper holds 500 MiB of files migrates
// with a downtime within 1.3 times that of the same job with an empty
// upper (the medians of a few runs), only what changed since the
// pre-copy is sent after the freeze, and the files arrive intact; the
// lower goes before the freeze too, once.
func TestMigrateRootfsDowntime(t *testing.T) {
	h := rootfsHost(t)
	lower := buildRootfs(t)
	const files = 50 // of 10 MiB
	const runs = 3
	var empty, full []float64
	for i := range runs {
		e, f := fmt.Sprintf("/dte%d", i), fmt.Sprintf("/dtf%d", i)
		runRootfs(t, nil, lower, e, "/bin/sh", "-c", precopyJob(0))
		runRootfs(t, nil, lower, f, "/bin/sh", "-c", precopyJob(files))
		t.Cleanup(func() {
			h.cr(t, "kill", "--grace", "1s", e)
			h.cr(t, "kill", "--grace", "1s", f)
		})
		waitRootfsJob(t, nil, e)
		waitRootfsJob(t, nil, f)

		rep := migrateDowntime(t, h, e)
		empty = append(empty, rep.DowntimeSeconds)
		// The lower (busybox and the test job, a few MiB) goes once.
		if lowerSent := rep.PreCopyBytes > 1<<20; lowerSent != (i == 0) {
			t.Errorf("%s: %d bytes sent before the freeze: the lower should go only to a destination that lacks it", e, rep.PreCopyBytes)
		}

		up := filepath.Join(nodeDir(t, filepath.Join(workDir, "state"), strings.TrimPrefix(f, "/")), "rootfs", "upper")
		sample := map[string]string{}
		for _, n := range []string{"big-00", "big-24", "big-49"} {
			sample[n] = fileSHA(t, filepath.Join(up, n))
		}
		rep = migrateDowntime(t, h, f)
		full = append(full, rep.DowntimeSeconds)
		if rep.PreCopyBytes < files*10<<20 || rep.PreCopyFiles < files {
			t.Errorf("%s: %d bytes, %d files sent before the freeze; want the %d files of 10 MiB", f, rep.PreCopyBytes, rep.PreCopyFiles, files)
		}
		if rep.ChangedBytes > 1<<20 {
			t.Errorf("%s: %d bytes of files sent after the freeze: more than what the job changed", f, rep.ChangedBytes)
		}
		dst := filepath.Join(nodeDir(t, filepath.Join(h.dir, "state"), strings.TrimPrefix(f, "/")), "rootfs", "upper")
		for n, want := range sample {
			if got := fileSHA(t, filepath.Join(dst, n)); got != want {
				t.Errorf("%s: %s arrived with sha256 %s, want %s", f, n, got, want)
			}
		}
		ents, _ := filepath.Glob(filepath.Join(dst, "big-*"))
		if len(ents) != files {
			t.Errorf("%s: %d of the %d files arrived", f, len(ents), files)
		}
		if s := h.staged(t); len(s) != 0 {
			t.Errorf("the destination's staging holds %v", s)
		}
		t.Logf("run %d: downtime %.3fs with an empty upper, %.3fs with %d MiB (%.2fs of pre-copy)", i, empty[i], full[i], files*10, rep.PreCopySeconds)
		// Each run's containers go before the next (500 MiB each).
		h.mustCr(t, "kill", e)
		h.mustCr(t, "kill", f)
	}
	if me, mf := median(empty), median(full); mf > 1.3*me {
		t.Errorf("median downtime with %d MiB in the upper %.3fs, more than 1.3 times the %.3fs with an empty one (runs: %v, %v)", files*10, mf, me, full, empty)
	}
}
