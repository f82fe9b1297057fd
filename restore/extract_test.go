package restore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/internal/imagetest"
)

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
	img := imagetest.Huge(t, size, 32<<20)
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
