// Package freeze owns the cgroup freezer: it freezes and thaws a cgroup
// subtree through one interface, whether the kernel offers the cgroup v2
// freezer (cgroup.freeze and cgroup.events) or the v1 freezer controller
// (freezer.state), and it finds which cgroup hierarchy cr keeps its
// containers in (Detect).
//
// Freeze returns only once the whole subtree is frozen, and a freeze that
// fails or times out is undone, so the caller never has to clean up after a
// half-frozen cgroup.
package freeze

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// State is the effective freezer state of a cgroup.
type State string

// The freezer states. A cgroup is Freezing between a freeze request and the
// moment every task in its subtree is frozen.
const (
	Thawed   State = "thawed"
	Freezing State = "freezing"
	Frozen   State = "frozen"
)

// DefaultTimeout bounds Freeze and Thaw when the caller's context has no
// deadline of its own.
const DefaultTimeout = 10 * time.Second

var (
	// ErrNoFreezer means the directory is not a cgroup with a freezer
	// (neither cgroup.freeze nor freezer.state), or that no cgroup
	// hierarchy with a freezer is mounted.
	ErrNoFreezer = errors.New("no cgroup freezer")
	// ErrTimeout means the cgroup did not reach the requested state before
	// the context's deadline.
	ErrTimeout = errors.New("timed out")
	// ErrAncestorFrozen means a cgroup cannot be thawed because a cgroup
	// above it is frozen: the kernel keeps it frozen until that ancestor is
	// thawed.
	ErrAncestorFrozen = errors.New("ancestor cgroup is frozen")
)

// Freezer freezes and thaws one cgroup and everything below it.
type Freezer interface {
	// Path is the cgroup's directory.
	Path() string
	// Freeze returns once every task of the cgroup's subtree is frozen. It
	// is bounded by ctx (DefaultTimeout if ctx has no deadline); when it
	// fails it thaws the cgroup back and returns an error wrapping
	// ErrTimeout or the cause.
	Freeze(ctx context.Context) error
	// Thaw returns once the cgroup is thawed. It returns an error wrapping
	// ErrAncestorFrozen when a frozen ancestor keeps the cgroup frozen.
	Thaw(ctx context.Context) error
	// State reports the effective state: a cgroup under a frozen ancestor
	// is Frozen even if it was not frozen itself.
	State() (State, error)
}

// New returns the freezer of the cgroup directory path, choosing the
// implementation by the files the directory has: cgroup.freeze for v2,
// freezer.state for v1. It returns an error wrapping ErrNoFreezer if the
// directory has neither (a v2 root cgroup, or a v1 hierarchy of another
// controller).
func New(path string) (Freezer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open freezer: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("open freezer %s: not a directory", path)
	}
	for _, c := range []struct {
		file string
		make func(string) Freezer
	}{
		{v2FreezeFile, NewV2},
		{v1StateFile, NewV1},
	} {
		_, err := os.Stat(filepath.Join(path, c.file))
		if err == nil {
			return c.make(path), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open freezer: %w", err)
		}
	}
	return nil, fmt.Errorf("open freezer %s: %w", path, ErrNoFreezer)
}

// WithTimeout returns a context for one Freeze or Thaw: bounded by timeout,
// or by DefaultTimeout when timeout is not positive.
func WithTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return context.WithTimeout(ctx, timeout)
}

// bounded applies DefaultTimeout to a context without a deadline, so that no
// freeze or thaw can wait forever.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// Polling backoff while waiting for the kernel to reach a state.
const (
	minPoll = time.Millisecond
	maxPoll = 20 * time.Millisecond
)

// poll calls check with a backoff from minPoll doubling to maxPoll until it
// reports done, fails, or ctx ends. It gives check one last chance after ctx
// ends, so a state reached at the deadline still counts. On deadline it
// returns ErrTimeout, on cancellation ctx.Err().
func poll(ctx context.Context, check func(iteration int) (bool, error)) error {
	delay := minPoll
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for i := 0; ; i++ {
		done, err := check(i)
		if err != nil || done {
			return err
		}
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			if done, err := check(i + 1); err != nil || done {
				return err
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return ErrTimeout
			}
			return ctx.Err()
		case <-timer.C:
		}
		delay = min(2*delay, maxPoll)
	}
}

// waitError describes a failed wait for the state op (freeze or thaw)
// asked for.
func waitError(op, path string, err error) error {
	if errors.Is(err, ErrTimeout) {
		return fmt.Errorf("%s %s: %w waiting for the cgroup to %s", op, path, err, op)
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}

// undoTimeout bounds the thaw that undoes a failed freeze: it runs after the
// caller's context has already ended.
const undoTimeout = 2 * time.Second

// readFile returns the trimmed content of a cgroup file.
func readFile(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// writeFile writes a value to an existing cgroup file. It never creates the
// file: a missing file means the cgroup is gone or has no freezer.
func writeFile(dir, name, value string) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
