package nstree

import "errors"

// Errors callers branch on; cmd maps them to exit codes.
var (
	ErrInvalidName = errors.New("invalid name")
	ErrNotFound    = errors.New("no such container")
	ErrExists      = errors.New("container exists")
	ErrOutside     = errors.New("outside the viewer's container")
	ErrNotRoot     = errors.New("must run as root")
	ErrNoCgroups   = errors.New("no usable cgroup hierarchy")
	ErrBusy        = errors.New("container busy")
	ErrState       = errors.New("wrong container state")
	ErrLimit       = errors.New("invalid limits")
)
