package rootfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCache(t *testing.T) {
	lower := t.TempDir()
	if err := os.WriteFile(filepath.Join(lower, "f"), []byte("lower"), 0o644); err != nil {
		t.Fatal(err)
	}
	digest, err := Digest(lower)
	if err != nil {
		t.Fatal(err)
	}
	var layer bytes.Buffer
	if _, err := WriteLayer(&layer, lower); err != nil {
		t.Fatal(err)
	}
	c := Cache{Dir: filepath.Join(t.TempDir(), "cache")}
	if _, err := c.Lookup(digest); !errors.Is(err, ErrNoLower) || !strings.Contains(err.Error(), digest) {
		t.Errorf("lookup in an empty cache: %v", err)
	}
	// An archive whose content has another digest is not kept.
	other := DigestPrefix + strings.Repeat("0", 64)
	if _, err := c.Import(other, bytes.NewReader(layer.Bytes())); err == nil || !strings.Contains(err.Error(), "content has digest "+digest) {
		t.Errorf("import under a wrong digest: %v", err)
	}
	if ents, _ := os.ReadDir(c.Dir); len(ents) != 0 {
		t.Errorf("a refused import left %v", ents)
	}
	d, err := c.Import(digest, bytes.NewReader(layer.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(d, "f")); err != nil || string(b) != "lower" {
		t.Errorf("imported lower: %q %v", b, err)
	}
	if got, err := c.Lookup(digest); err != nil || got != d {
		t.Errorf("lookup after import: %s %v, want %s", got, err, d)
	}
	// Register links a directory, unless the digest is there already.
	c2 := Cache{Dir: filepath.Join(t.TempDir(), "cache2")}
	if err := c2.Register(digest, lower); err != nil {
		t.Fatal(err)
	}
	if got, err := c2.Lookup(digest); err != nil || got != lower {
		t.Errorf("lookup after register: %s %v, want %s", got, err, lower)
	}
	if _, err := c.Lookup("sha256:../../etc"); err == nil {
		t.Error("a malformed digest was looked up")
	}
}
