package images

import (
	"fmt"
	"io/fs"
	"path/filepath"
)

// StagedEntry is a file or directory of a staging dir, as an image holds
// it.
type StagedEntry struct {
	Name string // slash-separated, relative to the staging dir
	Path string // on disk
	Dir  bool
	Mode uint32 // permission bits
}

// StagingEntries lists the staging dir src in the order an image holds its
// entries (lexical, as filepath.WalkDir walks): directories and regular
// files only, each with a name an image may hold and none of its reserved
// names. WriteArchive writes what it lists, and the snapshot store stores
// it, so that both see the same image.
func StagingEntries(src string) ([]StagedEntry, error) {
	var entries []StagedEntry
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == src {
			if !d.IsDir() {
				return fmt.Errorf("staging dir %s is not a directory", src)
			}
			return nil
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if err := checkName(name); err != nil {
			return fmt.Errorf("staging entry %q: %w", name, err)
		}
		if reserved(name) {
			return fmt.Errorf("staging dir holds reserved name %q", name)
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return fmt.Errorf("staging entry %q is not a regular file or directory (%s)", name, d.Type())
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		entries = append(entries, StagedEntry{Name: name, Path: p, Dir: d.IsDir(), Mode: uint32(fi.Mode().Perm())})
		return nil
	})
	return entries, err
}
