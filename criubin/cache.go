package criubin

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"syscall"
)

// CacheDir is where the CRIU that scripts/provision.sh builds keeps its
// cache of kernel features (criu.kdat: it is built with RUNDIR set to this
// directory), and where cr keeps the versions of CRIU binaries it asked.
// CRIU keeps its cache only on tmpfs, so that it goes at reboot; /run is not
// tmpfs on every machine (on this kind it is not), /dev/shm is. Without the
// cache every CRIU run probes the kernel again, about 30 ms here.
const CacheDir = "/dev/shm/cr-criu"

// PrepareCache makes CacheDir a directory of root's with mode 0700,
// removing whatever else is at that path first (/dev/shm is writable by
// everyone, and CRIU trusts its cache). Callers may ignore its error:
// without the cache CRIU only runs slower.
func PrepareCache() error { return prepareCache(CacheDir) }

func prepareCache(dir string) error {
	if cacheUsable(dir) {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("prepare %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("prepare %s: %w", dir, err)
	}
	if !cacheUsable(dir) {
		return fmt.Errorf("prepare %s: not a private directory of root's", dir)
	}
	return nil
}

// cacheUsable reports whether dir is a directory (not a link) owned by
// root, with mode 0700.
func cacheUsable(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Uid == 0 && os.Geteuid() == 0
}

// versionsFile maps a CRIU binary (path, size, modification time, inode) to
// its `criu --version`, so that a cr command does not run CRIU just to ask.
const versionsFile = "versions.json"

// readVersions returns the versions file of dir, or nil if dir is not a
// usable cache or holds none.
func readVersions(dir string) map[string]string {
	if !cacheUsable(dir) {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dir, versionsFile))
	if err != nil {
		return nil
	}
	var m map[string]string
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}

// saveVersion records out for key beside known (as readVersions returned
// it), best effort, replacing the file atomically (past 16 binaries it
// starts afresh).
func saveVersion(dir string, known map[string]string, key, out string) {
	if !cacheUsable(dir) {
		return
	}
	m := map[string]string{}
	if len(known) <= 16 {
		maps.Copy(m, known)
	}
	m[key] = out
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	f, err := os.CreateTemp(dir, versionsFile+".*")
	if err != nil {
		return
	}
	_, werr := f.Write(b)
	if cerr := f.Close(); werr != nil || cerr != nil {
		os.Remove(f.Name())
		return
	}
	if os.Rename(f.Name(), filepath.Join(dir, versionsFile)) != nil {
		os.Remove(f.Name())
	}
}

func versionKeyString(path string, fi os.FileInfo) string {
	ino := uint64(0)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return fmt.Sprintf("%s|%d|%d|%d", path, fi.Size(), fi.ModTime().UnixNano(), ino)
}
