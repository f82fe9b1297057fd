package images

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Rootfs is the file system part of a --rootfs container's image (see
// docs/image-format.md, "Root file systems"): the entries that hold its
// upper layer and its init's binary, and the digest that names its lower.
type Rootfs struct {
	// Lower is the digest of the lower layer ("sha256:" and 64 hex
	// digits), found at restore in the host's rootfs cache.
	Lower string `json:"lower"`
	// LowerEntry, with --with-rootfs, is the entry holding the lower
	// itself as a layer archive: "fs/lower/<hex>.tar".
	LowerEntry string `json:"lower_entry,omitempty"`
	// Upper is the entry holding the upper layer as a layer archive:
	// "fs/<i>/upper.tar", i the container's index in the manifest.
	Upper string `json:"upper"`
	// Init is the entry holding the container init's executable,
	// "fs/bin/cr-<hash>", installed at restore where the host's cr keeps
	// its init binaries.
	Init string `json:"init"`
	// UpperFiles, UpperBytes and Deleted count the upper layer: entries
	// other than directories, bytes of regular files, whiteouts.
	UpperFiles int   `json:"upper_files"`
	UpperBytes int64 `json:"upper_bytes"`
	Deleted    int   `json:"deleted"`
	// UpperDelta: the upper entry holds only what changed since a
	// migration sent the upper before the freeze (a delta,
	// rootfs.WriteDelta), and restores only where that pre-copy is; the
	// counts are the delta's, Removed its removals.
	UpperDelta bool `json:"upper_delta,omitempty"`
	Removed    int  `json:"removed,omitempty"`
}

// validate checks that r names a lower by a well-formed digest and that
// its entries are files of the archive (listed in files).
func (r *Rootfs) validate(files map[string]bool) error {
	if r == nil {
		return nil
	}
	x, ok := strings.CutPrefix(r.Lower, "sha256:")
	if b, err := hex.DecodeString(x); !ok || err != nil || len(b) != 32 || strings.ToLower(x) != x {
		return fmt.Errorf("bad lower digest %q", r.Lower)
	}
	if r.Upper == "" || r.Init == "" {
		return errors.New("missing entry")
	}
	for _, e := range []string{r.Upper, r.Init, r.LowerEntry} {
		if e != "" && !files[e] {
			return fmt.Errorf("entry %q not in the archive", e)
		}
	}
	if r.UpperFiles < 0 || r.UpperBytes < 0 || r.Deleted < 0 || r.Removed < 0 {
		return errors.New("negative counts")
	}
	return nil
}
