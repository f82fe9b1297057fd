package criubin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// MaxCPUInfo bounds the cpuinfo image a peer may send.
const MaxCPUInfo = 64 << 10

// CPUCapDefault is CRIU's default cpu_cap (fpu and ins): what a dump
// passes so that CRIU records its CPU in cpuinfo.img (CPUInfoFile).
const CPUCapDefault = 1<<0 | 1<<2

// CPUInfoFile is the CRIU image that describes the dumping CPU.
const CPUInfoFile = "cpuinfo.img"

// ErrCPU: this host's CPU lacks features of the source's.
var ErrCPU = errors.New("CPU not compatible")

// CPUInfo returns this host's CPU description as CRIU writes it
// (`criu cpuinfo dump`: cpuinfo.img), for another host's CPUCheck.
func CPUInfo(ctx context.Context, path string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "cr-cpuinfo-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if out, err := run(ctx, path, "cpuinfo", "dump", "-D", dir); err != nil {
		return nil, fmt.Errorf("criu cpuinfo dump: %v: %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, CPUInfoFile))
	if err == nil && len(b) > MaxCPUInfo {
		err = fmt.Errorf("criu cpuinfo dump: %d bytes", len(b))
	}
	return b, err
}

// CPUCheck asks CRIU whether tasks dumped on the CPU described by img (a
// CPUInfo) can run on this host's (`criu cpuinfo check`); a refusal wraps
// ErrCPU with CRIU's reason.
func CPUCheck(ctx context.Context, path string, img []byte) error {
	if len(img) > MaxCPUInfo {
		return fmt.Errorf("%w: a cpuinfo image of %d bytes", ErrCPU, len(img))
	}
	dir, err := os.MkdirTemp("", "cr-cpuinfo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, CPUInfoFile), img, 0o600); err != nil {
		return err
	}
	out, err := run(ctx, path, "cpuinfo", "check", "-D", dir)
	if err == nil {
		return nil
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return fmt.Errorf("run %s cpuinfo check: %w", path, err)
	}
	return fmt.Errorf("%w: %s", ErrCPU, checkMessage(out, exit))
}
