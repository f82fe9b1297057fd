// Package imagetest makes crafted image files for tests of the readers'
// defences: it is imported only by tests.
package imagetest

import (
	"archive/tar"
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/cr-dev/cr/images"
)

// Huge is a crafted image whose first file declares size bytes, of which
// only have follow (zeros, so the image stays small): the entry stays
// incomplete, as in a truncated image.
func Huge(t testing.TB, size, have int64) []byte {
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
	// No Flush, no Close of tw.
	must(zw.Close())
	return buf.Bytes()
}
