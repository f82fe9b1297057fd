package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// stagingFile is one file of a test staging dir.
type stagingFile struct {
	name string
	mode os.FileMode
	data []byte
}

// testStaging returns the files of a staging dir shaped like a two-container
// checkpoint: compressible and incompressible "pages", small images, an
// empty file, different modes, and an empty directory.
func testStaging() ([]stagingFile, []string) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 3<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	heap := bytes.Repeat([]byte("heap object 0123456789 abcdefghijklmnopqrstuvwxyz\n"), 80000)
	files := []stagingFile{
		{"checkpoint/pages-1.img", 0o600, append(slices.Clone(heap), random[:1<<20]...)},
		{"checkpoint/pages-2.img", 0o600, random[1<<20:]},
		{"checkpoint/pstree.img", 0o644, []byte("pstree image")},
		{"checkpoint/core-1.img", 0o640, []byte("core image")},
		{"checkpoint/empty.img", 0o600, nil},
		{"dump.log", 0o644, []byte("(00.000000) Dumping finished successfully\n")},
		{"stats-dump", 0o600, []byte{1, 2, 3, 4}},
		{"containers/1/checkpoint/pages-1.img", 0o600, heap[:1<<20]},
		{"containers/1/checkpoint/pstree.img", 0o600, []byte("child pstree")},
		{"containers/1/dump.log", 0o644, []byte("child log\n")},
		{"containers/1/tool.sh", 0o755, []byte("#!/bin/sh\n")},
	}
	dirs := []string{"checkpoint", "containers", "containers/1", "containers/1/checkpoint", "containers/2"}
	return files, dirs
}

// makeStaging creates a staging dir holding files and dirs.
func makeStaging(t testing.TB, files []stagingFile, dirs []string) string {
	t.Helper()
	src := t.TempDir()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(src, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range files {
		p := filepath.Join(src, f.name)
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	return src
}

// testManifest is a manifest for the staging dir of testStaging.
func testManifest() *Manifest {
	created := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	return &Manifest{
		Created:     time.Date(2026, 11, 23, 10, 5, 6, 700, time.UTC),
		CRVersion:   "test",
		CRIUVersion: 40101,
		Kernel:      "6.18.0",
		Arch:        "amd64",
		CPUFeatures: []string{"fpu", "sse2"},
		Root:        "/lab",
		Containers: []Container{
			{Path: "/", Dir: "checkpoint", Command: []string{"sleep", "1000"}, Cwd: "/", Namespaces: []string{"pid", "ipc", "uts"}, OnEmpty: "delete", Created: created, InitPid: 42,
				Processes: []Process{{Pid: 1, PPid: 0, Command: "cr"}, {Pid: 2, PPid: 1, Command: "sleep"}},
				Dump:      &DumpStats{FreezingTime: 10, FrozenTime: 2000, PagesScanned: 100, PagesWritten: 50}},
			{Path: "/mid", Empty: true, Created: created},
			{Path: "/mid/child", Dir: "containers/1/checkpoint", Command: []string{"sh"}, Created: created, Limits: map[string]string{"memory": "1G"}},
		},
		Stats: &Stats{FrozenMicros: 1234, RawBytes: 1},
	}
}

// treeEntry describes one file or directory of a tree.
type treeEntry struct {
	mode fs.FileMode
	sum  string
}

// readTree returns every entry under dir, by slash-separated relative name.
func readTree(t *testing.T, dir string) map[string]treeEntry {
	t.Helper()
	tree := map[string]treeEntry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{mode: fi.Mode()}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			e.sum = hex.EncodeToString(s[:])
		}
		tree[filepath.ToSlash(rel)] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// assertSameTree fails unless got holds exactly the entries of want, with
// the same types, modes and content.
func assertSameTree(t *testing.T, want, got string) {
	t.Helper()
	w, g := readTree(t, want), readTree(t, got)
	for name, we := range w {
		ge, ok := g[name]
		switch {
		case !ok:
			t.Errorf("%s: missing from %s", name, got)
		case ge != we:
			t.Errorf("%s: got mode %v sha256 %.12s, want mode %v sha256 %.12s", name, ge.mode, ge.sum, we.mode, we.sum)
		}
	}
	for name := range g {
		if _, ok := w[name]; !ok {
			t.Errorf("%s: extra in %s", name, got)
		}
	}
}

// assertEmptyDir fails unless dir exists and is empty.
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s not empty after failure: %v", dir, names)
	}
}

// archiveBytes writes the archive of src to memory.
func archiveBytes(t testing.TB, src string, m *Manifest, compression string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := WriteArchive(context.Background(), &buf, src, m, WriteOptions{Compression: compression}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// manifestJSON encodes m for comparisons.
func manifestJSON(t *testing.T, m *Manifest) string {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// headerV1 is cr-image.json of a version 1 image (the manifest last),
// which readers still accept.
var headerV1 = []byte(`{"format":"cr-image","version":1}` + "\n")

// craftEntry is one entry of a hand-made archive.
type craftEntry struct {
	hdr  tar.Header
	body []byte
}

func reg(name string, body []byte) craftEntry {
	return craftEntry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: int64(len(body))}, body}
}

func dir(name string) craftEntry {
	return craftEntry{tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o700}, nil}
}

// craftOptions change how craft frames the entries.
type craftOptions struct {
	header       []byte // cr-image.json's content; default headerBytes
	noManifest   bool
	listed       func(*Manifest) // edits the manifest after it lists the entries
	badTrailer   bool
	plain        bool         // no zstd
	afterTrailer []craftEntry // version 2: after the last entry
	v1           bool         // the version 1 layout: the manifest last
}

// craft builds an archive by hand with archive/tar: cr-image.json, a
// manifest that lists every regular file and directory entry as it is
// and its trailer (unless o.noManifest), then the entries (version 2; with
// o.v1, the version 1 layout: the entries first, the manifest last).
func craft(t testing.TB, entries []craftEntry, o craftOptions) []byte {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	put := func(e craftEntry) {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("craft %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			t.Fatalf("craft %s: %v", h.Name, err)
		}
	}
	hb := o.header
	if hb == nil {
		hb = headerBytes
		if o.v1 {
			hb = headerV1
		}
	}
	put(reg(HeaderFile, hb))
	m := &Manifest{Format: FormatName, Version: FormatVersion, Root: "/x"}
	if o.v1 {
		m.Version = 1
	}
	for _, e := range entries {
		switch e.hdr.Typeflag {
		case tar.TypeReg:
			s := sha256.Sum256(e.body)
			m.Files = append(m.Files, File{Name: e.hdr.Name, Size: int64(len(e.body)), SHA256: hex.EncodeToString(s[:]), Mode: uint32(e.hdr.Mode)})
		case tar.TypeDir:
			m.Files = append(m.Files, File{Name: e.hdr.Name[:len(e.hdr.Name)-1], Mode: uint32(e.hdr.Mode), Dir: true})
		}
	}
	putManifest := func() {
		if o.noManifest {
			return
		}
		if o.listed != nil {
			o.listed(m)
		}
		mb, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		put(reg(ManifestFile, mb))
		s := sha256.Sum256(mb)
		trailer := hex.EncodeToString(s[:]) + "\n"
		if o.badTrailer {
			trailer = hex.EncodeToString(make([]byte, 32)) + "\n"
		}
		put(reg(TrailerFile, []byte(trailer)))
	}
	if !o.v1 {
		putManifest()
	}
	for _, e := range entries {
		put(e)
	}
	if o.v1 {
		putManifest()
	}
	if !o.noManifest {
		for _, e := range o.afterTrailer {
			put(e)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if o.plain {
		return raw.Bytes()
	}
	return compress(t, raw.Bytes())
}

// compress returns b as a zstd stream.
func compress(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	enc, err := zstd.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// zeroFrame returns a zstd frame that decompresses to n zero bytes, made of
// RLE blocks: 4 bytes of input for every 128 KiB of output.
func zeroFrame(n int64) []byte {
	const blockMax = 128 << 10
	// Magic, frame header descriptor (no content size, no checksum, not
	// single-segment), window descriptor for a 128 KiB window.
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3}
	for n > 0 {
		size := min(n, blockMax)
		n -= size
		h := uint32(1<<1) | uint32(size)<<3 // RLE block
		if n == 0 {
			h |= 1 // last block
		}
		f = append(f, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return f
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// assertIs fails unless errors.Is(err, target).
func assertIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}
