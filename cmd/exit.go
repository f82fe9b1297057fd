package cmd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/criuimg"
	"github.com/cr-dev/cr/images/store"
	"github.com/cr-dev/cr/limits"
	"github.com/cr-dev/cr/migrate"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/objstore"
	"github.com/cr-dev/cr/restore"
)

// Exit statuses. Every command's help ends with this table (exitStatusHelp),
// and this file is the one place that maps errors to them: ExitCode, from
// the table of sentinels below and cmd's own error types.
const (
	ExitOK          = 0
	ExitFailure     = 1   // any other failure
	ExitUsage       = 2   // bad arguments: invalid name or path, unknown flag, missing argument
	ExitNotFound    = 3   // no such container, image or snapshot
	ExitExists      = 4   // the target path already exists
	ExitDenied      = 5   // not root, or outside the caller's container
	ExitEnv         = 6   // CRIU missing or broken, no cgroup freezer
	ExitCRIU        = 7   // CRIU failed; the job was left running
	ExitImage       = 8   // the image is corrupt, truncated, foreign or too new
	ExitLocked      = 9   // another cr holds the lock (snapshot store, staging area)
	ExitState       = 10  // the container is in the wrong state (frozen, empty)
	ExitAuth        = 11  // migration or object storage: authentication failed or was refused
	ExitUnreachable = 12  // object storage: the endpoint does not answer
	ExitInterrupted = 130 // interrupted by SIGINT or SIGTERM; the job was left running
)

const exitStatusHelp = `

EXIT STATUS
  0 success; 1 failure; 2 bad arguments; 3 not found; 4 target exists;
  5 not root or outside your container; 6 CRIU or cgroups missing;
  7 CRIU failed (the job was left running); 8 bad image; 9 locked;
  10 wrong container state; 11 authentication failed;
  12 object storage unreachable; 130 interrupted (the job was left running).`

// sentinels maps other packages' errors (matched with errors.Is) to exit
// statuses, first match wins.
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
	{nstree.ErrState, ExitState},
	{nstree.ErrLimit, ExitUsage},
	{limits.ErrUnsupported, ExitEnv},
	{network.ErrConfig, ExitEnv},
	{network.ErrAddrInUse, ExitExists},
	{freeze.ErrNoFreezer, ExitEnv},
	{errNoImage, ExitNotFound},
	{fs.ErrExist, ExitExists},
	{images.ErrNotImage, ExitImage},
	{images.ErrCorrupt, ExitImage},
	{images.ErrUnsupportedVersion, ExitImage},
	{images.ErrUnsafeEntry, ExitImage},
	{images.ErrTooLarge, ExitImage},
	{criuimg.ErrBadImage, ExitImage},
	{restore.ErrIncompatible, ExitImage},
	{criubin.ErrNotFound, ExitEnv},
	{criubin.ErrTooOld, ExitEnv},
	{criubin.ErrCheckFailed, ExitEnv},
	{objstore.ErrBadURL, ExitUsage},
	{objstore.ErrAuth, ExitAuth},
	{objstore.ErrUnreachable, ExitUnreachable},
	{objstore.ErrNoBucket, ExitNotFound},
	{store.ErrLocked, ExitLocked},
	{store.ErrLockLost, ExitLocked},
	{store.ErrNotFound, ExitNotFound},
	{store.ErrNoStore, ExitNotFound},
	{store.ErrAmbiguous, ExitUsage},
	{store.ErrDamaged, ExitImage},
	{dump.ErrBusy, ExitLocked},
	{errServeBusy, ExitLocked},
	{migrate.ErrAuth, ExitAuth},
	{migrate.ErrNoAuth, ExitUsage},
	{migrate.ErrTargetExists, ExitExists},
	{migrate.ErrRejected, ExitFailure},
	{migrate.ErrInDoubt, ExitFailure},
}

// ExitCode maps an error to cr's exit status.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	var ie interruptedError
	if errors.As(err, &ie) {
		return ExitInterrupted
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

// errKind names an exit status in JSON errors ("kind").
func errKind(code int) string {
	switch code {
	case ExitUsage:
		return "usage"
	case ExitNotFound:
		return "not_found"
	case ExitExists:
		return "exists"
	case ExitDenied:
		return "denied"
	case ExitEnv:
		return "environment"
	case ExitCRIU:
		return "criu"
	case ExitImage:
		return "image"
	case ExitLocked:
		return "locked"
	case ExitState:
		return "state"
	case ExitAuth:
		return "auth"
	case ExitUnreachable:
		return "unreachable"
	case ExitInterrupted:
		return "interrupted"
	}
	return "failure"
}

// usageError marks bad arguments.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// envError marks an error as a missing piece of the environment.
type envError struct{ error }

func (e envError) Unwrap() error { return e.error }

// exitStatus is returned by commands whose status is another program's
// (cr enter) or that already said why (cr check): no message, just the
// status.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// interruptedError: a SIGINT or SIGTERM ended the operation; outcome says
// what became of the job ("/lab left running").
type interruptedError struct{ outcome string }

func (e interruptedError) Error() string { return "interrupted; " + e.outcome }

// interrupted returns an interruptedError with outcome when ctx was
// cancelled by a signal (see interruptible), and err otherwise.
func interrupted(ctx context.Context, err error, outcome string) error {
	if err != nil && ctx.Err() != nil && errors.Is(context.Cause(ctx), errSignal) {
		return interruptedError{outcome}
	}
	return err
}

var errNoImage = errors.New("no such image")
