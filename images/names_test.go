package images

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hostileRoots are manifest roots that would create a node no cr command
// can name, or that forge lines in cr ls.
var hostileRoots = []string{
	"/../x", "/\x1b[8mhidden", "/lab/.hidden", "/lab/new\nline", "/nul\x00byte", "/rlo\u202eexe.rc",
	"/" + strings.Repeat("x", 200), "/", "", "lab", "/lab/", "/lab//x", "/-flag", "/with space",
}

// TestManifestHostileRoot: the root an image names for itself goes through
// the tree's own name rules.
func TestManifestHostileRoot(t *testing.T) {
	for _, root := range hostileRoots {
		m := testManifest()
		m.Format, m.Version = FormatName, FormatVersion
		m.Root = root
		if err := ValidateManifest(m); err == nil {
			t.Errorf("root %q accepted", root)
		}
		if _, err := DecodeManifest([]byte(manifestJSON(t, m))); err == nil {
			t.Errorf("DecodeManifest: root %q accepted", root)
		}
	}
}

// TestManifestHostileContainerPath: so do the containers' paths below it.
func TestManifestHostileContainerPath(t *testing.T) {
	for _, p := range []string{"/.hidden", "/mid/\x1b[2Jx", "/mid/a b", "/mid/-y", "/mid/" + strings.Repeat("y", 65), "/mid/\u202e"} {
		m := testManifest()
		m.Format, m.Version = FormatName, FormatVersion
		m.Containers[2].Path = p
		if !strings.HasPrefix(p, "/mid/") {
			m.Containers = m.Containers[:2]
			m.Containers[1].Path = p
		}
		if err := ValidateManifest(m); err == nil {
			t.Errorf("container path %q accepted", p)
		}
	}
	m := testManifest()
	m.Format, m.Version = FormatName, FormatVersion
	if err := ValidateManifest(m); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
}

// TestCheckOutput: where WriteFile would refuse to write, CheckOutput says
// so first: symlinks of every kind, directories, existing files, and a
// directory that takes no file.
func TestCheckOutput(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, "dangling.cr")))
	must(os.Symlink(filepath.Join(dir, "loop2.cr"), filepath.Join(dir, "loop1.cr")))
	must(os.Symlink(filepath.Join(dir, "loop1.cr"), filepath.Join(dir, "loop2.cr")))
	must(os.WriteFile(filepath.Join(dir, "file.cr"), nil, 0o600))
	must(os.Mkdir(filepath.Join(dir, "dir.cr"), 0o700))
	for name, want := range map[string]string{
		"dangling.cr": "is a symlink", "loop1.cr": "is a symlink", "file.cr": "exists", "dir.cr": "is a directory",
	} {
		err := CheckOutput(filepath.Join(dir, name), false)
		if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want ErrExist saying %q", name, err, want)
		}
	}
	for _, p := range []string{"/proc/cr-test.cr", filepath.Join(dir, "file.cr", "x.cr"), filepath.Join(dir, "missing", "x.cr")} {
		if err := CheckOutput(p, false); err == nil || !strings.Contains(err.Error(), "cannot write in") {
			t.Errorf("%s: %v, want cannot write", p, err)
		}
	}
	if err := CheckOutput(filepath.Join(dir, "new.cr"), false); err != nil {
		t.Errorf("a new file: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 5 {
		t.Errorf("CheckOutput left files: %v", ents)
	}
}

// TestManifestNetwork: a container's network is a bridge address with its
// prefix length, or the manifest is refused.
func TestManifestNetwork(t *testing.T) {
	for _, n := range []Network{{Mode: "bridge", Address: "10.88.0.5"}, {Mode: "bridge", Address: "fd00::5/64"}, {Mode: "host", Address: "10.88.0.5/16"}, {Mode: "bridge", Address: "10.88.0.5/16\n"}, {Mode: "bridge", Address: ""}, {Mode: "bridge", Address: "10.88.0.5/16", Publish: []string{"80"}}} {
		m := testManifest()
		m.Format, m.Version = FormatName, FormatVersion
		m.Containers[0].Network = &n
		if err := ValidateManifest(m); err == nil {
			t.Errorf("network %+v accepted", n)
		}
	}
	m := testManifest()
	m.Format, m.Version = FormatName, FormatVersion
	m.Containers[0].Network = &Network{Mode: "bridge", Address: "10.88.0.5/16"}
	if err := ValidateManifest(m); err != nil {
		t.Errorf("good network: %v", err)
	}
}
