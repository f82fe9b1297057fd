package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/objstore"
)

// imageSink is where cr checkpoint streams an image that is not a local
// file: the image exists only once Commit returns nil; Abort (after a
// failure or a signal) leaves nothing.
type imageSink interface {
	io.Writer
	Commit() error
	Abort()
}

// objectSink is the dump.Sink of an image streamed to object storage: the
// archive goes to w, which is committed only when the archive is whole and
// aborted otherwise.
type objectSink struct {
	w       imageSink
	archive dump.ArchiveSink
	elapsed time.Duration
}

func (s *objectSink) Write(ctx context.Context, ck *dump.Checkpoint) error {
	start := time.Now()
	s.archive.W = s.w
	err := s.archive.Write(ctx, ck)
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = s.w.Commit()
	}
	if err != nil {
		s.w.Abort()
	}
	s.elapsed = time.Since(start)
	return err
}

// createS3Image starts the upload of an image to s3://BUCKET/KEY, failing
// (before the job is touched) when the bucket cannot be used or the key
// exists.
func createS3Image(ctx context.Context, loc string) (imageSink, error) {
	u, err := objstore.Parse(loc)
	if err != nil {
		return nil, usageError{err}
	}
	if u.Key == "" || u.Key[len(u.Key)-1] == '/' {
		return nil, usageError{fmt.Errorf("%w: %s names no object: want s3://BUCKET/KEY", objstore.ErrBadURL, loc)}
	}
	c, err := objstore.Dial(ctx, u.Bucket)
	if err != nil {
		return nil, err
	}
	return c.Create(ctx, u.Key, false)
}

// openS3Image opens the image at s3://BUCKET/KEY for reading as a stream;
// a missing key is "no such image".
func openS3Image(ctx context.Context, loc string) (*objstore.Reader, error) {
	u, err := objstore.Parse(loc)
	if err != nil {
		return nil, usageError{err}
	}
	c, err := objstore.Dial(ctx, u.Bucket)
	if err != nil {
		return nil, err
	}
	r, err := c.Open(ctx, u.Key)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", errNoImage, loc)
		}
		return nil, err
	}
	return r, nil
}
