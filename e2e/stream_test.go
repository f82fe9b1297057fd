package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stagingWatch polls the staging area while a checkpoint runs: the
// largest it grew (bytes of regular files), every CRIU pages image it
// ever saw there uncompressed, and whether it saw the compressed pages
// and the small images.
type stagingWatch struct {
	dir  string
	stop chan struct{}
	done sync.WaitGroup

	peak       int64
	rawPages   map[string]int64
	compressed bool
	small      bool // saw CRIU's small images staged
}

func watchStaging(dir string) *stagingWatch {
	w := &stagingWatch{dir: dir, stop: make(chan struct{}), rawPages: map[string]int64{}}
	w.done.Go(func() {
		for {
			var total int64
			_ = filepath.WalkDir(w.dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return nil
				}
				fi, err := d.Info()
				if err != nil {
					return nil
				}
				total += fi.Size()
				name := d.Name()
				if strings.HasPrefix(name, "pages-") && strings.HasSuffix(name, ".img") {
					w.rawPages[p] = max(w.rawPages[p], fi.Size())
				}
				if strings.HasSuffix(name, ".zst") && fi.Size() > 0 {
					w.compressed = true
				}
				if strings.HasPrefix(name, "core-") && strings.HasSuffix(name, ".img") {
					w.small = true
				}
				return nil
			})
			w.peak = max(w.peak, total)
			select {
			case <-w.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	})
	return w
}

func (w *stagingWatch) end() { close(w.stop); w.done.Wait() }

// A 512 MiB job with children and SysV IPC checkpoints through CRIU's
// image streamer: while it dumps, no uncompressed pages image ever
// appears in the staging area, which never holds more than the
// compressed image and 64 MiB; the restore, fed from the image as it is
// read, stages no page either, and brings back its memory, pids and IPC
// objects; the staging area is empty afterwards.
func TestStreamCheckpointStagesNoPages(t *testing.T) {
	j := startJob(t, "/stream", "--mem", "512", "--children", "2", "--ipc")
	before := j.ask(t)
	if before.MemSHA != before.MemSHAAtInit || before.MemBytes != 512<<20 || before.ShmData == "" {
		t.Fatalf("job not set up: %+v", before)
	}
	pidsBefore := insidePids(t, "/stream")
	staging := filepath.Join(workDir, "staging")
	img := image(t)
	w := watchStaging(staging)
	mustCr(t, "checkpoint", "/stream", "-o", img)
	w.end()
	gone(t, "/stream")
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(w.rawPages) > 0 {
		t.Errorf("uncompressed pages images appeared in staging: %v", w.rawPages)
	}
	if !w.compressed {
		t.Errorf("the watch never saw the compressed pages in staging: it did not watch the dump")
	}
	if w.peak > st.Size()+64<<20 {
		t.Errorf("staging grew to %d bytes for an image of %d: more than the image and 64 MiB", w.peak, st.Size())
	}
	t.Logf("image %d bytes, staging peak %d bytes", st.Size(), w.peak)
	// Other tests keep their own things there (cr check's probe tree).
	if left, _ := filepath.Glob(filepath.Join(staging, "ckpt-*")); len(left) != 0 {
		t.Errorf("the checkpoint left staging entries: %v", left)
	}

	// The restore feeds CRIU from the image as it reads it: the small
	// images are extracted, the pages never.
	w = watchStaging(staging)
	var rep struct {
		Streamed       bool    `json:"streamed"`
		ExtractSeconds float64 `json:"extract_seconds"`
		RestoreSeconds float64 `json:"restore_seconds"`
		VerifySeconds  float64 `json:"verify_seconds"`
	}
	if err := json.Unmarshal([]byte(mustCr(t, "restore", "--json", img)), &rep); err != nil {
		t.Fatal(err)
	}
	w.end()
	if !rep.Streamed || rep.ExtractSeconds <= 0 || rep.RestoreSeconds <= 0 || rep.VerifySeconds < 0 {
		t.Errorf("restore --json: %+v, want a streamed restore and its phases", rep)
	}
	killAtCleanup(t, "/stream")
	if len(w.rawPages) > 0 {
		t.Errorf("the restore staged uncompressed pages images: %v", w.rawPages)
	}
	if !w.small {
		t.Errorf("the watch never saw the restore's small images in staging: it did not watch the restore")
	}
	if w.peak > 64<<20 {
		t.Errorf("the restore's staging grew to %d bytes: the pages of a 512 MiB job were staged", w.peak)
	}
	after := j.ask(t)
	if after.MemSHA != before.MemSHAAtInit {
		t.Errorf("memory checksum after restore %s, want %s", after.MemSHA, before.MemSHAAtInit)
	}
	if after.Pid != before.Pid || fmt.Sprint(after.Children) != fmt.Sprint(before.Children) {
		t.Errorf("pids changed: job %d->%d, children %v->%v", before.Pid, after.Pid, before.Children, after.Children)
	}
	if got := insidePids(t, "/stream"); fmt.Sprint(got) != fmt.Sprint(pidsBefore) {
		t.Errorf("pids inside the container: %v before, %v after restore", pidsBefore, got)
	}
	if after.ShmID != before.ShmID || after.ShmData != before.ShmData || after.SemID != before.SemID ||
		fmt.Sprint(after.SemValues) != "[3 5 7]" || after.MsgID != before.MsgID || len(after.Msgs) != 3 {
		t.Errorf("IPC objects after restore: %+v, before %+v", after, before)
	}
}

// Every codec of --compress checkpoints through the stream and restores:
// the image starts with its codec's magic, and the job's memory is back.
func TestStreamCompressions(t *testing.T) {
	for _, tc := range []struct{ codec, magic string }{
		{"s2", "\xff\x06\x00\x00S2sTwO"},
		{"none", "cr-image.json"},
		{"zstd", "\x28\xb5\x2f\xfd"},
	} {
		t.Run(tc.codec, func(t *testing.T) {
			path := "/codec-" + tc.codec
			j := startJob(t, path, "--mem", "64", "--children", "1")
			before := j.ask(t)
			img := image(t)
			mustCr(t, "checkpoint", "--compress", tc.codec, path, "-o", img)
			gone(t, path)
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), tc.magic) {
				t.Errorf("image starts with %q, want %q", b[:min(len(b), 16)], tc.magic)
			}
			mustCr(t, "restore", img)
			killAtCleanup(t, path)
			after := j.ask(t)
			if after.MemSHA != before.MemSHAAtInit || after.Pid != before.Pid || fmt.Sprint(after.Children) != fmt.Sprint(before.Children) {
				t.Errorf("after restore: %+v, before %+v", after, before)
			}
		})
	}
}

// One flipped byte inside a pages image, in a plain image where no codec's
// checksum can see it, only the manifest's SHA-256: the restore refuses it
// as corrupt, naming the file, and creates nothing.
func TestStreamFlippedPageByteRestoresNothing(t *testing.T) {
	j := startJob(t, "/flip", "--mem", "16")
	img := image(t)
	mustCr(t, "checkpoint", "--leave-running", "--compress", "none", "/flip", "-o", img)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	// Find the largest pages image's content in the tar stream: archive/tar
	// reads exactly the header blocks, so after Next the reader is at it.
	r := bytes.NewReader(b)
	tr := tar.NewReader(r)
	var off, size int64 = -1, 0
	var name string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		if strings.HasPrefix(h.Name, "checkpoint/pages-") && h.Size > size {
			off, size, name = int64(len(b))-int64(r.Len()), h.Size, h.Name
		}
	}
	if size < 1<<20 {
		t.Fatalf("no pages image of 1 MiB or more in the image")
	}
	b[off+size/2] ^= 0x01
	bad := filepath.Join(t.TempDir(), "flipped.cr")
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	leavesBefore := countLeaves(t)
	wantFail(t, 8, "corrupt image: "+name+": sha256 mismatch", "restore", "--as", "/flipped", bad)
	if _, ok := ls(t)["/flipped"]; ok || countLeaves(t) != leavesBefore {
		t.Errorf("a restore of a flipped image created something")
	}
	if ls(t)["/flip"].State != "running" || !j.progresses(t, j.ask(t).Counter) {
		t.Errorf("the source does not run on")
	}
}

// A staging area too small for the compressed pages: the checkpoint fails
// with the reason (no space), the job runs on, and nothing is left.
func TestStreamStagingFull(t *testing.T) {
	small := t.TempDir()
	if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(small, unix.MNT_DETACH) })
	j := startJob(t, "/full", "--mem", "64")
	before := j.ask(t)
	img := image(t)
	r := crEnv(t, []string{"CR_STAGING=" + small}, "checkpoint", "/full", "-o", img)
	if r.code != 1 || !strings.Contains(r.err, "Error: dump /full: stream images: ") || !strings.Contains(r.err, "no space left on device") {
		t.Errorf("checkpoint into a full staging area: %s; want exit 1 and the reason", r)
	}
	if _, err := os.Stat(img); err == nil {
		t.Errorf("an image was left")
	}
	if ents, _ := os.ReadDir(small); len(ents) != 0 {
		t.Errorf("staging left: %v", ents)
	}
	if ls(t)["/full"].State != "running" || !j.progresses(t, before.Counter) {
		t.Errorf("the job does not run on")
	}
	if got := j.ask(t); got.MemSHA != before.MemSHAAtInit {
		t.Errorf("the job's memory changed")
	}
}
