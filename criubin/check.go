package criubin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrCheckFailed means `criu check` found that CRIU cannot work here, or
// could not run its checks (for want of privileges).
var ErrCheckFailed = errors.New("criu check failed")

// Check runs `criu check`. It returns nil when CRIU says it can work here,
// else an error wrapping ErrCheckFailed that carries CRIU's own message.
func Check(ctx context.Context, path string) error {
	out, err := run(ctx, path, "check")
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("run %s check: %w", path, ctx.Err())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return fmt.Errorf("run %s check: %w", path, err)
	}
	return fmt.Errorf("%w: %s", ErrCheckFailed, checkMessage(out, exit))
}

// run runs CRIU with args and returns its stdout and stderr together.
//
// CRIU runs in a process group of its own, so that a Ctrl-C reaches cr
// (which then cancels ctx) and not CRIU in the middle of its start-up
// checks, which fork helpers: when ctx ends the whole group is killed
// (these are queries, never a dump or a restore), and Wait does not wait
// for a helper that outlived CRIU holding its output pipe.
func run(ctx context.Context, path string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	return out.String(), err
}

// checkMessage condenses the output of a failed `criu check` to one line:
// its Error messages if it printed any, else all it printed.
func checkMessage(out string, exit *exec.ExitError) string {
	var errs, all []string
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		all = append(all, line)
		if msg, ok := errorMessage(line); ok {
			errs = append(errs, msg)
		}
	}
	lines := all
	if len(errs) > 0 {
		lines = errs
	}
	if len(lines) > 10 {
		lines = append(lines[:10], "...")
	}
	if len(lines) == 0 {
		return exit.String() + " without a message"
	}
	return strings.Join(lines, " ")
}

// Features are the kernel features CRIU probes that change what cr can do.
type Features struct {
	// UserFaultFD (CRIU's "uffd"): lazy restore, post-copy migration.
	UserFaultFD bool
	// UffdNoncoop ("uffd-noncoop"): lazy restore of processes that fork,
	// map or unmap memory while their pages arrive.
	UffdNoncoop bool
	// MemDirtyTrack ("mem_dirty_track"): soft-dirty memory tracking, for
	// iterative pre-dump (pre-copy migration).
	MemDirtyTrack bool
	// PidfdStore ("pidfd_store"): pid reuse detection between pre-dumps.
	PidfdStore bool
	// NftablesLock ("network_lock_nftables"): locking the network with
	// nftables during dump and restore.
	NftablesLock bool
}

// The names `criu check --feature` knows the Features by (cr-check.c).
const (
	FeatureUffd          = "uffd"
	FeatureUffdNoncoop   = "uffd-noncoop"
	FeatureMemDirtyTrack = "mem_dirty_track"
	FeaturePidfdStore    = "pidfd_store"
	FeatureNftablesLock  = "network_lock_nftables"
)

// ProbeFeatures asks CRIU for each of the Features with `criu check
// --feature NAME`, concurrently: a feature is present when the check exits
// 0. It returns an error when a probe cannot say: CRIU does not know the
// feature, lacks the privileges to check, or does not run.
func ProbeFeatures(ctx context.Context, path string) (Features, error) {
	var f Features
	probes := []struct {
		name string
		dst  *bool
	}{
		{FeatureUffd, &f.UserFaultFD},
		{FeatureUffdNoncoop, &f.UffdNoncoop},
		{FeatureMemDirtyTrack, &f.MemDirtyTrack},
		{FeaturePidfdStore, &f.PidfdStore},
		{FeatureNftablesLock, &f.NftablesLock},
	}
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			*p.dst, errs[i] = probeFeature(ctx, path, p.name)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return Features{}, err
	}
	return f, nil
}

// Messages of a `criu check --feature` that failed without checking.
var probeFailures = []string{
	"Unknown feature",              // an older or newer CRIU
	"CRIU needs to have the CAP_",  // not privileged
	"Running as non-root requires", // not root, no --unprivileged
}

func probeFeature(ctx context.Context, path, name string) (bool, error) {
	out, err := run(ctx, path, "check", "--feature", name)
	if err == nil {
		return true, nil
	}
	if ctx.Err() != nil {
		return false, fmt.Errorf("probe criu feature %s: %w", name, ctx.Err())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return false, fmt.Errorf("probe criu feature %s: %w", name, err)
	}
	for _, m := range probeFailures {
		if strings.Contains(out, m) {
			return false, fmt.Errorf("probe criu feature %s: %w: %s", name, ErrCheckFailed, checkMessage(out, exit))
		}
	}
	return false, nil
}
