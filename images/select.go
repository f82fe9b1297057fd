package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// ExtractSelected is Extract that writes only the regular files keep
// accepts (by archive name); it reads, checks and hashes every entry as
// Extract does, and creates every directory. cr inspect uses it to look at
// an image's metadata without writing its page contents to disk.
func ExtractSelected(ctx context.Context, r io.Reader, dst string, l Limits, keep func(name string) bool) (*Manifest, error) {
	m, err := extractSelected(ctx, r, dst, l, keep)
	if err != nil {
		return nil, fmt.Errorf("extract image: %w", err)
	}
	return m, nil
}

// ExtractSelectedFile is ExtractSelected from the image file at path.
func ExtractSelectedFile(ctx context.Context, path, dst string, l Limits, keep func(name string) bool) (*Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("extract image: %w", err)
	}
	defer f.Close()
	m, err := extractSelected(ctx, f, dst, l, keep)
	if err != nil {
		return nil, fmt.Errorf("extract image %s: %w", path, err)
	}
	return m, nil
}

func extractSelected(ctx context.Context, r io.Reader, dst string, l Limits, keep func(string) bool) (*Manifest, error) {
	root, err := openEmptyRoot(dst)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	m, err := read(ctx, r, l, &selectSink{dirSink: dirSink{root: root}, keep: keep})
	if err != nil {
		if cerr := empty(root); cerr != nil {
			return nil, errors.Join(err, fmt.Errorf("empty %s: %w", dst, cerr))
		}
		return nil, err
	}
	return m, nil
}

// selectSink is a dirSink that discards the files keep rejects: its create
// returns a nil file, which the reader hashes without writing.
type selectSink struct {
	dirSink
	keep func(string) bool
}

func (s *selectSink) create(name string) (*os.File, error) {
	if !s.keep(name) {
		return nil, nil
	}
	return s.dirSink.create(name)
}
