package cmd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/cr-dev/cr/images"
)

// openImage opens the image file a command was given, so that every
// command that reads one (inspect, restore) answers the same bad input
// with the same error and exit status: a path that names nothing (missing,
// a dangling symlink, a symlink loop, a file used as a directory) is "no
// such image" (3), a directory is "not a cr image" (8), and a file that is
// not an image is refused by the reader, also with 8. Pipes and other
// streams are accepted: the reader bounds what it reads from them.
func openImage(path string) (*os.File, error) {
	f, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ELOOP), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ENAMETOOLONG):
		return nil, fmt.Errorf("%w: %s: %v", errNoImage, path, reason(err))
	case err != nil:
		return nil, fmt.Errorf("open image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open image: %w", err)
	}
	if fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is a directory", images.ErrNotImage, path)
	}
	return f, nil
}

// reason is the system's explanation inside a *PathError.
func reason(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
