package freeze

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

const (
	v2FreezeFile = "cgroup.freeze"
	v2EventsFile = "cgroup.events"
)

// v2 is the cgroup v2 freezer: a request in cgroup.freeze, the effective
// state in the "frozen" key of cgroup.events.
type v2 struct {
	path string
}

// NewV2 returns the cgroup v2 freezer of the cgroup directory path without
// checking that it is one (New does).
func NewV2(path string) Freezer {
	return &v2{path: filepath.Clean(path)}
}

func (f *v2) Path() string { return f.path }

func (f *v2) Freeze(ctx context.Context) (err error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if err := writeFile(f.path, v2FreezeFile, "1"); err != nil {
		return fmt.Errorf("freeze %s: %w", f.path, err)
	}
	defer func() {
		if err != nil {
			f.undo()
		}
	}()
	if err := poll(ctx, func(int) (bool, error) { return f.frozen() }); err != nil {
		return waitError("freeze", f.path, err)
	}
	return nil
}

// undo thaws the cgroup after a failed freeze, waiting a little for the
// kernel to confirm. Its errors are dropped: the freeze error is the one the
// caller needs.
func (f *v2) undo() {
	if writeFile(f.path, v2FreezeFile, "0") != nil {
		return
	}
	if anc, err := f.frozenAncestor(); err != nil || anc != "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), undoTimeout)
	defer cancel()
	_ = poll(ctx, func(int) (bool, error) {
		frozen, err := f.frozen()
		return !frozen, err
	})
}

func (f *v2) Thaw(ctx context.Context) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if err := writeFile(f.path, v2FreezeFile, "0"); err != nil {
		return fmt.Errorf("thaw %s: %w", f.path, err)
	}
	err := poll(ctx, func(i int) (bool, error) {
		frozen, err := f.frozen()
		if err != nil || !frozen {
			return !frozen, err
		}
		// Still frozen: the kernel may need a moment, or an ancestor
		// holds the cgroup frozen and waiting would be pointless.
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

func (f *v2) State() (State, error) {
	frozen, err := f.frozen()
	if err != nil {
		return "", fmt.Errorf("read freezer state: %w", err)
	}
	if frozen {
		return Frozen, nil
	}
	req, err := readFile(f.path, v2FreezeFile)
	if err != nil {
		return "", fmt.Errorf("read freezer state: %w", err)
	}
	if req == "1" {
		return Freezing, nil
	}
	return Thawed, nil
}

// frozen reports the "frozen" key of cgroup.events: whether the cgroup is
// effectively frozen, by its own request or an ancestor's.
func (f *v2) frozen() (bool, error) {
	file, err := os.Open(filepath.Join(f.path, v2EventsFile))
	if err != nil {
		return false, err
	}
	defer file.Close()
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), " ")
		if key == "frozen" {
			return strings.TrimSpace(val) == "1", nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	return false, fmt.Errorf("%s: no frozen key", file.Name())
}

// frozenAncestor returns the nearest ancestor cgroup that was asked to
// freeze, or "" if none was. It walks up while directories have
// cgroup.freeze (the root cgroup has none).
func (f *v2) frozenAncestor() (string, error) {
	for dir := filepath.Dir(f.path); ; dir = filepath.Dir(dir) {
		v, err := readFile(dir, v2FreezeFile)
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		if v == "1" {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", nil
		}
	}
}
