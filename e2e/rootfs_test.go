package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cr-dev/cr/rootfs"
)

// applets are the busybox commands the test rootfs links.
var applets = []string{"sh", "cat", "ls", "echo", "sleep", "rm", "dd", "grep", "cut", "readlink"}

// buildRootfs makes a small static root file system: busybox (Debian's
// busybox-static, which provision installs), the test job (built with
// CGO_ENABLED=0 by TestMain), and a few files of its own.
func buildRootfs(t *testing.T) string {
	t.Helper()
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Fatalf("no %s: install busybox-static (scripts/provision.sh does)", bb)
	}
	d := filepath.Join(t.TempDir(), "rootfs")
	for _, sub := range []string{"bin", "etc", "proc", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chmod(filepath.Dir(d), 0o755)
	copyTo := func(src, dst string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, dst), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyTo(bb, "bin/busybox")
	copyTo(jobBin, "testjob")
	for _, a := range applets {
		if err := os.Symlink("busybox", filepath.Join(d, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range map[string]string{"etc/lowerfile": "from the lower\n", "etc/keep": "0123456789\n"} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// nodeDir is the state directory of the container named name in the tree
// whose state directory is state.
func nodeDir(t testing.TB, state, name string) string {
	t.Helper()
	cfgs, _ := filepath.Glob(filepath.Join(state, "c", "*", "config.json"))
	for _, p := range cfgs {
		b, _ := os.ReadFile(p)
		var c struct {
			Name string `json:"name"`
		}
		if json.Unmarshal(b, &c) == nil && c.Name == name {
			return filepath.Dir(p)
		}
	}
	return ""
}

// mountpoints lists the mount points of a mountinfo table.
func mountpoints(mountinfo string) []string {
	var out []string
	for _, l := range strings.Split(mountinfo, "\n") {
		if f := strings.Fields(l); len(f) > 5 && strings.Contains(l, " - ") {
			out = append(out, f[4])
		}
	}
	return out
}

// runRootfs starts CMD in a --rootfs container at path (in the tree of
// extra's settings) and kills it at cleanup.
func runRootfs(t *testing.T, extra []string, lower, path string, cmd ...string) {
	t.Helper()
	r := crEnv(t, extra, append([]string{"run", "--rootfs", lower, path, "--"}, cmd...)...)
	if r.code != 0 || strings.TrimSpace(r.out) != path {
		t.Fatalf("cr run --rootfs: %s", r)
	}
	t.Cleanup(func() { crEnv(t, extra, "kill", "--grace", "1s", path) })
}

// waitLog waits until the container's log holds want and returns it.
func waitLog(t *testing.T, extra []string, path, want string) string {
	t.Helper()
	var log string
	waitFor(t, 20*time.Second, path+"'s log to say "+want, func() bool {
		log = crEnv(t, extra, "logs", path).out
		return strings.Contains(log, want)
	})
	return log
}

// A --rootfs container has its own root: an overlay on the directory,
// whose changes stay in the container's upper layer, with /proc, a
// minimal /dev, a private /tmp and cr's /.cr, and nothing of the host's
// mounts. Two containers share the lower without seeing each other's
// changes; killed, a container leaves nothing.
func TestRunRootfs(t *testing.T) {
	lower := buildRootfs(t)
	state := filepath.Join(workDir, "state")
	script := `cut -d' ' -f5 /proc/self/mountinfo | while read m; do echo "mount $m"; done
ls /dev | while read d; do echo "dev $d"; done
echo new > /newfile && rm /etc/lowerfile && echo ready
exec sleep 1000`
	runRootfs(t, nil, lower, "/rfa", "/bin/sh", "-c", script)
	runRootfs(t, nil, lower, "/rfb", "/bin/sleep", "1000")
	log := waitLog(t, nil, "/rfa", "ready")
	var mounts, devs []string
	for _, l := range strings.Split(log, "\n") {
		if m, ok := strings.CutPrefix(l, "mount "); ok {
			mounts = append(mounts, m)
		}
		if d, ok := strings.CutPrefix(l, "dev "); ok {
			devs = append(devs, d)
		}
	}
	sort.Strings(mounts)
	if got, want := strings.Join(mounts, " "), "/ /.cr /.cr/bin /.cr/state /dev /dev/pts /dev/shm /proc /tmp"; got != want {
		t.Errorf("mounts inside: %s\nwant exactly: %s\nlog:\n%s", got, want, log)
	}
	if got, want := strings.Join(devs, " "), "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"; got != want {
		t.Errorf("/dev inside: %s\nwant exactly: %s", got, want)
	}
	// The changes are the container's: in its upper, not in the lower,
	// and not in the other container's view.
	if _, err := os.Stat(filepath.Join(lower, "etc/lowerfile")); err != nil {
		t.Errorf("the lower lost a file the container deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(lower, "newfile")); err == nil {
		t.Error("the container wrote into the lower")
	}
	up := filepath.Join(nodeDir(t, state, "rfa"), "rootfs", "upper")
	if b, err := os.ReadFile(filepath.Join(up, "newfile")); err != nil || string(b) != "new\n" {
		t.Errorf("upper's newfile: %q %v", b, err)
	}
	if fi, err := os.Lstat(filepath.Join(up, "etc/lowerfile")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("upper has no whiteout for the deleted file: %v %v", fi, err)
	}
	r := cr(t, "enter", "/rfb", "--", "/bin/cat", "/etc/lowerfile")
	if r.code != 0 || r.out != "from the lower\n" {
		t.Errorf("the other container's view of the deleted file: %s", r)
	}
	if r := cr(t, "enter", "/rfb", "--", "/bin/ls", "/newfile"); r.code == 0 {
		t.Errorf("the other container sees the first one's new file: %s", r)
	}
	dir := nodeDir(t, state, "rfa")
	mustCr(t, "kill", "/rfa")
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("the killed container's state (and upper) %s is left", dir)
	}
}

// rootfsScript is a job that changes its root in every way an image must
// carry, then runs the test job: a file written and one appended to and
// held open (fd 4), a lower file deleted, another held open at offset 4
// (fd 3), data in /tmp and /dev/shm (tmpfs), and the test job's memory and
// counter file.
const rootfsScript = `rm /etc/lowerfile && echo tmpdata > /tmp/t && echo shmdata > /dev/shm/s && echo written > /written &&
exec 3</etc/keep 4>>/appended && dd bs=4 count=1 <&3 >/dev/null 2>&1 && echo line1 >&4 &&
exec /testjob --report /report.json --counter-file /counter --mem 16`

// rootfsHost is a second host for --rootfs containers that shares no
// file with this one: a tree, binary directory and rootfs cache of its
// own (cr serve restarted with them).
func rootfsHost(t *testing.T) *host {
	t.Helper()
	h := newHost(t, "token")
	h.kill(t)
	h.env = append(h.env, "CR_BIN_DIR="+filepath.Join(h.dir, "bin"), "CR_ROOTFS_CACHE="+filepath.Join(h.dir, "rootfs-cache"))
	h.start(t)
	return h
}

// askRootfs makes the test job in the --rootfs container at path report
// and reads the report through the container (its upper layer is not
// touched from outside: overlayfs does not allow that while mounted).
func askRootfs(t *testing.T, extra []string, path string) Report {
	t.Helper()
	in := func(args ...string) result {
		return crEnv(t, extra, append([]string{"enter", path, "--"}, args...)...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		in("/bin/rm", "-f", "/report.json")
		if r := crEnv(t, extra, "kill", "-s", "USR1", path); r.code != 0 {
			t.Fatalf("cr kill -s USR1: %s", r)
		}
		for i := 0; i < 20; i++ {
			var rep Report
			if r := in("/bin/cat", "/report.json"); r.code == 0 && json.Unmarshal([]byte(r.out), &rep) == nil {
				return rep
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
	t.Fatalf("job %s did not report", path)
	return Report{}
}

// waitRootfsJob waits for the first report of the test job at path.
func waitRootfsJob(t *testing.T, extra []string, path string) {
	t.Helper()
	waitFor(t, 30*time.Second, path+"'s job to start", func() bool {
		return crEnv(t, extra, "enter", path, "--", "/bin/cat", "/report.json").code == 0
	})
}

// checkRootfsJob checks that the job rootfsScript started, now at path in
// the tree of extra's settings, has its root, descriptors and memory as
// before.
func checkRootfsJob(t *testing.T, extra []string, path string, before Report) {
	t.Helper()
	after := askRootfs(t, extra, path)
	if after.Pid != before.Pid || after.Counter < before.Counter || after.MemSHA != before.MemSHAAtInit {
		t.Errorf("job after restore: pid %d -> %d, counter %d -> %d, memory %s (want %s)", before.Pid, after.Pid, before.Counter, after.Counter, after.MemSHA, before.MemSHAAtInit)
	}
	if d := after.CounterFile - after.Counter; d < -1 || d > 1 {
		t.Errorf("counter file %d disagrees with memory %d", after.CounterFile, after.Counter)
	}
	enter := func(cmd string) string {
		t.Helper()
		r := crEnv(t, extra, "enter", path, "--", "/bin/sh", "-c", cmd)
		if r.code != 0 {
			t.Fatalf("cr enter %s: %s", cmd, r)
		}
		return r.out
	}
	if got, want := enter("cat /tmp/t /dev/shm/s /written /appended; ls /etc"), "tmpdata\nshmdata\nwritten\nline1\nkeep\n"; got != want {
		t.Errorf("files in the root:\n%s\nwant:\n%s", got, want)
	}
	fds := enter(fmt.Sprintf("readlink /proc/%d/fd/3; readlink /proc/%d/fd/4; grep pos /proc/%d/fdinfo/3 /proc/%d/fdinfo/4", after.Pid, after.Pid, after.Pid, after.Pid))
	if want := fmt.Sprintf("/etc/keep\n/appended\n/proc/%d/fdinfo/3:pos:\t4\n/proc/%d/fdinfo/4:pos:\t6\n", after.Pid, after.Pid); fds != want {
		t.Errorf("descriptors:\n%s\nwant:\n%s", fds, want)
	}
}

// A --rootfs container checkpointed here restores on a host that shares
// no file with this one: refused, naming the lower's digest and creating
// nothing, while that host lacks the lower; with --with-rootfs its root
// (written, appended, deleted files, tmpfs data), its descriptors and
// offsets and its memory are all there.
func TestCheckpointRootfsOtherHost(t *testing.T) {
	h := rootfsHost(t)
	lower := buildRootfs(t)
	digest, err := rootfs.Digest(lower)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(workDir, "state")
	runRootfs(t, nil, lower, "/rfc", "/bin/sh", "-c", rootfsScript)
	waitRootfsJob(t, nil, "/rfc")
	before := askRootfs(t, nil, "/rfc")

	img := filepath.Join(t.TempDir(), "rfc.cr")
	mustCr(t, "checkpoint", "/rfc", "-o", img)
	if d := nodeDir(t, state, "rfc"); d != "" {
		t.Fatalf("the checkpointed container's state %s is left", d)
	}
	r := h.cr(t, "restore", img)
	want := "Error: image not restorable here: /rfc needs the rootfs " + digest + ", which is not in this host's rootfs cache (" + filepath.Join(h.dir, "rootfs-cache") + "); checkpoint with --with-rootfs to carry it\n"
	if r.code != 8 || r.err != want {
		t.Errorf("restore without the lower: %s\nwant exit 8 and %q", r, want)
	}
	if l := h.ls(t); len(l) != 0 {
		t.Errorf("a refused restore left %v", l)
	}
	if d, _ := filepath.Glob(filepath.Join(h.dir, "state", "c", "*")); len(d) != 0 {
		t.Errorf("a refused restore left %v", d)
	}

	// Back here (this host's cache has the lower), then across with it.
	mustCr(t, "restore", img)
	checkRootfsJob(t, nil, "/rfc", before)
	img2 := filepath.Join(t.TempDir(), "rfc2.cr")
	// --leave-running: the upper is archived while CRIU's dump holds the
	// container frozen, and the source runs on afterwards.
	mustCr(t, "checkpoint", "--leave-running", "--with-rootfs", "/rfc", "-o", img2)
	if now := askRootfs(t, nil, "/rfc"); now.Pid != before.Pid || now.MemSHA != before.MemSHAAtInit {
		t.Errorf("the source after checkpoint --leave-running: %+v", now)
	}
	mustCr(t, "kill", "/rfc")
	var ins struct {
		Containers []struct {
			Rootfs struct {
				Lower        string `json:"lower"`
				LowerCarried bool   `json:"lower_carried"`
				Deleted      int    `json:"deleted"`
				Changes      []struct {
					Path string `json:"path"`
					Kind string `json:"kind"`
					Size int64  `json:"size_bytes"`
				} `json:"changes"`
			} `json:"rootfs"`
		} `json:"containers"`
	}
	if err := json.Unmarshal([]byte(mustCr(t, "inspect", "--json", img2)), &ins); err != nil || len(ins.Containers) != 1 {
		t.Fatalf("cr inspect --json: %v", err)
	}
	fsr := ins.Containers[0].Rootfs
	var changes []string
	for _, c := range fsr.Changes {
		if c.Path != "/report.json" && c.Path != "/report.json.tmp" {
			changes = append(changes, fmt.Sprintf("%s %s %d", c.Path, c.Kind, c.Size))
		}
	}
	if got, want := strings.Join(changes, ", "), "/.cr dir 0, /appended file 6, /counter file 21, /etc dir 0, /etc/lowerfile deleted 0, /written file 8"; fsr.Lower != digest || !fsr.LowerCarried || fsr.Deleted != 1 || got != want {
		t.Errorf("cr inspect's rootfs: lower %s carried %v, %d deleted, changes %s\nwant lower %s carried, 1 deleted, changes %s", fsr.Lower, fsr.LowerCarried, fsr.Deleted, got, digest, want)
	}
	h.mustCr(t, "restore", img2)
	dst := nodeDir(t, filepath.Join(h.dir, "state"), "rfc")
	if dst == "" {
		t.Fatal("no /rfc at the destination")
	}
	checkRootfsJob(t, h.env, "/rfc", before)
	if d, _ := filepath.Glob(filepath.Join(h.dir, "bin", "cr-*")); len(d) != 1 {
		t.Errorf("destination's init binaries: %v, want the image's", d)
	}
	if d, err := os.Readlink(filepath.Join(h.dir, "rootfs-cache", strings.TrimPrefix(digest, "sha256:"))); err == nil {
		t.Errorf("destination's cache links to %s instead of holding the lower", d)
	}
	if l := ls(t); len(filterPrefix(l, "/rfc")) != 0 {
		t.Errorf("the source still has %v", l)
	}
}

// A --rootfs container migrates to a host that shares no file with this
// one: without the lower there, refused before the freeze (the source runs
// on, the message names the digest); with --with-rootfs it arrives with
// its root, descriptors and memory (its file systems sent before the
// freeze, what changed since after it), and nothing is left here.
func TestMigrateRootfs(t *testing.T) {
	h := rootfsHost(t)
	lower := buildRootfs(t)
	digest, err := rootfs.Digest(lower)
	if err != nil {
		t.Fatal(err)
	}
	runRootfs(t, nil, lower, "/rfm", "/bin/sh", "-c", rootfsScript)
	waitRootfsJob(t, nil, "/rfm")
	before := askRootfs(t, nil, "/rfm")

	r := cr(t, migrateArgs(h, "/rfm")...)
	want := "the rootfs " + digest + " is not in this host's rootfs cache (" + filepath.Join(h.dir, "rootfs-cache") + "); migrate with --with-rootfs to send it"
	if r.code == 0 || !strings.Contains(r.err, want) {
		t.Errorf("migrate to a host without the lower: %s\nwant a refusal saying %q", r, want)
	}
	if st := ls(t)["/rfm"]; st.State != "running" {
		t.Fatalf("source after the refusal: %+v", st)
	}
	if now := askRootfs(t, nil, "/rfm"); now.Pid != before.Pid || now.Counter < before.Counter {
		t.Errorf("source changed by the refusal: %+v -> %+v", before, now)
	}
	if l := h.ls(t); len(l) != 0 {
		t.Errorf("the destination has %v after a refusal", l)
	}

	out := mustCr(t, append(migrateArgs(h, "/rfm", "--with-rootfs"), "--json")...)
	var rep migrateReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Target != "/rfm" {
		t.Fatalf("cr migrate --json: %v\n%s", err, out)
	}
	// The lower and the upper went before the freeze; after it, what the
	// job changed since (its counter file, held open and rewritten every
	// 10 ms, which checkRootfsJob compares with its memory).
	if rep.PreCopyFiles < 10 || rep.ChangedFiles < 1 || rep.ChangedFiles >= rep.PreCopyFiles {
		t.Errorf("cr migrate --json: %d files before the freeze, %d changed since; want the lower's and the upper's, then a few", rep.PreCopyFiles, rep.ChangedFiles)
	}
	if s := h.staged(t); len(s) != 0 {
		t.Errorf("the destination's staging holds %v", s)
	}
	if l := ls(t); len(filterPrefix(l, "/rfm")) != 0 {
		t.Errorf("the source still has %v", l)
	}
	if d := nodeDir(t, filepath.Join(workDir, "state"), "rfm"); d != "" {
		t.Errorf("the source's state %s is left", d)
	}
	checkRootfsJob(t, h.env, "/rfm", before)
}
