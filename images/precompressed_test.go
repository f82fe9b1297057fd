package images

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// precompress moves the pages images out of the staging dir src into
// precompressed entries, as a streamed dump makes them.
func precompress(t *testing.T, src, compression string) []Precompressed {
	t.Helper()
	spill := t.TempDir()
	var out []Precompressed
	entries, err := StagingEntries(src)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		if e.Dir || !strings.HasPrefix(filepath.Base(e.Name), "pages-") {
			continue
		}
		f, err := os.Create(filepath.Join(spill, strings.Repeat("x", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		w, err := NewEntryWriter(f, e.Name, e.Mode, compression, 2)
		if err != nil {
			t.Fatal(err)
		}
		in, err := os.Open(e.Path)
		if err != nil {
			t.Fatal(err)
		}
		// In odd pieces, as a pipe delivers them.
		if _, err := io.CopyBuffer(w, in, make([]byte, 77777)); err != nil {
			t.Fatal(err)
		}
		in.Close()
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out = append(out, w.Entry())
		os.Remove(e.Path)
	}
	if len(out) != 3 {
		t.Fatalf("%d pages images precompressed, want 3", len(out))
	}
	return out
}

func plainTar(t *testing.T, comp string, b []byte) []byte {
	t.Helper()
	var r io.Reader = s2.NewReader(bytes.NewReader(b))
	if comp == CompressionZstd {
		d, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		r = d
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// An archive whose pages were precompressed holds exactly the tar stream
// of one written from a staging dir that had them as files (only the
// zstd framing differs), and today's reader verifies and extracts it to
// the same tree.
func TestPrecompressedSameArchive(t *testing.T) {
	files, dirs := testStaging()
	full := makeStaging(t, files, dirs)
	for _, comp := range []string{CompressionZstd, CompressionS2, CompressionNone} {
		t.Run(comp, func(t *testing.T) {
			want := archiveBytes(t, full, testManifest(), comp)
			src := makeStaging(t, files, dirs)
			pre := precompress(t, src, comp)
			var buf bytes.Buffer
			m := testManifest()
			res, err := WriteArchive(context.Background(), &buf, src, m, WriteOptions{Compression: comp, Precompressed: pre})
			if err != nil {
				t.Fatal(err)
			}
			var raw int64
			for _, f := range files {
				raw += int64(len(f.data))
			}
			if res.RawBytes != raw || res.ImageBytes != int64(buf.Len()) {
				t.Errorf("RawBytes %d ImageBytes %d, want %d and %d", res.RawBytes, res.ImageBytes, raw, buf.Len())
			}
			got := buf.Bytes()
			if comp != CompressionNone {
				want, got = plainTar(t, comp, want), plainTar(t, comp, got)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("the tar stream differs from the staged archive's")
			}
			path := filepath.Join(t.TempDir(), "x.cr")
			os.WriteFile(path, buf.Bytes(), 0o600)
			dst := t.TempDir()
			if _, err := ExtractFile(context.Background(), path, dst, Limits{}); err != nil {
				t.Fatal(err)
			}
			assertSameTree(t, full, dst)
		})
	}
}

// A precompressed entry is never copied into an archive of another
// compression, nor one whose stored bytes changed.
func TestPrecompressedRefused(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	pre := precompress(t, src, CompressionZstd)
	if _, err := WriteArchive(context.Background(), io.Discard, src, testManifest(), WriteOptions{Compression: CompressionNone, Precompressed: pre}); err == nil || !strings.Contains(err.Error(), "compressed as zstd, the archive as none") {
		t.Errorf("zstd entries in a plain archive: %v", err)
	}
	f, _ := os.OpenFile(pre[0].Path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{0})
	f.Close()
	if _, err := WriteArchive(context.Background(), io.Discard, src, testManifest(), WriteOptions{Precompressed: pre}); err == nil || !strings.Contains(err.Error(), "not the") {
		t.Errorf("stored bytes grew: %v", err)
	}
	dup := append([]Precompressed{}, pre[1], pre[1])
	if _, err := WriteArchive(context.Background(), io.Discard, src, testManifest(), WriteOptions{Precompressed: dup}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("an entry twice: %v", err)
	}
}

// One flipped byte anywhere in the compressed pages of an S2 image is
// refused as a corrupt image: S2 checks every block's CRC-32C, and the
// manifest every file's SHA-256.
func TestS2ImageCorruptionRefused(t *testing.T) {
	files, dirs := testStaging()
	src := makeStaging(t, files, dirs)
	pre := precompress(t, src, CompressionS2)
	var buf bytes.Buffer
	if _, err := WriteArchive(context.Background(), &buf, src, testManifest(), WriteOptions{Compression: CompressionS2, Precompressed: pre}); err != nil {
		t.Fatal(err)
	}
	for _, at := range []int{buf.Len() / 3, buf.Len() / 2, 2 * buf.Len() / 3} {
		b := bytes.Clone(buf.Bytes())
		b[at] ^= 0x40
		if _, err := Verify(context.Background(), bytes.NewReader(b), Limits{}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("byte %d of %d flipped: Verify = %v, want a corrupt image", at, len(b), err)
		}
	}
}
