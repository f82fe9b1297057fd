package rootfs

import (
	"debug/elf"
	"fmt"
)

// CheckStatic refuses an init binary that needs a dynamic loader: inside
// a container's own root there is no host libc to load it with.
func CheckStatic(exe string) error {
	f, err := elf.Open(exe)
	if err != nil {
		return fmt.Errorf("rootfs: read %s: %w", exe, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("--rootfs needs a statically linked cr: %s is dynamically linked (build it with CGO_ENABLED=0, as make build does)", exe)
		}
	}
	return nil
}
