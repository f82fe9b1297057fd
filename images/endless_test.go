package images

import (
	"context"
	"errors"
	"testing"
	"time"
)

// endlessEmptyBlocks is a zstd frame header followed by raw blocks of
// size zero, none of them the last, forever: it decompresses to nothing.
type endlessEmptyBlocks struct {
	sent int64
	hdr  bool
}

func (e *endlessEmptyBlocks) Read(p []byte) (int, error) {
	n := 0
	if !e.hdr {
		// Magic, frame header descriptor 0 (no size, no checksum), window
		// descriptor 0 (1 KiB).
		n = copy(p, []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00})
		e.hdr = true
	}
	for ; n+3 <= len(p); n += 3 {
		p[n], p[n+1], p[n+2] = 0, 0, 0 // raw block, size 0, not last
	}
	e.sent += int64(n)
	return n, nil
}

// TestVerifyEndlessEmptyBlocks: a stream of empty zstd blocks, as a pipe can
// feed forever, is cut off once the compressed input is out of all
// proportion to its content, as the network path cuts off a sender.
func TestVerifyEndlessEmptyBlocks(t *testing.T) {
	src := &endlessEmptyBlocks{}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, err := Verify(ctx, src, Limits{})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Verify: %v, want a corrupt or oversized image", err)
		}
		if max := int64(MaxCompressed(0)) + 8<<20; src.sent > max {
			t.Errorf("read %d bytes of input before refusing, want at most %d", src.sent, max)
		}
		t.Logf("refused after %d bytes: %v", src.sent, err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("Verify still reading after 60s (%d bytes of empty blocks)", src.sent)
	}
}
