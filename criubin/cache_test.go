package criubin

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The cache directory is made private, whatever was at its path.
func TestPrepareCache(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	base := t.TempDir()
	dir := filepath.Join(base, "cache")
	for _, setup := range []func(){
		func() {},
		func() { os.WriteFile(dir, []byte("x"), 0o600) },
		func() { os.Mkdir(dir, 0o777); os.Chmod(dir, 0o777) },
		func() {
			os.Mkdir(filepath.Join(base, "elsewhere"), 0o700)
			os.Symlink(filepath.Join(base, "elsewhere"), dir)
		},
		func() { os.Mkdir(dir, 0o700); os.Chown(dir, 65534, 65534) },
	} {
		os.RemoveAll(dir)
		setup()
		if err := prepareCache(dir); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || !cacheUsable(dir) {
			t.Fatalf("after prepareCache: %v, %v", fi, err)
		}
	}
	// A usable directory is kept as it is.
	os.WriteFile(filepath.Join(dir, "criu.kdat"), []byte("k"), 0o600)
	if err := prepareCache(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "criu.kdat")); err != nil {
		t.Errorf("prepareCache emptied a usable cache: %v", err)
	}
}

// A later cr command learns CRIU's version from the cache instead of
// running CRIU; a changed binary is asked again.
func TestVersionCachedOnDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := filepath.Join(t.TempDir(), "cache")
	if err := prepareCache(dir); err != nil {
		t.Fatal(err)
	}
	old := versionCacheDir
	versionCacheDir = dir
	t.Cleanup(func() { versionCacheDir = old })
	count := filepath.Join(t.TempDir(), "runs")
	criu := fakeCRIU(t, `echo run >> `+count+`; echo "Version: 4.1.1"`)
	runs := func() int {
		b, _ := os.ReadFile(count)
		return strings.Count(string(b), "run")
	}
	forget := func() {
		versionCache.Lock()
		versionCache.m = nil
		versionCache.Unlock()
	}
	for i := range 3 {
		forget() // as a new cr process
		v, err := GetVersion(criu)
		if err != nil || v.Code() != 40101 {
			t.Fatalf("GetVersion = %v, %v", v, err)
		}
		if runs() != 1 {
			t.Fatalf("call %d: CRIU ran %d times, want once", i+1, runs())
		}
	}
	// Rebuilt: another size.
	os.WriteFile(criu, []byte("#!/bin/sh\necho run >> "+count+"\necho 'Version: 4.2'\n"), 0o755)
	forget()
	if v, err := GetVersion(criu); err != nil || v.Code() != 40200 || runs() != 2 {
		t.Fatalf("after a rebuild: %v, %v, %d runs", v, err, runs())
	}
}
