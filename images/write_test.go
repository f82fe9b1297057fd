package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cr-dev/cr/scratch"
)

func TestRoundTrip(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	for _, compression := range []string{CompressionZstd, CompressionS2, CompressionNone} {
		t.Run(compression, func(t *testing.T) {
			m := testManifest()
			path := filepath.Join(t.TempDir(), "lab.img")
			var progress []int64
			res, err := WriteFile(context.Background(), path, src, m, WriteOptions{
				Compression: compression,
				Progress:    func(done int64) { progress = append(progress, done) },
			})
			if err != nil {
				t.Fatal(err)
			}

			var raw int64
			for _, f := range files {
				raw += int64(len(f.data))
			}
			if res.RawBytes != raw {
				t.Errorf("RawBytes %d, want %d", res.RawBytes, raw)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if res.ImageBytes != fi.Size() {
				t.Errorf("ImageBytes %d, file has %d", res.ImageBytes, fi.Size())
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("image mode %v, want 0600", fi.Mode().Perm())
			}
			if len(progress) == 0 || progress[len(progress)-1] != raw {
				t.Errorf("progress %v, want it to end at %d", progress, raw)
			}
			for i := 1; i < len(progress); i++ {
				if progress[i] < progress[i-1] {
					t.Errorf("progress went backwards: %v", progress)
				}
			}
			if compression == CompressionZstd && fi.Size() >= raw {
				t.Errorf("zstd image of %d bytes for %d raw bytes", fi.Size(), raw)
			}
			if len(m.Files) != len(files)+len(dirs) {
				t.Errorf("manifest lists %d files, staging has %d entries", len(m.Files), len(files)+len(dirs))
			}

			vm, err := VerifyFile(context.Background(), path, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := manifestJSON(t, vm), manifestJSON(t, m); got != want {
				t.Errorf("verified manifest differs:\n got %s\nwant %s", got, want)
			}

			dst := t.TempDir()
			em, err := ExtractFile(context.Background(), path, dst, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := manifestJSON(t, em), manifestJSON(t, m); got != want {
				t.Errorf("extracted manifest differs:\n got %s\nwant %s", got, want)
			}
			assertSameTree(t, src, dst)
		})
	}
}

// TestArchiveLayout reads a plain archive with archive/tar and checks the
// layout docs/image-format.md specifies.
func TestArchiveLayout(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	m := testManifest()
	b := archiveBytes(t, src, m, CompressionNone)

	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	var manifest []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || !h.ModTime.Equal(m.Created.Truncate(1e9)) {
			t.Errorf("%s: owner %d/%d %q/%q time %v", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
		if h.Format != tar.FormatUSTAR {
			t.Errorf("%s: format %v, want USTAR", h.Name, h.Format)
		}
		switch {
		case h.Name == HeaderFile:
			if string(body) != `{"format":"cr-image","version":2}`+"\n" {
				t.Errorf("%s = %q", HeaderFile, body)
			}
		case h.Name == ManifestFile:
			manifest = body
		case h.Name == TrailerFile:
			s := sha256.Sum256(manifest)
			if string(body) != hex.EncodeToString(s[:])+"\n" {
				t.Errorf("%s = %q, manifest sha256 is %x", TrailerFile, body, s)
			}
		case strings.HasSuffix(h.Name, "/"):
			if h.Typeflag != tar.TypeDir {
				t.Errorf("%s: type %q, want a directory", h.Name, h.Typeflag)
			}
		default:
			if h.Typeflag != tar.TypeReg {
				t.Errorf("%s: type %q, want a regular file", h.Name, h.Typeflag)
			}
		}
	}
	want := []string{HeaderFile, ManifestFile, TrailerFile}
	for _, f := range m.Files {
		n := f.Name
		if f.Dir {
			n += "/"
		}
		want = append(want, n)
	}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("entries\n %v\nwant\n %v", names, want)
	}
	// Depth-first, each directory's entries sorted by name; the pages
	// last, by directory and number.
	wantContent := []string{
		"checkpoint/", "checkpoint/core-1.img", "checkpoint/empty.img", "checkpoint/pstree.img",
		"containers/", "containers/1/",
		"containers/1/checkpoint/", "containers/1/checkpoint/pstree.img",
		"containers/1/dump.log", "containers/1/tool.sh", "containers/2/", "dump.log", "stats-dump",
		"checkpoint/pages-1.img", "checkpoint/pages-2.img", "containers/1/checkpoint/pages-1.img",
	}
	if got := strings.Join(names[3:], " "); got != strings.Join(wantContent, " ") {
		t.Errorf("content entries\n %s\nwant\n %s", got, strings.Join(wantContent, " "))
	}
}

func TestWriteDeterministic(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	for _, compression := range []string{CompressionNone, CompressionZstd} {
		a := archiveBytes(t, src, testManifest(), compression)
		b := archiveBytes(t, src, testManifest(), compression)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two archives of the same staging dir and manifest differ", compression)
		}
	}
}

func TestWriteRejectsStaging(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, src string)
		want  string
	}{
		{"symlink", func(t *testing.T, src string) {
			if err := os.Symlink("/etc/passwd", filepath.Join(src, "checkpoint", "zz-link")); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file or directory"},
		{"fifo", func(t *testing.T, src string) {
			if err := syscall.Mkfifo(filepath.Join(src, "containers", "fifo"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file or directory"},
		{"reserved name", func(t *testing.T, src string) {
			if err := os.WriteFile(filepath.Join(src, ManifestFile), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "reserved name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files, dirs := testStaging()
			src := makeStaging(t, files, dirs)
			tt.setup(t, src)
			dir := t.TempDir()
			path := filepath.Join(dir, "x.img")
			_, err := WriteFile(context.Background(), path, src, testManifest(), WriteOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got error %v, want one containing %q", err, tt.want)
			}
			assertEmptyDir(t, dir)
		})
	}
}

func TestWriteFileCancel(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	for _, compression := range []string{CompressionZstd, CompressionS2, CompressionNone} {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		var at int64
		_, err := WriteFile(ctx, filepath.Join(dir, "x.img"), src, testManifest(), WriteOptions{
			Compression: compression,
			// Cancel as soon as the writer reports progress, after the
			// first file's content.
			Progress: func(done int64) {
				if at == 0 {
					at = done
				}
				cancel()
			},
		})
		cancel()
		assertIs(t, err, context.Canceled)
		if at == 0 {
			t.Errorf("%s: cancelled before any content was written", compression)
		}
		assertEmptyDir(t, dir)
	}
}

func TestWriteFileOverwrite(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	dir := t.TempDir()
	path := filepath.Join(dir, "x.img")
	old := []byte("precious")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := WriteFile(context.Background(), path, src, testManifest(), WriteOptions{})
	assertIs(t, err, fs.ErrExist)
	if b, _ := os.ReadFile(path); !bytes.Equal(b, old) {
		t.Errorf("existing file changed to %d bytes", len(b))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d files in %s, want only the existing one", len(ents), dir)
	}

	if _, err := WriteFile(context.Background(), path, src, testManifest(), WriteOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFile(context.Background(), path, Limits{}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d files in %s after overwrite, want 1", len(ents), dir)
	}
}

// TestWriteFileNoReplaceRace checks that the final rename never replaces a
// file created while the archive was being written.
func TestWriteFileNoReplaceRace(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	dir := t.TempDir()
	path := filepath.Join(dir, "x.img")
	once := false
	_, err := WriteFile(context.Background(), path, src, testManifest(), WriteOptions{
		Progress: func(int64) {
			if !once {
				once = true
				if err := os.WriteFile(path, []byte("other"), 0o600); err != nil {
					t.Error(err)
				}
			}
		},
	})
	assertIs(t, err, fs.ErrExist)
	if b, _ := os.ReadFile(path); string(b) != "other" {
		t.Errorf("the other writer's file was replaced")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d files in %s, want only the other writer's", len(ents), dir)
	}
}

func TestWriteUnknownCompression(t *testing.T) {
	src := t.TempDir()
	_, err := WriteArchive(context.Background(), io.Discard, src, &Manifest{}, WriteOptions{Compression: "gzip"})
	if err == nil || !strings.Contains(err.Error(), "gzip") {
		t.Fatalf("got %v, want an unknown compression error", err)
	}
}

func TestHostInfo(t *testing.T) {
	kernel, arch, flags := HostInfo()
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		t.Fatal(err)
	}
	if kernel != strings.TrimSpace(string(b)) {
		t.Errorf("kernel %q, osrelease %q", kernel, b)
	}
	if arch == "" {
		t.Error("no arch")
	}
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(cpuinfo, []byte("\nflags")) || bytes.Contains(cpuinfo, []byte("\nFeatures")) {
		if len(flags) == 0 {
			t.Fatal("no cpu features, /proc/cpuinfo has them")
		}
		for _, f := range flags {
			if !bytes.Contains(cpuinfo, []byte(" "+f)) {
				t.Errorf("feature %q not in /proc/cpuinfo", f)
			}
		}
	}
}

func TestDecodeManifestRejects(t *testing.T) {
	good := testManifest()
	good.Format, good.Version = FormatName, FormatVersion
	tests := []struct {
		name string
		edit func(*Manifest)
		want error
	}{
		{"newer version", func(m *Manifest) { m.Version = FormatVersion + 1 }, ErrUnsupportedVersion},
		{"escaping container dir", func(m *Manifest) { m.Containers[0].Dir = "../../etc" }, nil},
		{"absolute file", func(m *Manifest) { m.Files = []File{{Name: "/etc/passwd", Mode: 0o600}} }, nil},
		{"child before parent", func(m *Manifest) { m.Containers[1], m.Containers[2] = m.Containers[2], m.Containers[1] }, nil},
		{"root not first", func(m *Manifest) { m.Containers = m.Containers[1:] }, nil},
		{"unclean path", func(m *Manifest) { m.Containers[1].Path = "/mid/../x" }, nil},
		{"setuid", func(m *Manifest) { m.Files = []File{{Name: "a", Mode: 0o4755, SHA256: strings.Repeat("0", 64)}} }, nil},
		{"bad sha256", func(m *Manifest) { m.Files = []File{{Name: "a", Mode: 0o600, SHA256: "xyz"}} }, nil},
		{"rootfs with a bad digest", func(m *Manifest) { withRootfs(m).Lower = "sha256:XYZ" }, nil},
		{"rootfs entry not in the archive", func(m *Manifest) { withRootfs(m).Upper = "fs/9/upper.tar" }, nil},
		{"rootfs without an init", func(m *Manifest) { withRootfs(m).Init = "" }, nil},
		{"rootfs lower entry not in the archive", func(m *Manifest) { withRootfs(m).LowerEntry = "fs/lower/x.tar" }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testManifest()
			m.Format, m.Version = FormatName, FormatVersion
			tt.edit(m)
			_, err := DecodeManifest([]byte(manifestJSON(t, m)))
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := DecodeManifest([]byte(manifestJSON(t, good))); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	withRootfs(good)
	if _, err := DecodeManifest([]byte(manifestJSON(t, good))); err != nil {
		t.Fatalf("good manifest with a rootfs: %v", err)
	}
}

// withRootfs gives m's root container a well-formed file system part,
// its entries listed in m.Files, and returns it.
func withRootfs(m *Manifest) *Rootfs {
	sum := strings.Repeat("0", 64)
	for _, n := range []string{"fs/0/upper.tar", "fs/bin/cr-000000000000000000000000"} {
		m.Files = append(m.Files, File{Name: n, Mode: 0o600, SHA256: sum})
	}
	r := &Rootfs{Lower: "sha256:" + strings.Repeat("a", 64), Upper: "fs/0/upper.tar", Init: "fs/bin/cr-000000000000000000000000"}
	m.Containers[0].Rootfs = r
	return r
}

// The manifest's stats say what was written, as the archive holds it: the
// time, the raw bytes of every file, the image's bytes before the
// manifest, and what the caller adds then (the time frozen).
func TestWriteFillsStats(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	var raw int64
	for _, f := range files {
		raw += int64(len(f.data))
	}
	for _, compression := range []string{CompressionZstd, CompressionS2, CompressionNone} {
		t.Run(compression, func(t *testing.T) {
			m := testManifest()
			m.Stats = &Stats{DumpMicros: 1234, PagesWritten: 7}
			path := filepath.Join(t.TempDir(), "lab.img")
			res, err := WriteFile(context.Background(), path, src, m, WriteOptions{
				Compression: compression,
				Stats:       func(s *Stats) { s.FrozenMicros = 4321 },
			})
			if err != nil {
				t.Fatal(err)
			}
			vm, err := VerifyFile(context.Background(), path, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			s := vm.Stats
			if s == nil {
				t.Fatal("no stats in the manifest")
			}
			if s.FrozenMicros != 4321 || s.DumpMicros != 1234 || s.PagesWritten != 7 {
				t.Errorf("stats %+v lost what the dumper and the caller filled", *s)
			}
			if s.RawBytes != raw || s.WriteMicros < 0 {
				t.Errorf("stats %+v: want raw_bytes %d and a write time", *s, raw)
			}
			// The manifest comes first: the image's size is not known.
			if s.ImageBytes != 0 || res.ImageBytes <= 0 {
				t.Errorf("image_bytes %d in the manifest, want 0 (the image has %d)", s.ImageBytes, res.ImageBytes)
			}
		})
	}
}

// The temporary file a killed writer left beside an image (unlocked: its
// owner is gone) is removed by the next write in that directory; a write
// in progress (locked) and other files are left alone.
func TestWriteFileSweepsKilledWritersTemp(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	out := t.TempDir()
	dead := []string{
		filepath.Join(out, ".lab.cr.tmp-0123456789abcdef"),   // the same image
		filepath.Join(out, ".other.cr.tmp-fedcba9876543210"), // another image
	}
	kept := []string{
		filepath.Join(out, ".notes.txt.tmp-0123456789abcdef"), // not an image
		filepath.Join(out, ".lab.cr.tmp-123"),                 // not cr's name
	}
	for _, p := range append(append([]string(nil), dead...), kept...) {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	live, err := scratch.Create(out, ".busy.cr.tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Remove()
	kept = append(kept, live.Path)
	if _, err := WriteFile(context.Background(), filepath.Join(out, "lab.cr"), src, testManifest(), WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range dead {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	for _, p := range kept {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
	ents, _ := os.ReadDir(out)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(ents) != 1+len(kept) {
		t.Errorf("directory holds %v", names)
	}
}
