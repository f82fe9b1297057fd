package cmd

import (
	"errors"
	"io/fs"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/restore"

	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/nstree"
)

// Exit statuses. Every command's help ends with this table, and ExitCode is
// the one place that maps errors to them.
const (
	ExitOK       = 0
	ExitFailure  = 1  // any other failure
	ExitUsage    = 2  // bad arguments: invalid name or path, unknown flag
	ExitNotFound = 3  // no such container, image or snapshot
	ExitExists   = 4  // the target path already exists
	ExitDenied   = 5  // not root, or outside the caller's container
	ExitEnv      = 6  // CRIU missing or broken, no cgroup freezer
	ExitCRIU     = 7  // CRIU failed; the job was left running
	ExitImage    = 8  // the image is corrupt, truncated, foreign or too new
	ExitLocked   = 9  // another cr holds the lock (snapshot store)
	ExitState    = 10 // the container is in the wrong state (frozen, empty)
)

const exitStatusHelp = `

EXIT STATUS
  0 success; 1 failure; 2 bad arguments; 3 not found; 4 target exists;
  5 not root or outside your container; 6 CRIU or cgroups missing;
  7 CRIU failed (the job was left running); 8 bad image; 9 locked;
  10 wrong container state.`

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// envError marks an error as a missing piece of the environment.
type envError struct{ error }

func (e envError) Unwrap() error { return e.error }

// sentinels lets other packages' errors be mapped without cmd importing
// them all here; each package adds its own in an init.
var sentinels = []struct {
	err  error
	code int
}{
	{nstree.ErrInvalidName, ExitUsage},
	{nstree.ErrNotFound, ExitNotFound},
	{nstree.ErrExists, ExitExists},
	{nstree.ErrNotRoot, ExitDenied},
	{nstree.ErrOutside, ExitDenied},
	{nstree.ErrNoCgroups, ExitEnv},
	{freeze.ErrNoFreezer, ExitEnv},
	{nstree.ErrState, ExitState},
}

func mapError(err error, code int) {
	sentinels = append(sentinels, struct {
		err  error
		code int
	}{err, code})
}

// ExitCode maps an error to cr's exit status.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var u usageError
	if errors.As(err, &u) {
		return ExitUsage
	}
	var e envError
	if errors.As(err, &e) {
		return ExitEnv
	}
	var ce *criubin.CRIUError
	if errors.As(err, &ce) {
		return ExitCRIU
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return s.code
		}
	}
	return ExitFailure
}

var errNoImage = errors.New("no such image")

func init() {
	mapError(errNoImage, ExitNotFound)
	mapError(fs.ErrExist, ExitExists)
	mapError(images.ErrNotImage, ExitImage)
	mapError(images.ErrCorrupt, ExitImage)
	mapError(images.ErrUnsupportedVersion, ExitImage)
	mapError(images.ErrUnsafeEntry, ExitImage)
	mapError(images.ErrTooLarge, ExitImage)
	mapError(restore.ErrIncompatible, ExitImage)
	mapError(criubin.ErrNotFound, ExitEnv)
	mapError(criubin.ErrTooOld, ExitEnv)
	mapError(criubin.ErrCheckFailed, ExitEnv)
}
