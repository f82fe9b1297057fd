package freeze

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

const (
	v1StateFile          = "freezer.state"
	v1SelfFreezingFile   = "freezer.self_freezing"
	v1ParentFreezingFile = "freezer.parent_freezing"

	v1Thawed   = "THAWED"
	v1Freezing = "FREEZING"
	v1Frozen   = "FROZEN"
)

// v1 is the cgroup v1 freezer controller: writing FROZEN or THAWED to
// freezer.state is a request; reading it gives the current state, which the
// kernel updates on each read.
type v1 struct {
	path string
	// state reads and writes freezer.state. Tests substitute a kernel
	// whose state lags behind the requests, which a plain file cannot do.
	state stateFile
}

type stateFile interface {
	read() (string, error)
	write(string) error
}

type cgroupStateFile string

func (dir cgroupStateFile) read() (string, error) { return readFile(string(dir), v1StateFile) }
func (dir cgroupStateFile) write(s string) error  { return writeFile(string(dir), v1StateFile, s) }

// NewV1 returns the cgroup v1 freezer of the cgroup directory path (in the
// freezer hierarchy) without checking that it is one (New does).
func NewV1(path string) Freezer {
	path = filepath.Clean(path)
	return &v1{path: path, state: cgroupStateFile(path)}
}

func (f *v1) Path() string { return f.path }

// Rewrite FROZEN every v1Rewrite polls: a task that was between fork and
// its freezing point (or that the kernel missed) is signalled again. Every
// v1Kick polls thaw briefly and refreeze, as runc does, to get past tasks
// stuck in FREEZING.
const (
	v1Rewrite = 4
	v1Kick    = 50
)

func (f *v1) Freeze(ctx context.Context) (err error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if err := f.state.write(v1Frozen); err != nil {
		return fmt.Errorf("freeze %s: %w", f.path, err)
	}
	defer func() {
		if err != nil {
			f.undo()
		}
	}()
	err = poll(ctx, func(i int) (bool, error) {
		s, err := f.state.read()
		if err != nil || s == v1Frozen {
			return s == v1Frozen, err
		}
		if s != v1Freezing && s != v1Thawed {
			return false, fmt.Errorf("unexpected freezer state %q", s)
		}
		switch {
		case i > 0 && i%v1Kick == 0:
			if err := f.state.write(v1Thawed); err != nil {
				return false, err
			}
			time.Sleep(time.Millisecond)
			fallthrough
		case i%v1Rewrite == v1Rewrite-1 || s == v1Thawed:
			// THAWED here means someone thawed the cgroup under us:
			// ask again.
			if err := f.state.write(v1Frozen); err != nil {
				return false, err
			}
		}
		return false, nil
	})
	if err != nil {
		return waitError("freeze", f.path, err)
	}
	return nil
}

// undo thaws the cgroup after a failed freeze; see (*v2).undo.
func (f *v1) undo() {
	if f.state.write(v1Thawed) != nil {
		return
	}
	if anc, err := f.frozenAncestor(); err != nil || anc != "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), undoTimeout)
	defer cancel()
	_ = poll(ctx, func(int) (bool, error) {
		s, err := f.state.read()
		return s == v1Thawed, err
	})
}

func (f *v1) Thaw(ctx context.Context) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if err := f.state.write(v1Thawed); err != nil {
		return fmt.Errorf("thaw %s: %w", f.path, err)
	}
	err := poll(ctx, func(i int) (bool, error) {
		s, err := f.state.read()
		if err != nil || s == v1Thawed {
			return s == v1Thawed, err
		}
		if i%8 == 0 {
			anc, err := f.frozenAncestor()
			if err != nil {
				return false, err
			}
			if anc != "" {
				return false, fmt.Errorf("%w: %s", ErrAncestorFrozen, anc)
			}
		}
		return false, nil
	})
	if err != nil {
		return waitError("thaw", f.path, err)
	}
	return nil
}

func (f *v1) State() (State, error) {
	s, err := f.state.read()
	if err != nil {
		return "", fmt.Errorf("read freezer state: %w", err)
	}
	switch s {
	case v1Thawed:
		return Thawed, nil
	case v1Freezing:
		return Freezing, nil
	case v1Frozen:
		return Frozen, nil
	}
	return "", fmt.Errorf("read freezer state: unexpected state %q in %s", s, f.path)
}

// frozenAncestor returns the nearest ancestor that is freezing or frozen by
// its own request, or "" if freezer.parent_freezing says none is. If the
// kernel says one is but the walk cannot name it, it returns the parent.
func (f *v1) frozenAncestor() (string, error) {
	v, err := readFile(f.path, v1ParentFreezingFile)
	if err != nil || v != "1" {
		return "", err
	}
	for dir := filepath.Dir(f.path); ; dir = filepath.Dir(dir) {
		v, err := readFile(dir, v1SelfFreezingFile)
		if errors.Is(err, fs.ErrNotExist) || dir == filepath.Dir(dir) {
			break
		}
		if err != nil {
			return "", err
		}
		if v == "1" {
			return dir, nil
		}
	}
	return filepath.Dir(f.path), nil
}
