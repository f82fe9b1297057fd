package criuimg

import (
	"errors"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	remap "github.com/checkpoint-restore/go-criu/v7/crit/images/remap-file-path"
)

// RegFile is a regular file of the dumped tree that CRIU reopens by path at
// restore (open, mapped, or as an executable), with the size CRIU recorded
// and will insist on.
type RegFile struct {
	Path string
	Size uint64
	// MntID is the mount CRIU found it on (its mountpoints image), -1
	// if it did not say.
	MntID int32
}

// RegFiles lists the regular files of the CRIU images in dir that a
// restore needs on the host: those CRIU did not carry itself (deleted or
// unlinked files it remaps to a ghost or a link are left out), each once,
// sorted by path.
func RegFiles(dir string) ([]RegFile, error) {
	t, err := readFiles(dir)
	if err != nil {
		return nil, err
	}
	remapped := map[uint32]bool{}
	es, err := entries(dir, "remap-fpath.img", "REMAP_FPATH", func() *remap.RemapFilePathEntry { return &remap.RemapFilePathEntry{} })
	if err != nil && !errors.Is(err, errMissing) {
		return nil, err
	}
	for _, e := range es {
		remapped[e.GetOrigId()] = true
	}
	seen := map[string]bool{}
	var out []RegFile
	for id, e := range t.byID {
		r := e.GetReg()
		if r == nil || remapped[id] || r.GetMode()&syscall.S_IFMT != syscall.S_IFREG {
			continue
		}
		if seen[r.GetName()] {
			continue
		}
		seen[r.GetName()] = true
		out = append(out, RegFile{Path: r.GetName(), Size: r.GetSize(), MntID: r.GetMntId()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// TmpfsMounts are the ids of the tmpfs mounts of the mount namespaces the
// images in dir hold (mountpoints-*.img; none for a tree in the host's
// mount namespace): CRIU carries their content, so a file on one needs
// nothing of the restoring host.
func TmpfsMounts(dir string) (map[int32]bool, error) {
	names, err := filepath.Glob(filepath.Join(dir, "mountpoints-*.img"))
	if err != nil {
		return nil, err
	}
	out := map[int32]bool{}
	for _, n := range names {
		es, err := entries(dir, filepath.Base(n), "MNTS", func() *mnt.MntEntry { return &mnt.MntEntry{} })
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			if mnt.Fstype(e.GetFstype()) == mnt.Fstype_TMPFS {
				out[int32(e.GetMntId())] = true
			}
		}
	}
	return out, nil
}
