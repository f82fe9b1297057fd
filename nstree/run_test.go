package nstree

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// failingReader yields some bytes, then an error.
type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// TestInstallFileFailedCopy: a copy that fails half-way must not install a
// truncated binary under the content address, where every later cr run
// would reuse it.
func TestInstallFileFailedCopy(t *testing.T) {
	content := bytes.Repeat([]byte("cr init binary "), 10000)
	sum := sha256.Sum256(content)
	dst := filepath.Join(t.TempDir(), "bin", "cr-x")
	boom := errors.New("read error")
	err := installFile(dst, &failingReader{data: content[:1000], err: boom}, sum[:])
	if !errors.Is(err, boom) {
		t.Fatalf("installFile with a failing reader: %v, want %v", err, boom)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a truncated binary was installed at %s (%v)", dst, err)
	}
	assertNoTemp(t, filepath.Dir(dst))
}

// TestInstallFileWrongContent: content that does not hash to the address
// (the executable changed between hashing and copying) is not installed.
func TestInstallFileWrongContent(t *testing.T) {
	content := []byte("the binary that was hashed")
	sum := sha256.Sum256(content)
	dst := filepath.Join(t.TempDir(), "cr-x")
	err := installFile(dst, bytes.NewReader([]byte("another binary, rebuilt meanwhile")), sum[:])
	if err == nil {
		t.Fatal("installFile installed content that does not match its sha256")
	}
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a wrong binary was installed at %s (%v)", dst, err)
	}
	assertNoTemp(t, filepath.Dir(dst))
}

func TestInstallFile(t *testing.T) {
	content := bytes.Repeat([]byte{1, 2, 3}, 100000)
	sum := sha256.Sum256(content)
	dst := filepath.Join(t.TempDir(), "cr-x")
	if err := installFile(dst, bytes.NewReader(content), sum[:]); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("installed %d bytes (%v), want %d", len(got), err, len(content))
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want 0755", fi.Mode().Perm())
	}
	assertNoTemp(t, filepath.Dir(dst))
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "cr-x" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// TestCreateNodesValidates: the tree itself refuses a path with a name
// cr run would refuse, whoever computed it, before creating anything.
func TestCreateNodesValidates(t *testing.T) {
	dir := t.TempDir()
	tr := &Tree{StateDir: filepath.Join(dir, "state"), CgroupParent: "cr-test"}
	tr.Hier.Mount = filepath.Join(dir, "cgroup")
	for _, p := range []string{"/../x", "/lab/.hidden", "/\x1b[8mx", "/a b", "/a//b", "/" + string(bytes.Repeat([]byte("n"), 65))} {
		f := &Forest{ByPath: map[string]*Node{}, ByID: map[string]*Node{}}
		_, _, err := tr.createNodes(f, p, OnEmptyDelete)
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("createNodes(%q): %v, want ErrInvalidName", p, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused paths created %v", ents)
	}
}
