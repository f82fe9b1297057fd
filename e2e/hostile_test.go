package e2e

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
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
