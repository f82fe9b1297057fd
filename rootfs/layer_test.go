package rootfs

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// upperTree builds what an overlay's upper holds: files with modes and
// owners, a sparse file, hard links, a symbolic link, a whiteout, an
// opaque directory, a FIFO and extended attributes.
func upperTree(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: owners, devices and trusted.* xattrs")
	}
	d := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(d, "etc/opaque"), 0o755))
	must(os.WriteFile(filepath.Join(d, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644))
	must(os.WriteFile(filepath.Join(d, "suid"), []byte("#!/bin/sh\n"), 0o755))
	must(unix.Chmod(filepath.Join(d, "suid"), 0o4755))
	must(os.Chown(filepath.Join(d, "etc/passwd"), 1234, 5678))
	must(os.Link(filepath.Join(d, "etc/passwd"), filepath.Join(d, "etc/passwd.link")))
	must(os.Symlink("../etc/passwd", filepath.Join(d, "etc/symlink")))
	must(unix.Mknod(filepath.Join(d, "etc/deleted"), unix.S_IFCHR, 0))
	must(unix.Mkfifo(filepath.Join(d, "fifo"), 0o640))
	must(unix.Setxattr(filepath.Join(d, "etc/opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	must(unix.Setxattr(filepath.Join(d, "etc/passwd"), "user.note", []byte("kept"), 0))
	f, err := os.Create(filepath.Join(d, "sparse"))
	must(err)
	_, err = f.WriteAt([]byte("start"), 0)
	must(err)
	_, err = f.WriteAt([]byte("end"), 64<<20)
	must(err)
	must(f.Close())
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	must(os.Chtimes(filepath.Join(d, "etc/passwd"), old, old))
	return d
}

func TestLayerRoundTrip(t *testing.T) {
	src := upperTree(t)
	var buf bytes.Buffer
	st, err := WriteLayer(&buf, src)
	if err != nil {
		t.Fatal(err)
	}
	if st.Whiteout != 1 || st.Files != 7 {
		t.Errorf("write stats %+v, want 7 files, 1 whiteout", st)
	}
	if buf.Len() > 1<<20 {
		t.Errorf("archive of a 64 MiB sparse file is %d bytes: the hole was stored", buf.Len())
	}
	dst := t.TempDir()
	rst, err := ReadLayer(bytes.NewReader(buf.Bytes()), dst)
	if err != nil {
		t.Fatal(err)
	}
	if rst != st {
		t.Errorf("read stats %+v, written %+v", rst, st)
	}
	d1, err := Digest(src)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := Digest(dst)
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 || !ValidDigest(d1) {
		t.Errorf("digest of the copy %s, of the original %s", d2, d1)
	}
	var s unix.Stat_t
	if err := unix.Stat(filepath.Join(dst, "sparse"), &s); err != nil {
		t.Fatal(err)
	}
	if s.Size != 64<<20+3 || s.Blocks*512 > 1<<20 {
		t.Errorf("sparse file: size %d, %d blocks allocated", s.Size, s.Blocks)
	}
	var a, b unix.Stat_t
	_ = unix.Stat(filepath.Join(dst, "etc/passwd"), &a)
	_ = unix.Stat(filepath.Join(dst, "etc/passwd.link"), &b)
	if a.Ino != b.Ino || a.Uid != 1234 || a.Gid != 5678 {
		t.Errorf("hard link: inodes %d %d, owner %d:%d", a.Ino, b.Ino, a.Uid, a.Gid)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "suid")); fi == nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Errorf("set-uid bit lost: %v", fi)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "etc/passwd")); fi == nil || !fi.ModTime().Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("mtime lost: %v", fi)
	}
	v := make([]byte, 8)
	if n, err := unix.Getxattr(filepath.Join(dst, "etc/opaque"), "trusted.overlay.opaque", v); err != nil || string(v[:n]) != "y" {
		t.Errorf("opaque directory mark lost: %q %v", v, err)
	}
	// The digest sees a change of content, of owner and of a deletion.
	_ = os.Remove(filepath.Join(dst, "etc/deleted"))
	if d3, _ := Digest(dst); d3 == d1 {
		t.Error("digest did not change with a removed whiteout")
	}
}

func TestReadLayerRefusesEscapes(t *testing.T) {
	for _, h := range []*tar.Header{
		{Name: "../x", Typeflag: tar.TypeReg},
		{Name: "/etc/x", Typeflag: tar.TypeReg},
		{Name: "a/../../x", Typeflag: tar.TypeReg},
	} {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(h)
		_ = tw.Close()
		if _, err := ReadLayer(&buf, t.TempDir()); !errors.Is(err, ErrUnsafeLayer) {
			t.Errorf("%q: %v, want ErrUnsafeLayer", h.Name, err)
		}
	}
	// A symbolic link, then a file through it: os.Root refuses.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	out := t.TempDir()
	_ = tw.WriteHeader(&tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: out})
	_ = tw.WriteHeader(&tar.Header{Name: "l/x", Typeflag: tar.TypeReg, Mode: 0o644})
	_ = tw.Close()
	if _, err := ReadLayer(&buf, t.TempDir()); err == nil {
		t.Error("a file written through a symbolic link out of the tree")
	}
	if _, err := os.Stat(filepath.Join(out, "x")); err == nil {
		t.Error("the file escaped")
	}
}
