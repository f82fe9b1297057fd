package images

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// pagesLike is n bytes like the bench's memory job: a quarter zeros, half
// text, a quarter random.
func pagesLike(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(3, 4))
	words := []string{"checkpoint ", "restore ", "container ", "pid ", "namespace ", "freezer ", "memory "}
	for i := n / 4; i < 3*n/4; {
		i += copy(b[i:3*n/4], words[rng.IntN(len(words))])
	}
	for i := 3 * n / 4; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
}

// writeEntry writes data as one entry through an EntryWriter, through
// Write in odd pieces or through ReadFrom, and returns its stored bytes.
func writeEntry(t testing.TB, comp string, data []byte, readFrom bool) ([]byte, Precompressed) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "e"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := NewEntryWriter(f, "checkpoint/pages-1.img", 0o644, comp, 2)
	if err != nil {
		t.Fatal(err)
	}
	if readFrom {
		_, err = w.ReadFrom(bytes.NewReader(data))
	} else {
		_, err = io.CopyBuffer(onlyWriter{w}, bytes.NewReader(data), make([]byte, 77777))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return b, w.Entry()
}

// zstdFrames walks a zstd stream frame by frame (RFC 8878 §3.1.1) and
// returns each frame's header.
func zstdFrames(t *testing.T, b []byte) []zstd.Header {
	t.Helper()
	var out []zstd.Header
	for len(b) > 0 {
		var h zstd.Header
		if err := h.Decode(b); err != nil {
			t.Fatalf("frame %d: %v", len(out), err)
		}
		out = append(out, h)
		b = b[h.HeaderSize:]
		for last := false; !last; {
			if len(b) < 3 {
				t.Fatalf("frame %d cut short", len(out))
			}
			bh := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16
			last = bh&1 == 1
			size := int(bh >> 3)
			if (bh>>1)&3 == 1 { // RLE: one byte
				size = 1
			}
			b = b[3+size:]
		}
		if h.HasCheckSum {
			b = b[4:]
		}
	}
	return out
}

// A pages entry larger than a piece is compressed as several independent
// pieces that a reader knowing nothing of lanes decodes as one stream: the
// content and its tar padding, hashed without the padding, the same bytes
// whether it came through Write or ReadFrom.
func TestEntryWriterLanes(t *testing.T) {
	data := pagesLike(5*LaneChunk + LaneChunk/2 + 100)
	want := append(bytes.Clone(data), make([]byte, (512-len(data)%512)%512)...)
	sum := sha256.Sum256(data)
	for _, comp := range []string{CompressionZstd, CompressionS2} {
		t.Run(comp, func(t *testing.T) {
			b, e := writeEntry(t, comp, data, false)
			b2, _ := writeEntry(t, comp, data, true)
			if !bytes.Equal(b, b2) {
				t.Errorf("Write and ReadFrom stored different bytes")
			}
			if e.Size != int64(len(data)) || e.SHA256 != hex.EncodeToString(sum[:]) || e.Stored != int64(len(b)) {
				t.Errorf("entry %+v: want size %d, the content's SHA-256, stored %d", e, len(data), len(b))
			}
			if got := plainTar(t, comp, b); !bytes.Equal(got, want) {
				t.Fatalf("decoded %d bytes, not the content and its padding (%d)", len(got), len(want))
			}
			if len(b) > len(data)*2/5 {
				t.Errorf("stored %d of %d bytes: not compressed", len(b), len(data))
			}
			if comp != CompressionZstd {
				if !bytes.HasPrefix(b, s2Magic) || bytes.Count(b, s2Magic) != 1 {
					t.Errorf("not one S2 stream")
				}
				return
			}
			frames := zstdFrames(t, b)
			if len(frames) != 6 {
				t.Errorf("%d zstd frames, want 6 (one per piece)", len(frames))
			}
			for i, h := range frames {
				if !h.HasCheckSum || h.DictionaryID != 0 || (!h.SingleSegment && h.WindowSize > LaneChunk) {
					t.Errorf("frame %d: %+v: want a content checksum, no dictionary, a window of at most %d", i, h, LaneChunk)
				}
			}
		})
	}
}

// One flipped byte in a zstd entry's pieces is a decoding error: every
// frame has its content checksum.
func TestEntryWriterLanesCorrupt(t *testing.T) {
	b, _ := writeEntry(t, CompressionZstd, pagesLike(3*LaneChunk), false)
	for _, at := range []int{len(b) / 5, len(b) / 2, len(b) - 10} {
		c := bytes.Clone(b)
		c[at] ^= 0x10
		d, err := zstd.NewReader(bytes.NewReader(c))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, d); err == nil {
			t.Errorf("byte %d of %d flipped: decoded without error", at, len(b))
		}
		d.Close()
	}
	if _, err := io.Copy(io.Discard, s2.NewReader(bytes.NewReader(b))); err == nil {
		t.Errorf("a zstd entry read as S2")
	}
}

// Memory per entry is bounded and reused: compressing 64 MiB allocates a
// few pieces' buffers, not a buffer per piece.
func TestEntryWriterLanesBounded(t *testing.T) {
	data := pagesLike(64 << 20)
	for _, comp := range []string{CompressionZstd, CompressionS2} {
		writeEntry(t, comp, data[:4*LaneChunk], false) // the pool and encoders exist
		f, err := os.Create(filepath.Join(t.TempDir(), "e"))
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		w, err := NewEntryWriter(f, "pages-1.img", 0o644, comp, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.ReadFrom(bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		f.Close()
		if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
			t.Errorf("%s: %d MiB allocated to compress 64 MiB, want at most 16", comp, got>>20)
		}
	}
}
