package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/cr-dev/cr/images"
)

// hugeImage is a crafted image whose first file declares size bytes, of
// which only have follow (zeros, so the image is small).
func hugeImage(t *testing.T, size, have int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(zw)
	hdr := []byte(`{"format":"cr-image","version":1}` + "\n")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: images.HeaderFile, Mode: 0o644, Size: int64(len(hdr))}))
	_, err = tw.Write(hdr)
	must(err)
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "checkpoint/", Mode: 0o700}))
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "checkpoint/pages-1.img", Mode: 0o600, Size: size}))
	zeros := make([]byte, 1<<20)
	for n := int64(0); n < have; n += int64(len(zeros)) {
		_, err := tw.Write(zeros)
		must(err)
	}
	// No Flush: the entry stays incomplete, as in a truncated image.
	must(zw.Close())
	return buf.Bytes()
}

func free(t *testing.T, dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// TestExtractChecksSpace: an image that declares more than the staging
// directory can hold is refused before anything of it is written, not
// after filling the disk.
func TestExtractChecksSpace(t *testing.T) {
	staging := t.TempDir()
	size := free(t, staging) + 1<<30
	img := hugeImage(t, size, 32<<20)
	t.Logf("a %d-byte image declaring %d bytes", len(img), size)
	o := Options{StagingDir: staging, Limits: images.Limits{MaxBytes: 1 << 50}}
	dir, _, err := Extract(context.Background(), bytes.NewReader(img), "huge.cr", o)
	if err == nil {
		dir.Remove()
		t.Fatal("a huge image was extracted")
	}
	if !errors.Is(err, images.ErrTooLarge) || !strings.Contains(err.Error(), "free in the staging directory") {
		t.Fatalf("Extract: %v, want ErrTooLarge naming the free space", err)
	}
	if ents, _ := os.ReadDir(staging); len(ents) != 0 {
		t.Errorf("staging holds %d entries after the refusal", len(ents))
	}
}
