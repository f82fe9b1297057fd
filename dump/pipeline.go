package dump

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/store"
	"github.com/cr-dev/cr/nstree"
)

// A Sink takes the image of a dumped subtree: an image file, a snapshot
// store, a migration's connection (or, later, an object store). Write is
// called once, with the source still frozen unless it was left running;
// it must leave nothing of the image behind when it fails.
type Sink interface {
	Write(ctx context.Context, ck *Checkpoint) error
}

// ErrInDoubt, wrapped by a sink's error, says that the image may have
// been taken in full (a migration whose destination may run the job): the
// source must neither resume nor end, and is left frozen.
var ErrInDoubt = errors.New("outcome in doubt")

// ErrEndSource: the image is safe in the sink, but ending the source
// failed.
var ErrEndSource = errors.New("ending the source failed")

// Take is the one checkpoint lifecycle: freeze and dump the subtree at
// root (Run), give the image to sink, then settle the source (Settle):
// resumed when it was left running or anything failed, ended once the
// sink has its image. The staging area is gone when it returns. On error
// the Checkpoint, if not nil, still says how long the source was frozen.
func Take(ctx context.Context, t *nstree.Tree, root *nstree.Node, o Options, sink Sink) (*Checkpoint, error) {
	ck, err := Run(ctx, t, root, o)
	if err != nil {
		return nil, err
	}
	defer ck.Cleanup()
	if o.Dumped != nil {
		o.Dumped(ck)
	}
	err = sink.Write(ctx, ck)
	if err == nil && o.Stored != nil {
		o.Stored(ck)
	}
	return ck, ck.Settle(err, o.LeaveRunning)
}

// Settle decides what becomes of the source once its image went to a
// sink with the result err, in one place for every kind of sink: a
// failure resumes it (left running, as before the checkpoint), a failure
// in doubt (ErrInDoubt) leaves it frozen, and a success ends it (killed
// while still frozen, its nodes removed) unless it was left running.
// It returns err, or the failure to end the source (ErrEndSource).
func (c *Checkpoint) Settle(err error, leaveRunning bool) error {
	switch {
	case errors.Is(err, ErrInDoubt):
		return err
	case err != nil:
		c.Resume()
		return err
	case leaveRunning:
		return nil
	}
	if !c.resumed && !c.frozenAt.IsZero() {
		c.Frozen = time.Since(c.frozenAt) // frozen until the sink had it all
	}
	if ferr := c.Finish(context.Background()); ferr != nil {
		return fmt.Errorf("%w: %w", ErrEndSource, ferr)
	}
	return nil
}

// writeOptions are the archive options of the checkpoint's image: its
// precompressed pages, and the time the source has been frozen when it
// still is.
func (c *Checkpoint) writeOptions(compression string, progress func(int64)) images.WriteOptions {
	return images.WriteOptions{
		Compression:   compression,
		Precompressed: c.Precompressed(),
		Progress:      progress,
		Stats: func(s *images.Stats) {
			if !c.resumed {
				s.FrozenMicros = c.FrozenSoFar().Microseconds()
			}
		},
	}
}

// FileSink writes the image file Path atomically (images.WriteFile).
type FileSink struct {
	Path        string
	Compression string // the dump's (Options.Compression)
	Progress    func(raw int64)
	// Result is the written image, once Write succeeded, and Elapsed
	// the time its writing took, synced and renamed.
	Result  images.WriteResult
	Elapsed time.Duration
}

func (s *FileSink) Write(ctx context.Context, ck *Checkpoint) error {
	start := time.Now()
	res, err := images.WriteFile(ctx, s.Path, ck.Dir, ck.Manifest, ck.writeOptions(s.Compression, s.Progress))
	s.Result, s.Elapsed = res, time.Since(start)
	return err
}

// ArchiveSink writes the image as a stream to W (a migration's connection),
// compressed as the dump was (Options.Compression).
type ArchiveSink struct {
	W           io.Writer
	Compression string
	Progress    func(raw int64)
	Result      images.WriteResult
}

func (s *ArchiveSink) Write(ctx context.Context, ck *Checkpoint) error {
	res, err := images.WriteArchive(ctx, s.W, ck.Dir, ck.Manifest, ck.writeOptions(s.Compression, s.Progress))
	s.Result = res
	return err
}

// StoreSink adds the image to a snapshot store as a new snapshot. The
// store deduplicates file content, so it takes a dump staged as files
// (Options.Stream false).
type StoreSink struct {
	Store *store.Store
	At    time.Time
	// Snapshot is the added snapshot, once Write succeeded.
	Snapshot *store.Snapshot
}

func (s *StoreSink) Write(ctx context.Context, ck *Checkpoint) error {
	if len(ck.Precompressed()) > 0 {
		return errors.New("a snapshot store takes a staged dump, not a streamed one")
	}
	snap, err := s.Store.Add(ctx, ck.Dir, ck.Manifest, s.At)
	if err != nil {
		return fmt.Errorf("store snapshot: %w", err)
	}
	s.Snapshot = snap
	return nil
}
