package store

import (
	"math/rand/v2"
	"testing"
)

// chunkSizes cuts data whole, as docs/store-format.md §2 says: from the
// start, chunk after chunk.
func chunkSizes(t testing.TB, data []byte) []int {
	t.Helper()
	var sizes []int
	for off := 0; off < len(data); {
		n := cutPoint(data[off:])
		sizes = append(sizes, n)
		off += n
	}
	return sizes
}

func TestChunkerSizes(t *testing.T) {
	data := make([]byte, 64<<20)
	rng := rand.NewChaCha8([32]byte{1})
	rng.Read(data)
	sizes := chunkSizes(t, data)
	total := 0
	for i, n := range sizes {
		total += n
		if n > MaxChunk || (n < MinChunk && i != len(sizes)-1) {
			t.Fatalf("chunk %d has %d bytes", i, n)
		}
	}
	if total != len(data) {
		t.Fatalf("chunks cover %d bytes, want %d", total, len(data))
	}
	avg := total / len(sizes)
	t.Logf("%d chunks, average %d", len(sizes), avg)
}
