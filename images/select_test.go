package images

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// notPages keeps everything but the page contents.
func notPages(name string) bool { return !strings.HasPrefix(path.Base(name), "pages-") }

func TestExtractSelected(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	m := testManifest()
	img := archiveBytes(t, src, m, CompressionZstd)

	dst := t.TempDir()
	got, err := ExtractSelected(context.Background(), bytes.NewReader(img), dst, Limits{}, notPages)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := manifestJSON(t, got), manifestJSON(t, m); g != w {
		t.Errorf("manifest differs:\n got %s\nwant %s", g, w)
	}
	// The result is the staging dir without its pages files.
	want := makeStaging(t, nil, dirs)
	skipped := 0
	for _, f := range files {
		if !notPages(f.name) {
			skipped++
			continue
		}
		p := filepath.Join(want, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if skipped == 0 {
		t.Fatal("test staging has no pages files to skip")
	}
	// Directory modes: copy those of the full staging dir.
	for _, d := range dirs {
		fi, err := os.Stat(filepath.Join(src, d))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(want, d), fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	assertSameTree(t, want, dst)
}

// A skipped file is still verified: corrupting it fails the extraction and
// leaves the destination empty.
func TestExtractSelectedVerifiesSkipped(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	plain := archiveBytes(t, src, testManifest(), CompressionNone)
	pages := files[0] // checkpoint/pages-1.img
	if notPages(pages.name) {
		t.Fatalf("%s is not a pages file", pages.name)
	}
	i := bytes.Index(plain, pages.data[:64])
	if i < 0 {
		t.Fatal("pages content not found in the archive")
	}
	b := bytes.Clone(plain)
	b[i+10] ^= 1
	dst := t.TempDir()
	_, err := ExtractSelected(context.Background(), bytes.NewReader(b), dst, Limits{}, notPages)
	assertIs(t, err, ErrCorrupt)
	if err != nil && !strings.Contains(err.Error(), pages.name) {
		t.Errorf("error %q does not name %s", err, pages.name)
	}
	assertEmptyDir(t, dst)

	// And a missing file is a missing image, not a corrupt one.
	_, err = ExtractSelectedFile(context.Background(), filepath.Join(t.TempDir(), "none.cr"), dst, Limits{}, notPages)
	assertIs(t, err, os.ErrNotExist)
}
