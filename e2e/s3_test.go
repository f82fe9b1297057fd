package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// s3Snap is a line of cr images ls --json on an S3 store.
type s3Snap struct {
	ID   string `json:"id"`
	Path string `json:"path"`
	Host string `json:"host"`
}

func s3Snapshots(t *testing.T, extra []string, store string) []s3Snap {
	t.Helper()
	r := crEnv(t, extra, "images", "ls", "--store", store, "--json")
	if r.code != 0 {
		t.Fatalf("cr images ls: %s", r)
	}
	var es []s3Snap
	if err := json.Unmarshal([]byte(r.out), &es); err != nil {
		t.Fatalf("cr images ls --json: %v\n%s", err, r.out)
	}
	return es
}

// otherTree is a second cr "host" on this machine: a state directory,
// cgroup parent and staging area of its own, and its own CR_HOSTNAME. Its
// containers and cgroups are removed at cleanup.
func otherTree(t *testing.T, name string, extra []string) []string {
	t.Helper()
	dir := t.TempDir()
	cg := cgName + "-" + name
	e := append([]string{
		"CR_STATE_DIR=" + filepath.Join(dir, "state"),
		"CR_CGROUP_PARENT=" + cg,
		"CR_STAGING=" + filepath.Join(dir, "staging"),
		"CR_HOSTNAME=" + name,
	}, extra...)
	t.Cleanup(func() {
		r := crEnv(t, e, "ls", "--json")
		var es []Entry
		_ = json.Unmarshal([]byte(r.out), &es)
		for _, en := range es {
			if strings.Count(en.Path, "/") == 1 {
				crEnv(t, e, "kill", "--grace", "1s", en.Path)
			}
		}
		cleanupCgroups(filepath.Join(filepath.Dir(cgBase), cg))
	})
	return e
}

// askIn is job.ask for a job of another tree.
func askIn(t *testing.T, e []string, path, report string) Report {
	t.Helper()
	return askVia(t, report, func() {
		if r := crEnv(t, e, "kill", "-s", "USR1", path); r.code != 0 {
			t.Fatalf("cr kill -s USR1 %s: %s", path, r)
		}
	})
}

// TestS3Fleet: two hosts (two trees) keep snapshots of one 256 MiB job in
// one bucket. The second host restores the first's snapshot (memory
// intact), and its snapshot of the same job image shares the chunks: the
// bucket grows by less than half. A prune from one host while the other
// snapshots loses nothing: verify passes and the latest snapshot of each
// host restores with its memory intact.
func TestS3Fleet(t *testing.T) {
	srv := needS3(t)
	bucket := srv.bucket(t)
	store := "s3://" + bucket + "/fleet"
	envA := srv.env("CR_HOSTNAME=host-a")
	envB := otherTree(t, "host-b", srv.env())

	j := startJob(t, "/fleet", "--mem", "256")
	orig := j.ask(t)
	if r := crEnv(t, envA, "snapshot", "/fleet", "--store", store); r.code != 0 || r.out != "" {
		t.Fatalf("host A's snapshot: %s", r)
	}
	first := srv.bytesUnder(t, bucket, "fleet/")
	if first < 4<<20 {
		t.Fatalf("the bucket holds %d bytes after a snapshot of 256 MiB", first)
	}

	// Host B restores host A's latest snapshot of /fleet.
	if r := crEnv(t, envB, "restore", "--store", store, "--host", "host-a", "/fleet"); r.code != 0 {
		t.Fatalf("host B's restore of host A's snapshot: %s", r)
	}
	got := askIn(t, envB, "/fleet", j.report)
	if got.MemSHA != orig.MemSHAAtInit || got.MemBytes != 256<<20 || got.Pid != orig.Pid {
		t.Fatalf("restored on host B: memory %s (%d bytes), pid %d; want %s, %d, pid %d", got.MemSHA, got.MemBytes, got.Pid, orig.MemSHAAtInit, 256<<20, orig.Pid)
	}
	// B's snapshot of the same job image shares A's chunks.
	if r := crEnv(t, envB, "snapshot", "/fleet", "--store", store); r.code != 0 {
		t.Fatalf("host B's snapshot: %s", r)
	}
	second := srv.bytesUnder(t, bucket, "fleet/")
	if float64(second) >= 1.5*float64(first) {
		t.Errorf("bucket grew from %d to %d bytes with host B's snapshot of the same job: want < 1.5x", first, second)
	}
	hosts := map[string]int{}
	for _, s := range s3Snapshots(t, envA, store) {
		hosts[s.Host]++
	}
	if hosts["host-a"] != 1 || hosts["host-b"] != 1 {
		t.Errorf("cr images ls shows hosts %v, want one snapshot of each", hosts)
	}
	r := crEnv(t, envA, "images", "ls", "--store", store)
	if lines := strings.Split(strings.TrimSpace(r.out), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], " HOST ") ||
		!strings.Contains(r.out, " host-a ") || !strings.Contains(r.out, " host-b ") {
		t.Errorf("cr images ls:\n%s", r.out)
	}

	// A second snapshot on A makes garbage for a prune: A prunes (keep the
	// last one of each host) while B snapshots.
	if r := crEnv(t, envA, "snapshot", "/fleet", "--store", store); r.code != 0 {
		t.Fatalf("host A's second snapshot: %s", r)
	}
	bsnap := exec.Command(crBin, "snapshot", "/fleet", "--store", store, "--json")
	bsnap.Env = append(append(os.Environ(), env...), envB...)
	var bout, berr strings.Builder
	bsnap.Stdout, bsnap.Stderr = &bout, &berr
	if err := bsnap.Start(); err != nil {
		t.Fatal(err)
	}
	// Prune once B holds its lock (its lock object is in the bucket).
	waitFor(t, 30*time.Second, "host B's lock", func() bool {
		objs, _ := srv.keys(t, bucket, "fleet/locks/")
		return len(objs) > 0
	})
	prune := crEnv(t, envA, "images", "prune", "--store", store, "/fleet", "--keep-last", "1")
	if err := bsnap.Wait(); err != nil {
		t.Fatalf("host B's snapshot during the prune: %v\n%s", err, berr.String())
	}
	if prune.code != 0 {
		t.Fatalf("host A's prune during B's snapshot: %s", prune)
	}
	if !strings.Contains(prune.out, "/fleet (host host-a): keep 1 of 2 snapshots") {
		t.Errorf("prune output:\n%s", prune.out)
	}
	if r := crEnv(t, envA, "images", "verify", "--store", store); r.code != 0 || !strings.Contains(r.out, "snapshots, ") {
		t.Fatalf("verify after the prune: %s", r)
	}
	snaps := s3Snapshots(t, envA, store)
	if len(snaps) != 2 {
		t.Fatalf("after the prune: %v, want the latest of each host", snaps)
	}
	// Kill B's copy, then restore the latest of each host, in turn, on A.
	if r := crEnv(t, envB, "kill", "--grace", "1s", "/fleet"); r.code != 0 {
		t.Fatalf("kill B's copy: %s", r)
	}
	for _, h := range []string{"host-a", "host-b"} {
		as := "/fleet-" + h
		if r := crEnv(t, envA, "restore", "--store", store, "--host", h, "--as", as, "/fleet"); r.code != 0 {
			t.Fatalf("restore the latest of %s: %s", h, r)
		}
		got := (&job{path: as, report: j.report}).ask(t)
		if got.MemSHA != orig.MemSHAAtInit {
			t.Errorf("the latest snapshot of %s restored with memory %s, want %s", h, got.MemSHA, orig.MemSHAAtInit)
		}
		mustCr(t, "kill", "--grace", "1s", as)
	}
}

// TestS3Errors: wrong credentials, a missing bucket and an unreachable
// endpoint each give their own error and exit status within seconds, and a
// checkpoint that cannot write its image leaves the job running.
func TestS3Errors(t *testing.T) {
	srv := needS3(t)
	bucket := srv.bucket(t)
	start(t, "/s3err", "sleep", "1000")
	cases := []struct {
		name string
		env  []string
		loc  string
		code int
		want string
	}{
		{"wrong secret", srv.env("AWS_SECRET_ACCESS_KEY=wrong"), "s3://" + bucket + "/x", 11, "object storage refused the credentials"},
		{"unknown key", srv.env("AWS_ACCESS_KEY_ID=nobody"), "s3://" + bucket + "/x", 11, "object storage refused the credentials"},
		{"missing bucket", srv.env(), "s3://no-such-bucket-here/x", 3, "no such bucket: no-such-bucket-here at 127.0.0.1:"},
		{"unreachable", srv.env("AWS_ENDPOINT_URL=http://127.0.0.1:1"), "s3://" + bucket + "/x", 12, "object storage unreachable: 127.0.0.1:1"},
	}
	for _, c := range cases {
		for _, args := range [][]string{
			{"images", "ls", "--store", c.loc},
			{"snapshot", "/s3err", "--store", c.loc},
			{"checkpoint", "/s3err", "-o", c.loc + "/image.cr"},
			{"restore", c.loc + "/image.cr"},
		} {
			t0 := time.Now()
			r := crEnv(t, c.env, args...)
			if d := time.Since(t0); d > 10*time.Second {
				t.Errorf("%s: cr %s took %v", c.name, strings.Join(args, " "), d)
			}
			if r.code != c.code || !strings.Contains(r.err, c.want) {
				t.Errorf("%s: cr %s: want exit %d and %q, got %s", c.name, strings.Join(args, " "), c.code, c.want, r)
			}
		}
	}
	// The same in --json, with its kind.
	r := crEnv(t, srv.env("AWS_ENDPOINT_URL=http://127.0.0.1:1"), "images", "ls", "--json", "--store", "s3://"+bucket+"/x")
	if !strings.Contains(r.err, `"code":12,"kind":"unreachable"`) {
		t.Errorf("--json unreachable: %s", r)
	}
	if e := ls(t)["/s3err"]; e.State != "running" {
		t.Errorf("the job is %s after the failed checkpoints", e.State)
	}
	// No store at an empty prefix is "no such store"; a bad URL is usage.
	wantExit := func(code int, want string, args ...string) {
		t.Helper()
		r := crEnv(t, srv.env(), args...)
		if r.code != code || !strings.Contains(r.err, want) {
			t.Errorf("cr %s: want exit %d and %q, got %s", strings.Join(args, " "), code, want, r)
		}
	}
	wantExit(3, "no such store: s3://"+bucket+"/empty", "images", "ls", "--store", "s3://"+bucket+"/empty")
	wantExit(2, "bad s3 url", "images", "ls", "--store", "s3://A_B/x")
	if objs, _ := srv.keys(t, bucket, ""); len(objs) != 0 {
		t.Errorf("the failed commands left objects %v", objs)
	}
}

// TestS3CheckpointStream: cr checkpoint -o s3:// streams the image into the
// bucket and cr restore s3:// restores it; a checkpoint interrupted
// mid-upload (SIGTERM) or killed (SIGKILL) leaves no object and the job
// running, and the next upload of that key leaves no parts behind.
func TestS3CheckpointStream(t *testing.T) {
	srv := needS3(t)
	bucket := srv.bucket(t)
	e := srv.env()
	j := startJob(t, "/s3ck", "--mem", "96")
	orig := j.ask(t)
	key := "images/s3ck.cr"
	loc := "s3://" + bucket + "/" + key

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		args := []string{"checkpoint", "/s3ck", "-o", loc, "--compress", "none"}
		if sig == syscall.SIGKILL {
			args = append(args, "--leave-running") // a killed cr leaves a frozen job otherwise
		}
		c := exec.Command(crBin, args...)
		c.Env = append(append(os.Environ(), env...), e...)
		var stderr strings.Builder
		c.Stderr = &stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		// Mid-upload: once a part of the image is in the bucket.
		waitFor(t, 60*time.Second, "a part to be uploaded", func() bool {
			return srv.partsUploaded(t, bucket, key) > 0
		})
		_ = c.Process.Signal(sig)
		err := c.Wait()
		if sig == syscall.SIGTERM {
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 || !strings.Contains(stderr.String(), "interrupted; /s3ck left running") {
				t.Errorf("checkpoint after SIGTERM: %v\n%s", err, stderr.String())
			}
			if _, ups := srv.keys(t, bucket, key); len(ups) != 0 {
				t.Errorf("an interrupted upload left parts: %v", ups)
			}
		}
		if objs, _ := srv.keys(t, bucket, ""); len(objs) != 0 {
			t.Fatalf("after %v mid-upload: objects %v", sig, objs)
		}
		waitFor(t, 20*time.Second, "the job to run again", func() bool { return ls(t)["/s3ck"].State == "running" })
		if !j.progresses(t, j.ask(t).Counter) {
			t.Fatalf("the job does not run on after %v of its checkpoint", sig)
		}
	}

	// A whole checkpoint: the object appears, the job is gone, and a
	// restore from the bucket brings it back as it was.
	r := crEnv(t, e, "checkpoint", "/s3ck", "-o", loc, "--json")
	if r.code != 0 {
		t.Fatalf("checkpoint -o %s: %s", loc, r)
	}
	var rep struct {
		Image      string `json:"image"`
		ImageBytes int64  `json:"image_bytes"`
	}
	if err := json.Unmarshal([]byte(r.out), &rep); err != nil || rep.Image != loc {
		t.Fatalf("checkpoint report %q: %v", r.out, err)
	}
	if objs, ups := srv.keys(t, bucket, ""); len(objs) != 1 || objs[0] != key || len(ups) != 0 {
		t.Fatalf("after the checkpoint: objects %v, uploads %v", objs, ups)
	}
	if n := srv.bytesUnder(t, bucket, key); n != rep.ImageBytes {
		t.Errorf("object of %d bytes, the report says %d", n, rep.ImageBytes)
	}
	if _, ok := ls(t)["/s3ck"]; ok {
		t.Fatal("the job is still there after its checkpoint")
	}
	// The key exists now: a second checkpoint to it is refused up front.
	if r := crEnv(t, e, "restore", loc); r.code != 0 {
		t.Fatalf("restore %s: %s", loc, r)
	}
	got := j.ask(t)
	if got.MemSHA != orig.MemSHAAtInit || got.Pid != orig.Pid {
		t.Errorf("restored from S3: memory %s pid %d, want %s pid %d", got.MemSHA, got.Pid, orig.MemSHAAtInit, orig.Pid)
	}
	r = crEnv(t, e, "checkpoint", "/s3ck", "-o", loc)
	if r.code != 4 || !strings.Contains(r.err, fmt.Sprintf("cannot write the image: %s: file already exists", loc)) {
		t.Errorf("checkpoint onto an existing key: %s", r)
	}
	if ls(t)["/s3ck"].State != "running" {
		t.Error("the job does not run after the refused checkpoint")
	}
	if r := crEnv(t, e, "restore", "s3://"+bucket+"/nothing.cr"); r.code != 3 || !strings.Contains(r.err, "no such image: s3://"+bucket+"/nothing.cr") {
		t.Errorf("restore of a missing key: %s", r)
	}
}

// TestS3ImagesCommands: inspect, export, verify (all and a subset), rm
// and prune work on an S3 store as on a directory; verify reports a chunk
// damaged in the bucket and repairs nothing.
func TestS3ImagesCommands(t *testing.T) {
	srv := needS3(t)
	bucket := srv.bucket(t)
	store := "s3://" + bucket + "/st"
	e := srv.env("CR_HOSTNAME=img-host")
	j := startJob(t, "/s3img", "--mem", "16")
	orig := j.ask(t)
	r := crEnv(t, e, "snapshot", "/s3img", "--store", store, "--json")
	if r.code != 0 || !strings.Contains(r.err, "created store "+store) {
		t.Fatalf("first snapshot: %s", r)
	}
	var rep struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(r.out), &rep); err != nil {
		t.Fatal(err)
	}
	if r := crEnv(t, e, "images", "inspect", "--store", store, rep.ID[:8]); r.code != 0 ||
		!strings.HasPrefix(r.out, "snapshot "+rep.ID+" of /s3img from img-host at ") {
		t.Errorf("inspect: %s", r)
	}
	img := filepath.Join(t.TempDir(), "exported.cr")
	if r := crEnv(t, e, "images", "export", "--store", store, rep.ID, "-o", img); r.code != 0 {
		t.Fatalf("export: %s", r)
	}
	mustCr(t, "restore", "--as", "/s3img-exported", img)
	killAtCleanup(t, "/s3img-exported")
	if got := (&job{path: "/s3img-exported", report: j.report}).ask(t); got.MemSHA != orig.MemSHAAtInit {
		t.Errorf("exported snapshot restored with other memory")
	}
	mustCr(t, "kill", "--grace", "1s", "/s3img-exported")

	var all struct {
		Chunks      int `json:"chunks"`
		TotalChunks int `json:"total_chunks"`
	}
	r = crEnv(t, e, "images", "verify", "--store", store, "--json")
	if r.code != 0 || json.Unmarshal([]byte(r.out), &all) != nil || all.Chunks < 10 || all.Chunks != all.TotalChunks {
		t.Fatalf("verify: %s", r)
	}
	r = crEnv(t, e, "images", "verify", "--store", store, "--read-data-subset", "50%")
	if want := fmt.Sprintf("1 snapshot, %d of %d chunks checked (50%%)\n", (all.Chunks+1)/2, all.Chunks); r.code != 0 || r.out != want {
		t.Errorf("verify --read-data-subset 50%%: want %q, got %s", want, r)
	}
	if r := crEnv(t, e, "images", "verify", "--store", store, "--read-data-subset", "150%"); r.code != 2 {
		t.Errorf("verify --read-data-subset 150%%: %s", r)
	}
	// Damage one chunk in the bucket: verify names it, exit 8, and leaves
	// it as it is.
	objs, _ := srv.keys(t, bucket, "st/chunks/")
	victim := objs[len(objs)/2]
	if _, err := srv.admin.PutObject(t.Context(), bucket, victim, strings.NewReader("not a zstd frame"), 16, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	r = crEnv(t, e, "images", "verify", "--store", store)
	name := victim[strings.LastIndexByte(victim, '/')+1:]
	if r.code != 8 || !strings.Contains(r.out, "DAMAGED snapshot "+rep.ID+": file ") || !strings.Contains(r.out, ", chunk "+name+": decode: ") {
		t.Errorf("verify of a damaged chunk: %s", r)
	}
	if n := srv.bytesUnder(t, bucket, victim); n != 16 {
		t.Errorf("verify changed the damaged chunk (%d bytes)", n)
	}
	// rm removes the snapshot and, with it, its chunks.
	if r := crEnv(t, e, "images", "rm", "--store", store, rep.ID); r.code != 0 {
		t.Fatalf("rm: %s", r)
	}
	if left, _ := srv.keys(t, bucket, "st/"); len(left) != 1 || left[0] != "st/config" {
		t.Errorf("after rm: %v, want only st/config", left)
	}
	if es := s3Snapshots(t, e, store); len(es) != 0 {
		t.Errorf("after rm: %v", es)
	}
}

// TestS3LockObjects: another host's live lock object keeps a snapshot's
// retention from removing chunks (they stay, and it says so) and makes an
// explicit prune wait; an expired one is ignored and removed.
func TestS3LockObjects(t *testing.T) {
	srv := needS3(t)
	bucket := srv.bucket(t)
	store := "s3://" + bucket + "/st"
	e := srv.env("CR_HOSTNAME=this-host")
	startJob(t, "/s3lock", "--mem", "16")
	if r := crEnv(t, e, "snapshot", "/s3lock", "--store", store); r.code != 0 {
		t.Fatalf("snapshot: %s", r)
	}
	putLock := func(key string, at time.Time) {
		t.Helper()
		b := fmt.Sprintf(`{"host":"other-host","pid":1,"exclusive":false,"time":%q,"expires":%q}`+"\n",
			at.UTC().Format(time.RFC3339), at.Add(5*time.Minute).UTC().Format(time.RFC3339))
		if _, err := srv.admin.PutObject(t.Context(), bucket, key, strings.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	live := "st/locks/00000000000000aa.json"
	putLock(live, time.Now())
	before := srv.bytesUnder(t, bucket, "st/chunks/")
	r := crEnv(t, e, "snapshot", "/s3lock", "--store", store, "--keep-last", "1")
	if r.code != 0 || !strings.Contains(r.err, "retention applied; unused chunks stay for a later prune: prune: lock store "+store+": store is locked by host other-host pid 1 (shared, since ") {
		t.Fatalf("snapshot with retention while another host holds the store: %s", r)
	}
	if n := len(s3Snapshots(t, e, store)); n != 1 {
		t.Errorf("%d snapshots after --keep-last 1", n)
	}
	mid := srv.bytesUnder(t, bucket, "st/chunks/")
	if mid <= before {
		t.Errorf("chunks went from %d to %d bytes while another host held the store: some were removed", before, mid)
	}
	// An explicit prune waits for the other host (here: until its lock is
	// deleted), then removes the unused chunks.
	time.AfterFunc(2*time.Second, func() { srv.admin.RemoveObject(t.Context(), bucket, live, minio.RemoveObjectOptions{}) })
	t0 := time.Now()
	if r := crEnv(t, e, "images", "prune", "--store", store); r.code != 0 {
		t.Fatalf("prune: %s", r)
	}
	if d := time.Since(t0); d < 1500*time.Millisecond {
		t.Errorf("prune did not wait for the other host's lock (%v)", d)
	}
	if r := crEnv(t, e, "images", "verify", "--store", store); r.code != 0 {
		t.Errorf("verify after prune: %s", r)
	}
	if n := srv.bytesUnder(t, bucket, "st/chunks/"); n >= mid {
		t.Errorf("prune freed nothing: %d bytes of chunks, %d before it", n, mid)
	}
	// A lock whose expiry passed (its holder died) neither blocks nor stays.
	stale := "st/locks/00000000000000bb.json"
	putLock(stale, time.Now().Add(-time.Hour))
	t0 = time.Now()
	if r := crEnv(t, e, "images", "prune", "--store", store); r.code != 0 || time.Since(t0) > 5*time.Second {
		t.Fatalf("prune next to an expired lock: %s (%v)", r, time.Since(t0))
	}
	if objs, _ := srv.keys(t, bucket, "st/locks/"); len(objs) != 0 {
		t.Errorf("lock objects left: %v", objs)
	}
}
