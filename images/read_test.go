package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// verifyAndExtract runs Verify and Extract on b and returns their errors;
// after a failed Extract it checks that the destination is empty and that
// nothing appeared next to it.
func verifyAndExtract(t *testing.T, b []byte, l Limits) (verr, eerr error) {
	t.Helper()
	_, verr = Verify(context.Background(), bytes.NewReader(b), l)
	parent := t.TempDir()
	dst := filepath.Join(parent, "dst")
	if err := os.Mkdir(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	_, eerr = Extract(context.Background(), bytes.NewReader(b), dst, l)
	t.Logf("verify: %v; extract: %v", verr, eerr)
	if eerr != nil {
		assertEmptyDir(t, dst)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 1 {
		t.Errorf("%d entries next to the destination, want none", len(ents)-1)
	}
	return verr, eerr
}

// assertBoth fails unless both errors wrap target and, when want is not
// empty, mention it.
func assertBoth(t *testing.T, verr, eerr, target error, want string) {
	t.Helper()
	for _, err := range []error{verr, eerr} {
		assertIs(t, err, target)
		if want != "" && !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestCorruptByte(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	img := archiveBytes(t, src, testManifest(), CompressionZstd)
	for _, frac := range []float64{0.1, 0.3, 0.5, 0.7, 0.9, 0.99} {
		t.Run(fmt.Sprintf("zstd at %.0f%%", frac*100), func(t *testing.T) {
			b := bytes.Clone(img)
			b[int(float64(len(b))*frac)] ^= 0x5a
			verr, eerr := verifyAndExtract(t, b, Limits{})
			assertBoth(t, verr, eerr, ErrCorrupt, "")
		})
	}

	t.Run("zstd frame checksum", func(t *testing.T) {
		b := bytes.Clone(img)
		b[len(b)-1] ^= 0x5a // the last byte of the frame's content checksum
		verr, eerr := verifyAndExtract(t, b, Limits{})
		assertBoth(t, verr, eerr, ErrCorrupt, "CRC")
	})

	plain := archiveBytes(t, src, testManifest(), CompressionNone)
	t.Run("plain file content", func(t *testing.T) {
		b := bytes.Clone(plain)
		i := bytes.Index(b, []byte("child pstree"))
		if i < 0 {
			t.Fatal("content not found in the archive")
		}
		b[i] ^= 1
		verr, eerr := verifyAndExtract(t, b, Limits{})
		assertBoth(t, verr, eerr, ErrCorrupt, "containers/1/checkpoint/pstree.img: sha256 mismatch")
	})
	t.Run("plain manifest", func(t *testing.T) {
		b := bytes.Clone(plain)
		i := bytes.Index(b, []byte(`"cr_version": "test"`))
		if i < 0 {
			t.Fatal("manifest not found in the archive")
		}
		b[i+len(`"cr_version": "t`)] = 'T'
		verr, eerr := verifyAndExtract(t, b, Limits{})
		assertBoth(t, verr, eerr, ErrCorrupt, TrailerFile)
	})
	t.Run("plain tar header", func(t *testing.T) {
		b := bytes.Clone(plain)
		i := bytes.Index(b, []byte("checkpoint/pages-2.img\x00"))
		if i < 0 {
			t.Fatal("header not found in the archive")
		}
		b[i+124] ^= 1 // the size field
		verr, eerr := verifyAndExtract(t, b, Limits{})
		assertBoth(t, verr, eerr, ErrCorrupt, "")
	})
}

func TestTruncated(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	for _, compression := range []string{CompressionZstd, CompressionNone} {
		img := archiveBytes(t, src, testManifest(), compression)
		for _, n := range []int{len(img) - 1, len(img) - 4, len(img) - 512, len(img) - 1024, len(img) - 1500, len(img) / 2, 2000} {
			t.Run(fmt.Sprintf("%s to %d of %d", compression, n, len(img)), func(t *testing.T) {
				verr, eerr := verifyAndExtract(t, img[:n], Limits{})
				assertBoth(t, verr, eerr, ErrCorrupt, "")
			})
		}
	}
}

func TestNotImage(t *testing.T) {
	random := make([]byte, 1<<20)
	rand.Read(random)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(craft(t, []craftEntry{dir("checkpoint")}, craftOptions{plain: true}))
	zw.Close()
	var foreign bytes.Buffer
	tw := tar.NewWriter(&foreign)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: 4})
	tw.Write([]byte("root"))
	tw.Close()

	tests := map[string][]byte{
		"empty":          nil,
		"three bytes":    {0x28, 0xb5, 0x2f},
		"random":         random,
		"short random":   random[:100],
		"zstd of random": compress(t, random),
		"gzip":           gz.Bytes(),
		"foreign tar":    foreign.Bytes(),
		"foreign zstd":   compress(t, foreign.Bytes()),
		"other format":   craft(t, nil, craftOptions{header: []byte(`{"format":"other","version":1}`)}),
		"header garbage": craft(t, nil, craftOptions{header: []byte(`not json`)}),
		"version zero":   craft(t, nil, craftOptions{header: []byte(`{"format":"cr-image","version":0}`)}),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			verr, eerr := verifyAndExtract(t, b, Limits{})
			assertBoth(t, verr, eerr, ErrNotImage, "")
		})
	}
}

func TestNewerVersion(t *testing.T) {
	// A newer format may hold anything after its header: the version check
	// comes first.
	entries := []craftEntry{{tar.Header{Typeflag: tar.TypeSymlink, Name: "new", Linkname: "/"}, nil}}
	for _, plain := range []bool{false, true} {
		b := craft(t, entries, craftOptions{plain: plain, noManifest: true, header: []byte(`{"format":"cr-image","version":3}`)})
		verr, eerr := verifyAndExtract(t, b, Limits{})
		assertBoth(t, verr, eerr, ErrUnsupportedVersion, "version 3")
	}
}

func TestHostileArchives(t *testing.T) {
	ok := reg("checkpoint/ok", []byte("fine"))
	tests := []struct {
		name    string
		entries func(parent string) []craftEntry
		o       craftOptions
		l       Limits
		want    error
		msg     string
		// In the version 2 layout the manifest, first, may be what
		// refuses the archive: with another error, or another message.
		v2want error
		v2msg  string
	}{
		{name: "dotdot", want: ErrUnsafeEntry, msg: `"../escape"`,
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok, reg("../escape", []byte("x"))} }},
		{name: "inner dotdot", want: ErrUnsafeEntry,
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, reg("checkpoint/../../escape", []byte("x"))}
			}},
		{name: "absolute", want: ErrUnsafeEntry, msg: "abs-escape",
			entries: func(parent string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, reg(filepath.Join(parent, "abs-escape"), []byte("x"))}
			}},
		{name: "symlink", want: ErrUnsafeEntry, msg: "symlink",
			entries: func(parent string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok,
					{tar.Header{Typeflag: tar.TypeSymlink, Name: "checkpoint/link", Linkname: parent}, nil},
					reg("checkpoint/link/escape", []byte("x"))}
			}},
		{name: "hardlink", want: ErrUnsafeEntry, msg: "hard link",
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, {tar.Header{Typeflag: tar.TypeLink, Name: "checkpoint/hl", Linkname: "/etc/passwd"}, nil}}
			}},
		{name: "device", want: ErrUnsafeEntry, msg: "device",
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, {tar.Header{Typeflag: tar.TypeChar, Name: "checkpoint/mem", Devmajor: 1, Devminor: 1, Mode: 0o600}, nil}}
			}},
		{name: "fifo", want: ErrUnsafeEntry, msg: "fifo",
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, {tar.Header{Typeflag: tar.TypeFifo, Name: "checkpoint/p", Mode: 0o600}, nil}}
			}},
		{name: "duplicate", want: ErrUnsafeEntry, msg: "duplicate",
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, reg("checkpoint/ok", []byte("again"))}
			}},
		{name: "file over dir", want: ErrUnsafeEntry, msg: "duplicate",
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok, reg("checkpoint", nil)} }},
		{name: "setuid", want: ErrUnsafeEntry, msg: "mode",
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, {tar.Header{Typeflag: tar.TypeReg, Name: "checkpoint/suid", Mode: 0o4755, Size: 1}, []byte("x")}}
			}},
		{name: "no parent dir", want: ErrCorrupt, msg: "parent",
			entries: func(string) []craftEntry { return []craftEntry{reg("checkpoint/ok", []byte("x"))} }},
		{name: "reserved name", want: ErrCorrupt, msg: HeaderFile,
			entries: func(string) []craftEntry { return []craftEntry{reg(HeaderFile, headerBytes)} }},
		{name: "entry over MaxEntry", want: ErrTooLarge, msg: "checkpoint/big", l: Limits{MaxEntry: 1024},
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, reg("checkpoint/big", make([]byte, 1025))}
			}},
		{name: "total over MaxBytes", want: ErrTooLarge, msg: "checkpoint/f10", l: Limits{MaxBytes: 10 << 10},
			entries: func(string) []craftEntry {
				e := []craftEntry{dir("checkpoint")}
				for i := range 20 {
					e = append(e, reg(fmt.Sprintf("checkpoint/f%02d", i), make([]byte, 1<<10)))
				}
				return e
			}},
		{name: "over MaxFiles", want: ErrTooLarge, msg: "5 entries", l: Limits{MaxFiles: 5},
			entries: func(string) []craftEntry {
				e := []craftEntry{dir("checkpoint")}
				for i := range 10 {
					e = append(e, reg(fmt.Sprintf("checkpoint/f%d", i), nil))
				}
				return e
			}},
		{name: "extra file", want: ErrCorrupt, msg: "checkpoint/extra: not in the manifest",
			entries: func(string) []craftEntry {
				return []craftEntry{dir("checkpoint"), ok, reg("checkpoint/extra", []byte("x"))}
			},
			o: craftOptions{listed: func(m *Manifest) { m.Files = m.Files[:len(m.Files)-1] }}},
		{name: "missing file", want: ErrCorrupt, msg: "checkpoint/gone: in the manifest, missing",
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o: craftOptions{listed: func(m *Manifest) {
				m.Files = append(m.Files, File{Name: "checkpoint/gone", Size: 1, SHA256: strings.Repeat("ab", 32), Mode: 0o600})
			}}, v2msg: "truncated: archive ends after checkpoint/ok without checkpoint/gone"},
		{name: "checksum in manifest", want: ErrCorrupt, msg: "checkpoint/ok: sha256 mismatch",
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o:       craftOptions{listed: func(m *Manifest) { m.Files[1].SHA256 = strings.Repeat("ab", 32) }}},
		{name: "size in manifest", want: ErrCorrupt, msg: "checkpoint/ok: size",
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o:       craftOptions{listed: func(m *Manifest) { m.Files[1].Size++ }}},
		{name: "mode in manifest", want: ErrCorrupt, msg: "checkpoint/ok: mode",
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o:       craftOptions{listed: func(m *Manifest) { m.Files[1].Mode = 0o644 }}},
		{name: "bad trailer", want: ErrCorrupt, msg: TrailerFile,
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o:       craftOptions{badTrailer: true}},
		{name: "no manifest", want: ErrCorrupt, msg: "without " + ManifestFile,
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o:       craftOptions{noManifest: true}, v2msg: `"checkpoint/" follows cr-image.json, not manifest.json`},
		{name: "entry after trailer", want: ErrCorrupt, msg: "after " + TrailerFile,
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o:       craftOptions{afterTrailer: []craftEntry{reg("late", []byte("x"))}}, v2msg: "late: not in the manifest"},
		{name: "container dir escapes", want: ErrCorrupt, msg: "../../etc",
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o: craftOptions{listed: func(m *Manifest) {
				m.Containers = []Container{{Path: "/", Dir: "../../etc"}}
			}}},
		{name: "container dir missing", want: ErrCorrupt, msg: "containers/1/checkpoint",
			entries: func(string) []craftEntry { return []craftEntry{dir("checkpoint"), ok} },
			o: craftOptions{listed: func(m *Manifest) {
				m.Containers = []Container{{Path: "/", Dir: "checkpoint"}, {Path: "/c", Dir: "containers/1/checkpoint"}}
			}}},
	}
	for _, tt := range tests {
		for _, layout := range []string{"v1", "v2"} {
			for _, plain := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s %s plain=%v", tt.name, layout, plain), func(t *testing.T) {
					parent := t.TempDir()
					o := tt.o
					o.plain = plain
					o.v1 = layout == "v1"
					want, msg := tt.want, tt.msg
					if layout == "v2" && tt.v2want != nil {
						want = tt.v2want
					}
					if layout == "v2" && tt.v2msg != "" {
						msg = tt.v2msg
					}
					b := craft(t, tt.entries(parent), o)
					dst := filepath.Join(parent, "dst")
					if err := os.Mkdir(dst, 0o700); err != nil {
						t.Fatal(err)
					}
					_, err := Extract(context.Background(), bytes.NewReader(b), dst, tt.l)
					t.Logf("extract: %v", err)
					assertIs(t, err, want)
					if msg != "" && !strings.Contains(err.Error(), msg) {
						t.Errorf("error %q does not mention %q", err, msg)
					}
					assertEmptyDir(t, dst)
					if ents, _ := os.ReadDir(parent); len(ents) != 1 {
						t.Errorf("%d entries next to the destination, want none", len(ents)-1)
					}
					_, err = Verify(context.Background(), bytes.NewReader(b), tt.l)
					assertIs(t, err, want)
				})
			}
		}
	}
}

// TestLimitsBoundary checks that limits equal to the archive's needs pass
// and one less fails.
func TestLimitsBoundary(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	img := archiveBytes(t, src, testManifest(), CompressionZstd)
	var total, largest int64
	for _, f := range files {
		total += int64(len(f.data))
		largest = max(largest, int64(len(f.data)))
	}
	exact := Limits{MaxBytes: total, MaxFiles: len(files) + len(dirs), MaxEntry: largest}
	if _, err := Verify(context.Background(), bytes.NewReader(img), exact); err != nil {
		t.Fatalf("exact limits: %v", err)
	}
	for _, l := range []Limits{
		{MaxBytes: total - 1, MaxFiles: exact.MaxFiles, MaxEntry: largest},
		{MaxBytes: total, MaxFiles: exact.MaxFiles - 1, MaxEntry: largest},
		{MaxBytes: total, MaxFiles: exact.MaxFiles, MaxEntry: largest - 1},
	} {
		_, err := Verify(context.Background(), bytes.NewReader(img), l)
		assertIs(t, err, ErrTooLarge)
	}
}

func TestBombs(t *testing.T) {
	t.Run("entry size", func(t *testing.T) {
		// A header that declares 64 GiB, followed by a zstd frame of RLE
		// blocks that would decompress to that much.
		var prefix bytes.Buffer
		tw := tar.NewWriter(&prefix)
		for _, h := range []tar.Header{
			{Typeflag: tar.TypeReg, Name: HeaderFile, Mode: 0o644, Size: int64(len(headerV1))},
			{Typeflag: tar.TypeDir, Name: "checkpoint/", Mode: 0o700},
			{Typeflag: tar.TypeReg, Name: "checkpoint/pages-1.img", Mode: 0o600, Size: 64 << 30},
		} {
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			if h.Name == HeaderFile {
				tw.Write(headerV1) // the version 1 layout: content first
			}
		}
		tw.Flush()
		b := append(compress(t, prefix.Bytes()), zeroFrame(64<<30)...)
		assertBombStopped(t, b, Limits{MaxBytes: 1 << 20}, ErrTooLarge, "checkpoint/pages-1.img")
	})
	t.Run("padding after the archive", func(t *testing.T) {
		archive := craft(t, []craftEntry{dir("checkpoint"), reg("checkpoint/ok", []byte("x"))}, craftOptions{plain: true})
		b := append(compress(t, archive), zeroFrame(64<<30)...)
		assertBombStopped(t, b, Limits{}, ErrCorrupt, "padding")
	})
	t.Run("pax headers", func(t *testing.T) {
		// Chained PAX extended headers that archive/tar merges into one
		// entry: no entry ever counts against MaxFiles or MaxBytes, only
		// the stream budget stops them.
		var one bytes.Buffer
		tw := tar.NewWriter(&one)
		err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o700,
			PAXRecords: map[string]string{"comment": strings.Repeat("a", 900<<10)}})
		if err != nil {
			t.Fatal(err)
		}
		tw.Flush()
		xhdr := one.Bytes()[:one.Len()-blockSize] // the extended header alone
		var raw bytes.Buffer
		tw = tar.NewWriter(&raw)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: HeaderFile, Mode: 0o644, Size: int64(len(headerBytes))})
		tw.Write(headerBytes)
		tw.Flush()
		l := Limits{MaxBytes: 1 << 20, MaxFiles: 10}
		for int64(raw.Len()) <= l.withDefaults().streamBudget()+(1<<20) {
			raw.Write(xhdr)
		}
		raw.Write(one.Bytes()[len(xhdr):])
		b := compress(t, raw.Bytes())
		verr, eerr := verifyAndExtract(t, b, l)
		assertBoth(t, verr, eerr, ErrTooLarge, "tar stream")
	})
}

// assertBombStopped checks that reading b fails with target and stops long
// before the end of b's compressed bytes, let alone its output.
func assertBombStopped(t *testing.T, b []byte, l Limits, target error, msg string) {
	t.Helper()
	r := &countReader{r: bytes.NewReader(b)}
	dst := t.TempDir()
	_, err := Extract(context.Background(), r, dst, l)
	t.Logf("extract: %v (read %d of %d bytes)", err, r.n, len(b))
	assertIs(t, err, target)
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("error %q does not mention %q", err, msg)
	}
	if r.n > int64(len(b))/4 {
		t.Errorf("read %d of the bomb's %d compressed bytes", r.n, len(b))
	}
	assertEmptyDir(t, dst)
}

func TestExtractNonEmptyDestination(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	img := archiveBytes(t, src, testManifest(), CompressionZstd)
	dst := t.TempDir()
	keep := filepath.Join(dst, "keep")
	if err := os.WriteFile(keep, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Extract(context.Background(), bytes.NewReader(img), dst, Limits{})
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("got %v, want a not-empty error", err)
	}
	if b, _ := os.ReadFile(keep); string(b) != "mine" {
		t.Error("existing file changed")
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 1 {
		t.Errorf("%d entries in the destination, want the existing one", len(ents))
	}
}

// cancelReader cancels its context after n bytes.
type cancelReader struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *cancelReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= int64(n); c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestExtractCancel(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	img := archiveBytes(t, src, testManifest(), CompressionNone)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dst := t.TempDir()
	_, err := Extract(ctx, &cancelReader{r: bytes.NewReader(img), n: int64(len(img)) / 2, cancel: cancel}, dst, Limits{})
	assertIs(t, err, context.Canceled)
	assertEmptyDir(t, dst)
}
