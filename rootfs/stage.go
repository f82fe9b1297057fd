package rootfs

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Entries of an image's staging directory that hold file systems (see
// docs/image-format.md): they are files like any other, hashed in the
// manifest.
const FSDir = "fs"

// StageUpper writes the upper layer at dir as the layer archive of
// manifest container i and returns the entry's name.
func StageUpper(staging string, i int, dir string) (string, LayerStats, error) {
	name := path.Join(FSDir, strconv.Itoa(i), "upper.tar")
	st, err := writeLayerFile(filepath.Join(staging, name), dir)
	return name, st, err
}

// StageDelta writes what changed in the upper layer at dir since its
// pre-copy snap (WriteDelta) as the entry of manifest container i, and
// returns the entry's name.
func StageDelta(staging string, i int, dir string, snap *Snapshot, writing func(rel string) bool) (string, DeltaStats, error) {
	name := path.Join(FSDir, strconv.Itoa(i), "upper.tar")
	p := filepath.Join(staging, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", DeltaStats{}, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", DeltaStats{}, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	st, err := WriteDelta(w, dir, snap, writing)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", st, fmt.Errorf("archive the changes of %s: %w", dir, err)
	}
	return name, st, nil
}

// StageLower writes the lower at dir, whose digest is digest, as a layer
// archive and returns the entry's name. Containers sharing a lower share
// the entry.
func StageLower(staging, digest, dir string) (string, error) {
	name := path.Join(FSDir, "lower", strings.TrimPrefix(digest, DigestPrefix)+".tar")
	if _, err := os.Stat(filepath.Join(staging, name)); err == nil {
		return name, nil
	}
	_, err := writeLayerFile(filepath.Join(staging, name), dir)
	return name, err
}

func writeLayerFile(p, dir string) (LayerStats, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return LayerStats{}, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return LayerStats{}, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	st, err := WriteLayer(w, dir)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return st, fmt.Errorf("archive %s: %w", dir, err)
	}
	return st, nil
}

// InitExe is the host path of the running container init whose host pid
// is pid: inside a --rootfs container it runs from BinDir, which binDir
// is on the host.
func InitExe(pid int, binDir string) (string, error) {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "", fmt.Errorf("container init: %w", err)
	}
	return filepath.Join(binDir, filepath.Base(exe)), nil
}

// StageInit copies the container init's executable into the staging
// directory and returns the entry's name.
func StageInit(staging, exe string) (string, error) {
	name := path.Join(FSDir, "bin", filepath.Base(exe))
	dst := filepath.Join(staging, name)
	if _, err := os.Stat(dst); err == nil {
		return name, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return "", err
	}
	in, err := os.Open(exe)
	if err != nil {
		return "", fmt.Errorf("container init: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o700)
	if err != nil {
		return "", err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return name, err
}

// InstallInit installs the init executable src (an image's entry) into
// binDir under its own name, cr-<the first 24 hex digits of its sha256>,
// unless it is there already; a content that does not match its name is
// refused.
func InstallInit(src, binDir string) error {
	base := filepath.Base(src)
	want, ok := strings.CutPrefix(base, "cr-")
	if !ok || len(want) != 24 {
		return fmt.Errorf("init binary %q: not a cr-<hash> name", base)
	}
	dst := filepath.Join(binDir, base)
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(binDir, ".cr-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(tmp, h), in)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("install init binary: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil))[:24]; got != want {
		return fmt.Errorf("init binary %s: content has sha256 %s...", base, got)
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// Mount mounts the overlay at l.Merged in the caller's mount namespace: a
// restore gives it to CRIU as the container's root, then Unmount detaches
// it there (the restored container keeps its own).
func (l Layout) Mount() error {
	opts := "lowerdir=" + escape(l.Lower) + ",upperdir=" + escape(l.Upper) + ",workdir=" + escape(l.Work)
	if err := unix.Mount("overlay", l.Merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", l.Merged, err)
	}
	// Private, so that CRIU's bind of it propagates nowhere.
	_ = unix.Mount("", l.Merged, "", unix.MS_PRIVATE, "")
	return nil
}

// Unmount detaches what Mount mounted.
func (l Layout) Unmount() {
	_ = unix.Unmount(l.Merged, unix.MNT_DETACH)
}
