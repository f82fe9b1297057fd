package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// image is a fresh image path in the test's temp dir.
func image(t *testing.T) string { return filepath.Join(t.TempDir(), "img.cr") }

// insidePids lists the pids of a container as seen inside it.
func insidePids(t *testing.T, path string) []int {
	var pids []int
	for _, p := range ps(t, path) {
		pids = append(pids, p.Pid)
	}
	sort.Ints(pids)
	return pids
}

func gone(t *testing.T, path string) {
	t.Helper()
	if _, ok := ls(t)[path]; ok {
		t.Fatalf("%s still exists", path)
	}
}

func TestCheckpointRestoreCounter(t *testing.T) {
	cf := filepath.Join(t.TempDir(), "counter")
	j := startJob(t, "/ck/counter", "--counter-file", cf, "--children", "2")
	time.Sleep(300 * time.Millisecond)
	before := j.ask(t)
	pidsBefore := insidePids(t, "/ck/counter")
	img := image(t)
	mustCr(t, "checkpoint", "/ck", "-o", img)
	gone(t, "/ck/counter")
	gone(t, "/ck")
	atDump := readCounter(t, cf) // the job was frozen, then killed: the file holds its last value
	time.Sleep(300 * time.Millisecond)
	if readCounter(t, cf) != atDump {
		t.Fatalf("counter file changed after the job was checkpointed and removed")
	}
	mustCr(t, "restore", img)
	killAtCleanup(t, "/ck")
	after := j.ask(t)
	if after.Counter < atDump || after.Counter > atDump+200 {
		t.Errorf("counter after restore = %d, want to continue from %d (no reset, no jump)", after.Counter, atDump)
	}
	if d := after.CounterFile - after.Counter; d < -1 || d > 1 {
		t.Errorf("counter file %d disagrees with memory %d after restore", after.CounterFile, after.Counter)
	}
	if !j.progresses(t, after.Counter) {
		t.Errorf("counter stopped after restore at %d", after.Counter)
	}
	if after.Pid != before.Pid || fmt.Sprint(after.Children) != fmt.Sprint(before.Children) {
		t.Errorf("pids changed: job %d->%d, children %v->%v", before.Pid, after.Pid, before.Children, after.Children)
	}
	if got := insidePids(t, "/ck/counter"); fmt.Sprint(got) != fmt.Sprint(pidsBefore) {
		t.Errorf("pids inside the container: %v before, %v after restore", pidsBefore, got)
	}
	if after.Hostname != "counter" {
		t.Errorf("hostname after restore = %q", after.Hostname)
	}
}

func readCounter(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v int64
	fmt.Sscan(strings.TrimSpace(string(b)), &v)
	return v
}

func TestCheckpointSysVIPC(t *testing.T) {
	j := startJob(t, "/ipc", "--ipc")
	before := j.ask(t)
	if before.ShmData == "" || len(before.SemValues) != 3 || len(before.Msgs) != 3 {
		t.Fatalf("job did not set up its IPC objects: %+v", before)
	}
	img := image(t)
	mustCr(t, "checkpoint", "/ipc", "-o", img)
	gone(t, "/ipc")
	mustCr(t, "restore", img)
	killAtCleanup(t, "/ipc")
	after := j.ask(t)
	if after.ShmID != before.ShmID || after.ShmData != before.ShmData {
		t.Errorf("shm: id %d %q before, id %d %q after", before.ShmID, before.ShmData, after.ShmID, after.ShmData)
	}
	if after.SemID != before.SemID || fmt.Sprint(after.SemValues) != "[3 5 7]" {
		t.Errorf("semaphores: id %d before, id %d %v after", before.SemID, after.SemID, after.SemValues)
	}
	if after.MsgID != before.MsgID || strings.Join(after.Msgs, "|") != "first message|second message|third message" {
		t.Errorf("messages: id %d before, id %d %q after", before.MsgID, after.MsgID, after.Msgs)
	}
	// The objects are there for other processes of the container too.
	out := mustCr(t, "enter", "/ipc", "--", "ipcs")
	for _, want := range []string{fmt.Sprint(before.ShmID), fmt.Sprint(before.SemID), fmt.Sprint(before.MsgID)} {
		if !strings.Contains(out, want) {
			t.Errorf("ipcs inside the restored container lacks id %s:\n%s", want, out)
		}
	}
}

func TestCheckpointNestedSubtree(t *testing.T) {
	ja := startJob(t, "/nest/a")
	jb := startJob(t, "/nest/a/b", "--children", "1")
	jc := startJob(t, "/nest/c")
	start(t, "/other", "sleep", "1000") // outside the subtree: untouched
	ra, rb, rc := ja.ask(t), jb.ask(t), jc.ask(t)
	img := image(t)
	mustCr(t, "checkpoint", "/nest", "-o", img)
	for _, p := range []string{"/nest", "/nest/a", "/nest/a/b", "/nest/c"} {
		gone(t, p)
	}
	if ls(t)["/other"].State != "running" {
		t.Fatalf("/other was disturbed by checkpointing /nest")
	}
	mustCr(t, "restore", img)
	killAtCleanup(t, "/nest")
	l := ls(t)
	for _, p := range []string{"/nest/a", "/nest/a/b", "/nest/c"} {
		if l[p].State != "running" {
			t.Errorf("%s after restore: %+v", p, l[p])
		}
	}
	for _, c := range []struct {
		j      *job
		before Report
	}{{ja, ra}, {jb, rb}, {jc, rc}} {
		r := c.j.ask(t)
		if r.Pid != c.before.Pid || r.Counter < c.before.Counter {
			t.Errorf("%s: pid %d->%d counter %d->%d", c.j.path, c.before.Pid, r.Pid, c.before.Counter, r.Counter)
		}
	}
	// Restored containers can be checkpointed again, and restored again.
	img2 := image(t)
	mustCr(t, "checkpoint", "/nest", "-o", img2)
	mustCr(t, "restore", img2)
	if r := jb.ask(t); r.Pid != rb.Pid {
		t.Errorf("after a second round trip /nest/a/b's job has pid %d, want %d", r.Pid, rb.Pid)
	}
}

func TestCheckpointLeaveRunning(t *testing.T) {
	j := startJob(t, "/lr")
	before := j.ask(t)
	img := image(t)
	out := mustCr(t, "checkpoint", "--leave-running", "--json", "/lr", "-o", img)
	if !strings.Contains(out, `"left_running": true`) || !strings.Contains(out, `"frozen_seconds"`) {
		t.Errorf("checkpoint --json report: %s", out)
	}
	if ls(t)["/lr"].State != "running" {
		t.Fatalf("--leave-running: source not running")
	}
	if !j.progresses(t, before.Counter) {
		t.Errorf("source stopped counting after --leave-running")
	}
	orig := j.ask(t)
	// Two independent copies from one image, while the original runs.
	for _, as := range []string{"/copy1", "/copy2"} {
		mustCr(t, "restore", "--as", as, img)
		killAtCleanup(t, as)
	}
	c1 := &job{path: "/copy1", report: j.report}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("events of the last minute:", cr(t, "events", "--since", "1m"))
		}
	})
	r1 := c1.ask(t)
	if r1.Pid != before.Pid || r1.Counter < before.Counter || r1.Counter > orig.Counter+100 {
		t.Errorf("copy1: pid %d counter %d (original pid %d, counter %d..%d)", r1.Pid, r1.Counter, before.Pid, before.Counter, orig.Counter)
	}
	l := ls(t)
	for _, p := range []string{"/lr", "/copy1", "/copy2"} {
		if l[p].State != "running" {
			t.Errorf("%s: %+v, want running", p, l[p])
		}
	}
	// Independent: killing one copy leaves the others.
	mustCr(t, "kill", "/copy1")
	if l := ls(t); l["/copy2"].State != "running" || l["/lr"].State != "running" {
		t.Errorf("killing /copy1 disturbed the others: %+v", l)
	}
	wantFail(t, 4, "exists", "restore", "--as", "/copy2", img)
}

func TestCheckpointBigMemory(t *testing.T) {
	j := startJob(t, "/big", "--mem", "512")
	before := j.ask(t)
	if before.MemSHA != before.MemSHAAtInit || before.MemBytes != 512<<20 {
		t.Fatalf("job memory not set up: %+v", before)
	}
	img := image(t)
	mustCr(t, "checkpoint", "/big", "-o", img)
	gone(t, "/big")
	st, _ := os.Stat(img)
	// zstd, the default, makes this memory 0.32 of its size (S2 0.35); a
	// quarter of it is random.
	if st.Size() > 512<<20/3 {
		t.Errorf("image of 512 MiB (a quarter zeros, half text) is %d bytes: compression not working", st.Size())
	}
	if b := readHead(t, img, 4); string(b) != "\x28\xb5\x2f\xfd" {
		t.Errorf("image begins with % x, want zstd's magic (the default codec)", b)
	}
	mustCr(t, "restore", img)
	killAtCleanup(t, "/big")
	after := j.ask(t)
	if after.MemSHA != before.MemSHAAtInit {
		t.Errorf("memory checksum after restore %s, want %s", after.MemSHA, before.MemSHAAtInit)
	}
}

func TestCheckpointFailures(t *testing.T) {
	// No file held open: its size changes as the job runs on, and a
	// restore checks the host's files before it reads the image's pages,
	// so it would refuse any copy of the image before finding it corrupt.
	j := startJob(t, "/fail")
	img := image(t)
	// zstd: S2's reader reports a stream cut inside a chunk as corrupt
	// input, not as truncated (the image is refused either way).
	mustCr(t, "checkpoint", "--leave-running", "--compress", "zstd", "/fail", "-o", img)
	good, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x40
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(i * 7)
	}
	cases := []struct {
		name, file, want string
		code             int
	}{
		{"corrupt byte", write("corrupt.cr", flipped), "corrupt", 8},
		{"truncated", write("trunc.cr", good[:len(good)*2/3]), "truncated", 8},
		{"random file", write("random.cr", random), "not a cr image", 8},
		{"missing file", filepath.Join(dir, "nope.cr"), "no such image", 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			leavesBefore := countLeaves(t)
			wantFail(t, c.code, c.want, "restore", "--as", "/never", c.file)
			if _, ok := ls(t)["/never"]; ok || countLeaves(t) != leavesBefore {
				t.Errorf("a refused restore created something")
			}
		})
	}
	// A newer format version: a plain-tar image with its header edited.
	plain := image(t)
	mustCr(t, "checkpoint", "--leave-running", "--compress", "none", "/fail", "-o", plain)
	b, _ := os.ReadFile(plain)
	newer := bytes.Replace(b, []byte(`"version":2}`), []byte(`"version":9}`), 1)
	if bytes.Equal(newer, b) {
		t.Fatalf("could not find the format version in the image header")
	}
	wantFail(t, 8, "version", "restore", "--as", "/never", write("newer.cr", newer))
	wantFail(t, 6, "criu", "restore", "--criu", "/nonexistent/criu", "--as", "/never", img)
	wantFail(t, 4, "exists", "restore", "--as", "/fail", img)
	wantFail(t, 4, "exists", "checkpoint", "/fail", "-o", img) // never overwrites an image

	// The source still runs after all of that.
	if !j.progresses(t, j.ask(t).Counter) || ls(t)["/fail"].State != "running" {
		t.Errorf("source not running after failed operations")
	}
}

func TestCheckpointUndumpable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	j := startJob(t, "/tcp", "--connect", ln.Addr().String())
	before := j.ask(t)
	img := image(t)
	r := cr(t, "checkpoint", "/tcp", "-o", img)
	if r.code != 7 || !strings.Contains(r.err, "TCP") || !strings.Contains(r.err, ".log") {
		t.Errorf("checkpoint of a job with an established TCP connection: want exit 7 with CRIU's reason and its log, got %s", r)
	}
	if _, err := os.Stat(img); err == nil {
		t.Errorf("a failed checkpoint left an image")
	}
	if ents, _ := os.ReadDir(filepath.Dir(img)); len(ents) != 0 {
		t.Errorf("a failed checkpoint left files: %v", ents)
	}
	if l := ls(t)["/tcp"]; l.State != "running" {
		t.Fatalf("source after a failed checkpoint: %+v, want running (thawed)", l)
	}
	if !j.progresses(t, before.Counter) {
		t.Errorf("source makes no progress after a failed checkpoint")
	}
	if ents, _ := os.ReadDir(filepath.Join(workDir, "staging")); len(ents) != 0 {
		t.Errorf("staging area not cleaned: %v", ents)
	}
	// CRIU's log is kept in cr's state directory, one per failure, even
	// for two in the same second.
	first := keptLog(t, r.err)
	second := keptLog(t, cr(t, "checkpoint", "/tcp", "-o", img).err)
	if first == second {
		t.Errorf("two failures share the log %s", first)
	}
}

// keptLog returns the CRIU log a failure's message names, and checks that
// it is kept in cr's state directory and holds CRIU's error lines.
func keptLog(t *testing.T, stderr string) string {
	t.Helper()
	_, p, ok := strings.Cut(stderr, "(full log: ")
	p, _, ok2 := strings.Cut(p, ")")
	if !ok || !ok2 {
		t.Fatalf("no log named in %q", stderr)
	}
	if filepath.Dir(p) != filepath.Join(workDir, "state", "criu-logs") {
		t.Errorf("CRIU's log kept at %s, want it in $CR_STATE_DIR/criu-logs", p)
	}
	if b, err := os.ReadFile(p); err != nil || !strings.Contains(string(b), "Error (") {
		t.Errorf("kept log %s: %v, %d bytes without CRIU's errors", p, err, len(b))
	}
	return p
}

// checkpointctl is the reference reader of single-container checkpoint
// archives; cr's images of one container follow its conventions.
func TestCheckpointctlReadsImage(t *testing.T) {
	bin, err := exec.LookPath("checkpointctl")
	if err != nil {
		gobin, _ := exec.Command("go", "env", "GOPATH").Output()
		bin = filepath.Join(strings.TrimSpace(string(gobin)), "bin", "checkpointctl")
		if _, err := os.Stat(bin); err != nil {
			t.Skip("checkpointctl is not installed and scripts/provision.sh could not install it (go install github.com/checkpoint-restore/checkpointctl@v1.6.0)")
		}
	}
	j := startJob(t, "/ctlread", "--children", "1")
	if r := j.ask(t); len(r.Children) != 1 { // it has started its child
		t.Fatalf("the job reports children %v, want one", r.Children)
	}
	img := image(t)
	// checkpointctl reads zstd (and gzip, plain) archives, not S2, cr's
	// default: an image for checkpointctl is written with --compress zstd.
	mustCr(t, "checkpoint", "--leave-running", "--compress", "zstd", "/ctlread", "-o", img)
	ours := inspectJSON(t, mustCr(t, "inspect", "--json", img))
	if len(ours.Containers) != 1 || ours.Containers[0].Dump == nil {
		t.Fatalf("cr inspect: %+v", ours)
	}
	out, err := exec.Command(bin, "inspect", "--format", "json", "--stats", "--metadata", "--ps-tree", img).Output()
	if err != nil {
		t.Fatalf("checkpointctl inspect: %v\n%s", err, out)
	}
	type proc struct {
		Pid      int    `json:"pid"`
		Command  string `json:"command"`
		Children []proc `json:"children"`
	}
	var theirs []struct {
		Name    string `json:"container_name"`
		Runtime string `json:"runtime"`
		Size    struct {
			Total int64 `json:"total_size"`
			Pages int64 `json:"memory_pages_size"`
		} `json:"checkpoint_size"`
		Stats struct {
			PagesScanned uint64 `json:"pages_scanned"`
			PagesWritten uint64 `json:"pages_written"`
			FrozenTime   uint32 `json:"frozen_time"`
		} `json:"statistics"`
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Tree proc `json:"process_tree"`
	}
	if err := json.Unmarshal(out, &theirs); err != nil || len(theirs) != 1 {
		t.Fatalf("checkpointctl inspect --format json: %v\n%s", err, out)
	}
	c, dump := theirs[0], ours.Containers[0].Dump
	if c.Name != "ctlread" || c.Runtime != "cr" {
		t.Errorf("checkpointctl: container %q, runtime %q; want ctlread, cr", c.Name, c.Runtime)
	}
	if c.Stats.PagesWritten == 0 || c.Stats.PagesWritten != dump.PagesWritten || c.Stats.PagesScanned != dump.PagesScanned ||
		float64(c.Stats.FrozenTime)/1e6 != dump.FrozenTime { // microseconds there, seconds in cr's JSON
		t.Errorf("checkpointctl's dump statistics %+v, cr inspect's %+v", c.Stats, *dump)
	}
	if c.Size.Pages != int64(c.Stats.PagesWritten)*4096 || c.Size.Total < c.Size.Pages {
		t.Errorf("checkpointctl: checkpoint size %+v for %d pages written", c.Size, c.Stats.PagesWritten)
	}
	var maj, mnr, sub int
	fmt.Sscanf(ours.CRIUVersion, "%d.%d.%d", &maj, &mnr, &sub)
	for k, v := range map[string]string{
		"org.criu.checkpoint.criu.version":   fmt.Sprint(maj*10000 + mnr*100 + sub),
		"org.criu.checkpoint.host.arch":      ours.Arch,
		"org.criu.checkpoint.container.name": "ctlread",
		"org.criu.checkpoint.host.kernel":    ours.Kernel,
		"org.criu.checkpoint.engine.name":    "cr",
	} {
		if got := c.Metadata.Annotations[k]; got != v || v == "" || v == "0" {
			t.Errorf("checkpointctl: %s = %q, want %q (from cr inspect)", k, got, v)
		}
	}
	// The process tree: the container init, the job, its child.
	if c.Tree.Pid != 1 || len(c.Tree.Children) != 1 || c.Tree.Children[0].Command != "testjob" || len(c.Tree.Children[0].Children) != 1 {
		t.Errorf("checkpointctl's process tree %+v, want init > testjob > one child", c.Tree)
	}
}

// An interrupted checkpoint leaves the job running and no image, says so
// in one line, and exits 130, whether the signal comes during the dump or
// the write, with or without --leave-running.
func TestCheckpointInterrupted(t *testing.T) {
	j := startJob(t, "/intr", "--mem", "256")
	before := j.ask(t)
	interrupted := 0
	for _, tc := range []struct {
		sig          syscall.Signal
		leaveRunning bool
		delay        time.Duration
	}{
		{syscall.SIGINT, true, 150 * time.Millisecond},
		{syscall.SIGINT, true, 450 * time.Millisecond},
		{syscall.SIGTERM, false, 150 * time.Millisecond}, // last: a checkpoint that finishes ends the job
	} {
		img := image(t)
		args := []string{"checkpoint", "/intr", "-o", img}
		if tc.leaveRunning {
			args = append(args, "--leave-running")
		}
		c := exec.Command(crBin, args...)
		c.Env = append(os.Environ(), env...)
		var stdout, stderr bytes.Buffer
		c.Stdout, c.Stderr = &stdout, &stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(tc.delay) // inside the dump or the write of 256 MiB
		_ = c.Process.Signal(tc.sig)
		if err := c.Wait(); err == nil {
			t.Logf("%v after %s: the checkpoint finished first", tc.sig, tc.delay)
			if !tc.leaveRunning {
				t.Skip("the checkpoint finished before the signal arrived; the job is gone")
			}
			continue
		}
		if c.ProcessState.Sys().(syscall.WaitStatus).Signaled() {
			// The signal came before cr handled signals: nothing was begun.
			t.Logf("%v after %s: cr was killed before it began", tc.sig, tc.delay)
			continue
		}
		interrupted++
		if code := c.ProcessState.ExitCode(); code != 130 || stderr.String() != "interrupted; /intr left running\n" || stdout.Len() > 0 {
			t.Errorf("%v after %s: exit %d, stdout %q, stderr %q; want exit 130 and \"interrupted; /intr left running\"", tc.sig, tc.delay, code, stdout.String(), stderr.String())
		}
		if _, err := os.Stat(img); err == nil {
			t.Errorf("an interrupted checkpoint left an image")
		}
		if ents, _ := os.ReadDir(filepath.Dir(img)); len(ents) != 0 {
			t.Errorf("an interrupted checkpoint left files: %v", ents)
		}
		if l := ls(t)["/intr"]; l.State != "running" {
			t.Fatalf("job after an interrupted checkpoint: %+v (%s)", l, stderr.String())
		}
		if !j.progresses(t, before.Counter) {
			t.Errorf("job makes no progress after an interrupted checkpoint")
		}
		if r := j.ask(t); r.MemSHA != before.MemSHAAtInit {
			t.Errorf("job memory changed by an interrupted checkpoint")
		}
	}
	if interrupted == 0 {
		t.Skip("every checkpoint finished before the signal; nothing was tested")
	}
}

// A restore recreates only cr's own cgroups, never the other cgroups the
// host had at dump time (CRIU records every cgroup below the job's, and in
// the hierarchies cr does not use the job sits at the root).
func TestRestoreLeavesHostCgroupsAlone(t *testing.T) {
	var probes []string
	for _, h := range []string{"/sys/fs/cgroup/freezer", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids"} {
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		p := filepath.Join(h, fmt.Sprintf("cr-e2e-probe-%d", os.Getpid()))
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		probes = append(probes, p)
		t.Cleanup(func() { _ = syscall.Rmdir(p) })
	}
	if len(probes) == 0 {
		t.Skip("no cgroup v1 hierarchy besides cr's: nothing a restore could recreate")
	}
	startJob(t, "/hostcg")
	img := image(t)
	mustCr(t, "checkpoint", "/hostcg", "-o", img)
	for _, p := range probes {
		if err := syscall.Rmdir(p); err != nil {
			t.Fatal(err)
		}
	}
	mustCr(t, "restore", img)
	killAtCleanup(t, "/hostcg")
	for _, p := range probes {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("restore recreated %s, a cgroup of the host removed after the dump", p)
		}
	}
}

// An interrupted restore leaves nothing: no node, no process, no staging.
func TestRestoreInterrupted(t *testing.T) {
	j := startJob(t, "/rintr", "--mem", "256")
	img := image(t)
	mustCr(t, "checkpoint", "/rintr", "-o", img)
	_ = j
	leaves := countLeaves(t)
	interrupted := 0
	for _, delay := range []time.Duration{5 * time.Millisecond, 25 * time.Millisecond, 60 * time.Millisecond} {
		c := exec.Command(crBin, "restore", img)
		c.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay) // extracting 256 MiB, or restoring it
		_ = c.Process.Signal(syscall.SIGTERM)
		if err := c.Wait(); err == nil {
			t.Logf("restore finished before the signal (%s); removing it", delay)
			mustCr(t, "kill", "/rintr")
			continue
		}
		// A signal before cr handles it kills cr at once (nothing begun);
		// after, cr says it was interrupted.
		killed := c.ProcessState.Sys().(syscall.WaitStatus).Signaled()
		if !killed {
			interrupted++
		}
		t.Logf("after %s: killed by the signal %v: %s", delay, killed, strings.TrimSpace(stderr.String()))
		if code := c.ProcessState.ExitCode(); !killed && (code != 130 || stderr.String() != "interrupted; nothing was restored\n") {
			t.Errorf("interrupted restore: exit %d, stderr %q; want 130 and \"interrupted; nothing was restored\"", code, stderr.String())
		}
		if _, ok := ls(t)["/rintr"]; ok {
			t.Errorf("an interrupted restore left /rintr")
		}
		if n := countLeaves(t); n != leaves {
			t.Errorf("%d container cgroups after an interrupted restore, %d before", n, leaves)
		}
		if s := sourceStaging(t); len(s) != 0 {
			t.Errorf("an interrupted restore left staging: %v", s)
		}
	}
	if interrupted == 0 {
		t.Skip("no restore was interrupted while cr handled signals; nothing was tested")
	}
}

// cr checkpoint from another network namespace than the job's (which shares the
// namespace it was started in) is refused with the way out, before CRIU
// fails on locking a namespace that is not the job's own.
func TestCheckpointFromOtherNetns(t *testing.T) {
	j := startJob(t, "/netns")
	before := j.ask(t)
	img := image(t)
	c := exec.Command("unshare", "--net", crBin, "checkpoint", "/netns", "-o", img)
	c.Env = append(os.Environ(), env...)
	out, err := c.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 10 || !strings.Contains(string(out), "shares the network namespace it was started in") {
		t.Errorf("checkpoint from another netns: %v, %s; want exit 10 and the reason", err, out)
	}
	if _, err := os.Stat(img); err == nil {
		t.Error("an image was written")
	}
	if !j.progresses(t, before.Counter) {
		t.Error("the job does not run on")
	}
}

// readHead returns the first n bytes of the file at path.
func readHead(t *testing.T, path string, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	k, _ := io.ReadFull(f, b)
	return b[:k]
}
