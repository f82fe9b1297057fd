package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/internal/imagetest"
)

// stateNodes counts the nodes in the private tree's state directory: what
// a refused command must not change.
func stateNodes(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(workDir, "state", "c"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(ents)
}

// craftImage writes an image whose manifest is m, around one container
// dir with a file that is no CRIU image: it verifies (checksums are the
// writer's), but cannot be restored by CRIU.
func craftImage(t *testing.T, m *images.Manifest) string {
	t.Helper()
	staging := t.TempDir()
	if err := os.MkdirAll(filepath.Join(staging, "checkpoint"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "checkpoint", "inventory.img"), []byte("not really"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Format, m.Version, m.Arch, m.CRIUVersion, m.Created = images.FormatName, images.FormatVersion, runtime.GOARCH, 40000, time.Now()
	out := filepath.Join(t.TempDir(), "crafted.cr")
	if _, err := images.WriteFile(context.Background(), out, staging, m, images.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	return out
}

func hostileManifest(root string) *images.Manifest {
	return &images.Manifest{Root: root, Containers: []images.Container{{Path: "/", Dir: "checkpoint", Command: []string{"sleep", "1000"}}}}
}

// TestRestoreHostileRoot: an image that names its own place in the tree
// with a name cr run would refuse is a bad image, with or without --as,
// and nothing is created.
func TestRestoreHostileRoot(t *testing.T) {
	roots := []string{"/../x", "/\x1b[8mhidden", "/lab/.hidden", "/new\nline", "/nul\x00x", "/rlo\u202etxt.cr", "/" + strings.Repeat("n", 200)}
	var imgs []string
	for _, root := range roots {
		imgs = append(imgs, craftImage(t, hostileManifest(root)))
	}
	child := hostileManifest("/lab")
	child.Containers = append(child.Containers, images.Container{Path: "/\x1b[2Jclear", Empty: true})
	imgs = append(imgs, craftImage(t, child))
	before := stateNodes(t)
	for i, img := range imgs {
		for _, as := range [][]string{nil, {"--as", "/ok"}} {
			args := append(append([]string{"restore"}, as...), img)
			r := cr(t, args...)
			if r.code != 8 || !strings.Contains(r.err, "corrupt image: check manifest: ") || !strings.Contains(r.err, "invalid name") {
				t.Errorf("image %d: cr %v: want exit 8 naming the invalid name, got %s", i, args, r)
			}
			if strings.ContainsAny(r.err, "\x1b\x00\u202e") || strings.Count(r.err, "\n") != 1 {
				t.Errorf("image %d: the message prints the name raw: %q", i, r.err)
			}
			wantFail(t, 8, "invalid name", "inspect", img)
		}
	}
	if n := stateNodes(t); n != before {
		t.Errorf("refused restores created %d nodes", n-before)
	}
}

// TestRunEmptyPath: cr run "" -- CMD is a usage error, not /unnamed1.
func TestRunEmptyPath(t *testing.T) {
	before := stateNodes(t)
	wantFail(t, 2, `empty path ""`, "run", "", "--", "sleep", "1000")
	if _, ok := ls(t)["/unnamed1"]; ok {
		killAtCleanup(t, "/unnamed1")
		t.Error(`cr run "" created /unnamed1`)
	}
	if n := stateNodes(t); n != before {
		t.Errorf("cr run \"\" created %d nodes", n-before)
	}
}

// TestImageOpenErrorsAgree: inspect and restore answer the same bad path
// with the same exit status.
func TestImageOpenErrorsAgree(t *testing.T) {
	dir := t.TempDir()
	notImage := filepath.Join(dir, "text.cr")
	os.WriteFile(notImage, []byte("just some text\n"), 0o600)
	loop := filepath.Join(dir, "loop.cr")
	os.Symlink(filepath.Join(dir, "loop2.cr"), loop)
	os.Symlink(loop, filepath.Join(dir, "loop2.cr"))
	dangling := filepath.Join(dir, "dangling.cr")
	os.Symlink(filepath.Join(dir, "nowhere"), dangling)
	for _, tc := range []struct {
		name, path, want string
		code             int
	}{
		{"directory", dir, "is a directory", 8},
		{"missing", filepath.Join(dir, "missing.cr"), "no such image", 3},
		{"symlink loop", loop, "no such image", 3},
		{"dangling symlink", dangling, "no such image", 3},
		{"not an image", notImage, "not a cr image", 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantFail(t, tc.code, tc.want, "inspect", tc.path)
			wantFail(t, tc.code, tc.want, "restore", tc.path)
			wantFail(t, tc.code, tc.want, "restore", "--as", "/x", tc.path)
		})
	}
}

// TestCheckpointOutputChecked: an -o that cannot be written is refused
// before the job is touched: no dump started (its staging area is never
// created) and the job runs on.
func TestCheckpointOutputChecked(t *testing.T) {
	j := startJob(t, "/out")
	dir := t.TempDir()
	dangling := filepath.Join(dir, "dangling.cr")
	os.Symlink(filepath.Join(dir, "nowhere.cr"), dangling)
	loop := filepath.Join(dir, "loop.cr")
	os.Symlink(filepath.Join(dir, "loop2.cr"), loop)
	os.Symlink(loop, filepath.Join(dir, "loop2.cr"))
	for _, tc := range []struct {
		name, out, want string
		code            int
	}{
		{"dangling symlink", dangling, "is a symlink", 4},
		{"symlink loop", loop, "is a symlink", 4},
		{"unwritable directory", "/proc/cr-e2e.cr", "cannot write in /proc", 1},
		{"missing directory", filepath.Join(dir, "no", "x.cr"), "cannot write in", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			staging := filepath.Join(t.TempDir(), "staging")
			r := crEnv(t, []string{"CR_STAGING=" + staging}, "checkpoint", "/out", "-o", tc.out)
			if r.code != tc.code || !strings.Contains(r.err, "cannot write the image: ") || !strings.Contains(r.err, tc.want) {
				t.Errorf("want exit %d and %q, got %s", tc.code, tc.want, r)
			}
			if strings.Contains(r.err, "left running") {
				t.Errorf("the job was dumped before the output was checked: %s", r.err)
			}
			if _, err := os.Stat(staging); !os.IsNotExist(err) {
				t.Errorf("a dump started before the output was checked (%s exists)", staging)
			}
			if _, err := os.Lstat(filepath.Join(dir, "nowhere.cr")); !os.IsNotExist(err) {
				t.Errorf("an image was written through the symlink")
			}
		})
	}
	if ls(t)["/out"].State != "running" || !j.progresses(t, j.ask(t).Counter) {
		t.Error("the job does not run on")
	}
}

// TestRestoreChecksSpace: a small image that declares more than the
// staging directory can hold is refused before it writes anything there
// (a 366 KB image once wrote 10 GiB into staging before failing).
func TestRestoreChecksSpace(t *testing.T) {
	staging, err := os.MkdirTemp("/dev/shm", "cr-e2e-staging-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(staging)
	free, err := images.FreeSpace(staging)
	if err != nil {
		t.Fatal(err)
	}
	size := free + 1<<30
	if size >= images.DefaultMaxBytes {
		t.Skipf("/dev/shm has %d bytes free: more than the default limit, which would refuse the image anyway", free)
	}
	img := filepath.Join(t.TempDir(), "huge.cr")
	if err := os.WriteFile(img, imagetest.Huge(t, size, 64<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	before := stateNodes(t)
	start := time.Now()
	r := crEnv(t, []string{"CR_STAGING=" + staging}, "restore", "--as", "/huge", img)
	if r.code != 8 || !strings.Contains(r.err, "image exceeds limits: checkpoint/pages-1.img takes the image to ") || !strings.Contains(r.err, "free in the staging directory") {
		t.Errorf("want exit 8 naming the free space, got %s", r)
	}
	t.Logf("refused in %s", time.Since(start))
	var written int64
	filepath.WalkDir(staging, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				written += fi.Size()
			}
		}
		return nil
	})
	if ents, _ := os.ReadDir(staging); len(ents) != 0 || written != 0 {
		t.Errorf("staging holds %d entries, %d bytes after the refusal", len(ents), written)
	}
	if n := stateNodes(t); n != before {
		t.Errorf("the refused restore created %d nodes", n-before)
	}
}

// TestMigrateDuringHandshakeFlood: 64 silent connections to cr serve from
// the sender's own address do not keep a real cr migrate out.
func TestMigrateDuringHandshakeFlood(t *testing.T) {
	h := newHost(t, "token")
	j := startJob(t, "/flood")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 64 {
		c, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
		if err != nil {
			t.Fatalf("flood: %v", err)
		}
		conns = append(conns, c)
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	r := cr(t, migrateArgs(h, "/flood")...)
	if r.code != 0 {
		t.Fatalf("cr migrate during a flood of 64 silent connections: %s", r)
	}
	t.Logf("migrated during the flood in %s", time.Since(start).Round(time.Millisecond))
	if !h.resumed(t, "flood") {
		t.Error("the job does not run at the destination")
	}
	if _, ok := ls(t)[j.path]; ok {
		t.Error("the source is still here")
	}
	h.mustCr(t, "kill", "/flood")
}
