package store

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cr-dev/cr/images"
)

// TestRecordManifestValidated: a snapshot record whose checksum is right
// but whose manifest would not pass as an image's (an escaping container
// dir, a hostile root, a path that disagrees with it) is damaged, not
// restored.
func TestRecordManifestValidated(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	stag := t.TempDir()
	writeTree(t, stag, map[string]string{"checkpoint/core-1.img": "core", "stats": ""})
	good, err := s.Add(ctx, stag, testManifest("/lab"), time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(s.recordPath(good.ID))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(r *record, m *images.Manifest)
	}{
		{"escaping dir", func(r *record, m *images.Manifest) { m.Containers[0].Dir = "../../../etc" }},
		{"dir not in files", func(r *record, m *images.Manifest) { m.Containers[0].Dir = "elsewhere" }},
		{"hostile root", func(r *record, m *images.Manifest) { m.Root, r.Path = "/\x1b[8mhidden", "/\x1b[8mhidden" }},
		{"dot root", func(r *record, m *images.Manifest) { m.Root, r.Path = "/lab/.hidden", "/lab/.hidden" }},
		{"path is not the root", func(r *record, m *images.Manifest) { r.Path = "/other" }},
		{"no format", func(r *record, m *images.Manifest) { m.Format = "" }},
		{"files differ", func(r *record, m *images.Manifest) { m.Files = m.Files[:1] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r record
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			var m images.Manifest
			if err := json.Unmarshal(r.Manifest, &m); err != nil {
				t.Fatal(err)
			}
			tc.edit(&r, &m)
			if r.Manifest, err = json.Marshal(&m); err != nil {
				t.Fatal(err)
			}
			rb, id, err := encodeRecord(&r)
			if err != nil {
				t.Fatal(err)
			}
			path := s.recordPath(id)
			if err := os.WriteFile(path, rb, 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(path)
			_, err = s.Get(id)
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("Get: %v, want a Damage", err)
			}
			dst := filepath.Join(t.TempDir(), "x")
			if _, err := s.Materialize(ctx, id, dst); !errors.Is(err, ErrDamaged) {
				t.Fatalf("Materialize: %v, want a Damage", err)
			}
			if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Materialize created %s", dst)
			}
		})
	}
	// Add refuses what a reader would refuse.
	if _, err := s.Add(ctx, stag, testManifest("/lab/.hidden"), time.Unix(2, 0)); err == nil {
		t.Error("Add stored a manifest with a hostile root")
	}
	if _, err := s.Get(good.ID); err != nil {
		t.Errorf("the good snapshot: %v", err)
	}
}

// TestMaterializeChecksSpace: a snapshot larger than the free space of its
// destination is refused before anything is written.
func TestMaterializeChecksSpace(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	stag := t.TempDir()
	writeTree(t, stag, map[string]string{"checkpoint/pages-1.img": string(make([]byte, 64<<10))})
	snap, err := s.Add(ctx, stag, testManifest("/lab"), time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	old := freeSpace
	defer func() { freeSpace = old }()
	freeSpace = func(string) (int64, error) { return 4096, nil }
	dst := filepath.Join(t.TempDir(), "x")
	_, err = s.Materialize(ctx, snap.ID, dst)
	if !errors.Is(err, images.ErrTooLarge) {
		t.Fatalf("Materialize into 4 KiB of free space: %v, want ErrTooLarge", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Materialize left %s", dst)
	}
	freeSpace = old
	if _, err := s.Materialize(ctx, snap.ID, dst); err != nil {
		t.Fatal(err)
	}
}
