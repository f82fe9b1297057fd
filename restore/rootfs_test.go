package restore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
)

// A migration's image whose upper is a delta restores only where its
// pre-copy is; a pre-copied lower goes into the rootfs cache, after which
// the image needs nothing more of this host.
func TestRootfsLowersPreCopied(t *testing.T) {
	tr := &nstree.Tree{StateDir: t.TempDir(), RootfsCache: filepath.Join(t.TempDir(), "cache")}
	lower := t.TempDir()
	if err := os.WriteFile(filepath.Join(lower, "f"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	digest, err := rootfs.Digest(lower)
	if err != nil {
		t.Fatal(err)
	}
	m := &images.Manifest{Root: "/vm", Containers: []images.Container{{Path: "/", Dir: "checkpoint",
		Rootfs: &images.Rootfs{Lower: digest, Upper: "fs/0/upper.tar", Init: "fs/bin/cr-x", UpperDelta: true}}}}

	_, err = rootfsLowers(tr, t.TempDir(), m, nil)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "/vm: its image holds only what changed in its file system since a migration's pre-copy, which this host does not have") {
		t.Errorf("a delta without its pre-copy: %v", err)
	}
	pre := &rootfs.PreCopied{Uppers: map[string]string{"/": t.TempDir()}, Lowers: map[string]string{digest: lower}}
	lowers, err := rootfsLowers(tr, t.TempDir(), m, pre)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := rootfs.Digest(lowers[0]); err != nil || got != digest || !strings.HasPrefix(lowers[0], tr.RootfsCache) {
		t.Errorf("lower %s (digest %s, %v), want the pre-copied one in the cache", lowers[0], got, err)
	}
	if _, err := os.Stat(lower); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the pre-copied lower was copied, not moved: %v", err)
	}
}
