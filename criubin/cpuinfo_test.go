package criubin

import (
	"context"
	"errors"
	"testing"
)

// This CPU passes its own check; a cpuinfo image that claims other
// features (every byte past the image's magic set) is refused with CRIU's
// reason.
func TestCPUInfoCheckReal(t *testing.T) {
	path := realCRIU(t)
	ctx := context.Background()
	img, err := CPUInfo(ctx, path)
	if err != nil || len(img) < 16 {
		t.Fatalf("CPUInfo: %d bytes, %v", len(img), err)
	}
	if err := CPUCheck(ctx, path, img); err != nil {
		t.Errorf("this host refuses its own CPU: %v", err)
	}
	bad := append([]byte(nil), img...)
	for i := 12; i < len(bad); i++ {
		bad[i] = 0xff
	}
	if err := CPUCheck(ctx, path, bad); !errors.Is(err, ErrCPU) {
		t.Errorf("a CPU with every feature: %v, want ErrCPU", err)
	}
}
