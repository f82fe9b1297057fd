// Package treetest reads back a directory tree that code under test wrote,
// for tests that check exactly what was written: it is imported only by
// tests.
package treetest

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// Entry is what a tree holds at one name.
type Entry struct {
	Dir    bool
	Mode   uint32 // permission bits, as found
	Size   int64
	SHA256 string // hex, of a regular file's content
}

// Scan returns every entry below root by slash-separated name (none if
// root does not exist), failing on anything but directories and regular
// files without special mode bits. It makes every directory 0700 and every
// file 0600 as it reads them, so that whoever runs the test can read and
// remove them; the modes it returns are those it found.
func Scan(t testing.TB, root string) map[string]Entry {
	t.Helper()
	tree := map[string]Entry{}
	var walk func(dir, prefix string)
	walk = func(dir, prefix string) {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) && dir == root {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			p, name := filepath.Join(dir, e.Name()), prefix+e.Name()
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			mode := fi.Mode()
			if mode&^(fs.ModePerm|fs.ModeDir) != 0 || !(mode.IsDir() || mode.IsRegular()) {
				t.Fatalf("%s: mode %v: not a plain directory or regular file", name, mode)
			}
			en := Entry{Dir: mode.IsDir(), Mode: uint32(mode.Perm())}
			if en.Dir {
				if err := os.Chmod(p, 0o700); err != nil {
					t.Fatal(err)
				}
				tree[name] = en
				walk(p, name+"/")
				continue
			}
			if err := os.Chmod(p, 0o600); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			en.Size, en.SHA256 = int64(len(b)), hex.EncodeToString(sum[:])
			tree[name] = en
		}
	}
	walk(root, "")
	return tree
}
