package criubin

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The capabilities Capabilities reports, by bit number.
var capabilityBits = map[string]uint{
	"CAP_SYS_ADMIN":          unix.CAP_SYS_ADMIN,
	"CAP_SYS_PTRACE":         unix.CAP_SYS_PTRACE,
	"CAP_SYS_RESOURCE":       unix.CAP_SYS_RESOURCE,
	"CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
	"CAP_NET_ADMIN":          unix.CAP_NET_ADMIN,
}

// Capabilities reports which of the capabilities CRIU needs the current
// process has in its effective set: CAP_SYS_ADMIN, CAP_SYS_PTRACE,
// CAP_SYS_RESOURCE, CAP_CHECKPOINT_RESTORE and CAP_NET_ADMIN, keyed by
// those names. It reads CapEff from /proc/self/status.
func Capabilities() (map[string]bool, error) {
	return capabilitiesFrom("/proc/self/status")
}

func capabilitiesFrom(statusPath string) (map[string]bool, error) {
	f, err := os.Open(statusPath)
	if err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		hex, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		eff, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("read capabilities: parse CapEff %q: %w", strings.TrimSpace(hex), err)
		}
		caps := make(map[string]bool, len(capabilityBits))
		for name, bit := range capabilityBits {
			caps[name] = eff&(1<<bit) != 0
		}
		return caps, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	return nil, fmt.Errorf("read capabilities: no CapEff in %s", statusPath)
}

// pipeMaxSizePath is the sysctl fs.pipe-max-size.
const pipeMaxSizePath = "/proc/sys/fs/pipe-max-size"

// PipeMaxSize returns fs.pipe-max-size, the largest pipe buffer a process
// without CAP_SYS_RESOURCE may ask for.
func PipeMaxSize() (int, error) {
	return readInt(pipeMaxSizePath)
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return n, nil
}

// LazyPipeMaxSize is the fs.pipe-max-size that lazy (post-copy) migration
// needs when CRIU runs without CAP_SYS_RESOURCE: CRIU grows its page pipes
// up to this size.
const LazyPipeMaxSize = 16 << 20

// ErrPipeMaxSize means CRIU cannot grow its pipes as lazy migration needs.
var ErrPipeMaxSize = errors.New("fs.pipe-max-size too small for lazy migration")

// CheckLazyPipes returns nil if CRIU, run by this process, can grow its
// pipes as lazy migration needs: it has CAP_SYS_RESOURCE, or
// fs.pipe-max-size is at least LazyPipeMaxSize. Otherwise CRIU's dump
// fails with "page-pipe: tee: ... Operation not permitted", and the error
// (wrapping ErrPipeMaxSize) says how to raise the limit.
func CheckLazyPipes() error {
	caps, err := Capabilities()
	if err != nil {
		return err
	}
	size, err := PipeMaxSize()
	if err != nil {
		return err
	}
	return lazyPipes(caps["CAP_SYS_RESOURCE"], size)
}

func lazyPipes(sysResource bool, pipeMaxSize int) error {
	if sysResource || pipeMaxSize >= LazyPipeMaxSize {
		return nil
	}
	return fmt.Errorf("%w: it is %d and CAP_SYS_RESOURCE is missing; raise it with: echo %d > %s",
		ErrPipeMaxSize, pipeMaxSize, LazyPipeMaxSize, pipeMaxSizePath)
}
