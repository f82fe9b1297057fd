package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// applets are the busybox commands the test rootfs links.
var applets = []string{"sh", "cat", "ls", "echo", "sleep", "rm", "dd", "grep", "cut"}

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
