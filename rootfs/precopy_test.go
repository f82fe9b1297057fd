package rootfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// preCopied pre-copies src into a fresh directory and returns it with
// the snapshot.
func preCopied(t *testing.T, src string) (string, *Snapshot) {
	t.Helper()
	var buf bytes.Buffer
	snap, err := WritePreCopy(&buf, src, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if _, err := ReadLayerLimited(&buf, dst, Limits{MaxBytes: 1 << 30, MaxFiles: 1000}); err != nil {
		t.Fatal(err)
	}
	return dst, snap
}

func digestOf(t *testing.T, dir string) string {
	t.Helper()
	d, err := Digest(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A delta over a pre-copy carries only what changed, and applied to the
// pre-copied tree gives the tree as it is now: changed, new and removed
// files, a directory removed with its content, changes of type, mode,
// owner and xattrs, a new hard link, a sparse file; the time of a
// directory whose entries changed is the source's.
func TestDeltaOverPreCopy(t *testing.T) {
	src := upperTree(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	at := func(p string) string { return filepath.Join(src, p) }
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB, unchanged
	must(os.WriteFile(at("big"), big, 0o644))
	must(os.MkdirAll(at("gone/deep"), 0o755))
	must(os.WriteFile(at("gone/deep/f"), []byte("x"), 0o644))
	must(os.WriteFile(at("becomes-dir"), []byte("file"), 0o644))
	must(os.WriteFile(at("chmod"), []byte("c"), 0o644))
	must(os.WriteFile(at("linked"), []byte("l"), 0o644))
	old := time.Now().Add(-time.Hour)
	for _, p := range []string{"big", "becomes-dir", "chmod", "linked"} {
		must(os.Chtimes(at(p), old, old))
	}
	dst, snap := preCopied(t, src)
	if got, want := digestOf(t, dst), digestOf(t, src); got != want {
		t.Fatalf("pre-copy differs from its source")
	}

	must(os.WriteFile(at("etc/passwd"), []byte("changed\n"), 0o644))
	must(os.WriteFile(at("new"), []byte("new file\n"), 0o600))
	must(os.RemoveAll(at("gone")))
	must(os.Remove(at("fifo")))
	must(os.Remove(at("becomes-dir")))
	must(os.MkdirAll(at("becomes-dir/sub"), 0o750))
	must(os.Chmod(at("chmod"), 0o600))
	must(os.Link(at("linked"), at("linked2")))
	must(unix.Setxattr(at("suid"), "user.new", []byte("v"), 0))
	must(os.Remove(at("etc/symlink")))
	must(os.Symlink("elsewhere", at("etc/symlink")))

	var buf bytes.Buffer
	st, err := WriteDelta(&buf, src, snap, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Removed != 2 || st.Bytes > 1<<20 {
		t.Errorf("delta %+v: want 2 removals (gone/, fifo), and not the unchanged 8 MiB", st)
	}
	if buf.Len() > 1<<20 {
		t.Errorf("delta of %d bytes carries unchanged files", buf.Len())
	}
	names := layerNames(t, buf.Bytes())
	for _, unchanged := range []string{"big", "sparse"} {
		if strings.Contains(" "+names+" ", " "+unchanged+" ") {
			t.Errorf("delta has the unchanged %s: %s", unchanged, names)
		}
	}
	if _, err := ApplyDelta(&buf, dst, Limits{MaxBytes: 1 << 20, MaxFiles: 100}); err != nil {
		t.Fatal(err)
	}
	if got, want := digestOf(t, dst), digestOf(t, src); got != want {
		t.Errorf("pre-copy plus delta differs from the tree; delta had %s", names)
	}
	var a, b unix.Stat_t
	must(unix.Lstat(at("."), &a))
	must(unix.Lstat(filepath.Join(dst, "."), &b))
	if a.Mtim != b.Mtim {
		t.Errorf("root's time %v, source's %v", b.Mtim, a.Mtim)
	}
	must(unix.Lstat(filepath.Join(dst, "linked2"), &b))
	if b.Nlink != 2 {
		t.Errorf("linked2 has %d links, want 2", b.Nlink)
	}
}

func layerNames(t *testing.T, b []byte) string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	return strings.Join(names, " ")
}

// A file rewritten with the same length and time (as through a writable
// mapping) is found by its hash when a process holds it open for
// writing, or when it was modified just before its pre-copy; otherwise
// its metadata decide, as rsync's.
func TestDeltaHashesWhatMetadataCannotTell(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "f")
	if err := os.WriteFile(p, []byte("aaaa"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	_, snap := preCopied(t, src)
	if err := os.WriteFile(p, []byte("bbbb"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		writing bool
		want    int
	}{{false, 0}, {true, 1}} {
		var buf bytes.Buffer
		st, err := WriteDelta(&buf, src, snap, func(rel string) bool { return tc.writing && rel == "f" })
		if err != nil {
			t.Fatal(err)
		}
		if st.Files != tc.want {
			t.Errorf("open for writing %v: %d files in the delta, want %d", tc.writing, st.Files, tc.want)
		}
	}

	// Racy: modified within the timestamps' granularity of its pre-copy.
	if err := os.WriteFile(p, []byte("cccc"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, snap = preCopied(t, src)
	var s unix.Stat_t
	unix.Lstat(p, &s)
	if err := os.WriteFile(p, []byte("dddd"), 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(s.Mtim.Unix())
	os.Chtimes(p, mt, mt)
	var buf bytes.Buffer
	if st, err := WriteDelta(&buf, src, snap, nil); err != nil || st.Files != 1 {
		t.Errorf("racy file: %+v %v, want it in the delta", st, err)
	}
}

// Pre-copy and delta readers refuse what could escape or overflow their
// tree: unsafe names, removals outside a delta, more than declared.
func TestPreCopyReadersRefuse(t *testing.T) {
	layer := func(hs ...*tar.Header) *bytes.Buffer {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			h.Format = tar.FormatPAX
			tw.WriteHeader(h)
			tw.Write(make([]byte, h.Size))
		}
		tw.Close()
		return &b
	}
	removal := &tar.Header{Name: "x", Typeflag: tar.TypeReg, PAXRecords: map[string]string{paxRemove: "1"}}
	for _, tc := range []struct {
		name  string
		b     *bytes.Buffer
		delta bool
		want  error
	}{
		{"escape", layer(&tar.Header{Name: "../x", Typeflag: tar.TypeReg}), true, ErrUnsafeLayer},
		{"removal in a layer", layer(removal), false, ErrUnsafeLayer},
		{"removal of the root", layer(&tar.Header{Name: ".", Typeflag: tar.TypeReg, PAXRecords: map[string]string{paxRemove: "1"}}), true, ErrUnsafeLayer},
		{"too many bytes", layer(&tar.Header{Name: "a", Typeflag: tar.TypeReg, Size: 2048}), false, ErrTooLarge},
		{"too many entries", layer(&tar.Header{Name: "a", Typeflag: tar.TypeDir}, &tar.Header{Name: "b", Typeflag: tar.TypeDir}, &tar.Header{Name: "c", Typeflag: tar.TypeDir}), true, ErrTooLarge},
	} {
		dir := t.TempDir()
		outside := filepath.Join(filepath.Dir(dir), "x")
		var err error
		lim := Limits{MaxBytes: 1024, MaxFiles: 2}
		if tc.delta {
			_, err = ApplyDelta(tc.b, dir, lim)
		} else {
			_, err = ReadLayerLimited(tc.b, dir, lim)
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if _, err := os.Lstat(outside); err == nil {
			t.Errorf("%s: wrote %s", tc.name, outside)
		}
	}
}

// A tree that grows past its declared bound while it is pre-copied is
// refused rather than sent beyond it.
func TestPreCopyBound(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), make([]byte, 4096), 0o644)
	if _, err := WritePreCopy(&bytes.Buffer{}, src, 4095); !errors.Is(err, ErrGrew) {
		t.Errorf("over the bound: %v, want ErrGrew", err)
	}
}
