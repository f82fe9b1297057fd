package store

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

func chunkSizes(t testing.TB, data []byte) []int {
	t.Helper()
	c := newChunker(bytes.NewReader(data), nil)
	var sizes []int
	for {
		b, err := c.next()
		if err == io.EOF {
			return sizes
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(b))
	}
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
