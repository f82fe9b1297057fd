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
//
// A StreamSink of a streamed dump (Options.Stream) takes the pages images
// itself, as they arrive: it begins before the freeze, and is aborted
// when the dump or its Write fails.
func Take(ctx context.Context, t *nstree.Tree, root *nstree.Node, o Options, sink Sink) (*Checkpoint, error) {
	ss, streams := sink.(StreamSink)
	if streams && o.Stream {
		if err := ss.Begin(ctx); err != nil {
			return nil, err
		}
		defer ss.Abort()
		o.pagesTo = ss.Pages
	}
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

// A StreamSink is a Sink that takes the pages images of a streamed dump
// as CRIU writes them, instead of from the spill directory (the snapshot
// store, which cuts them into chunks). Take calls Begin before the dump,
// Pages for each pages image (name as in the image, mode), from several
// goroutines at once, and Abort once it is done, after Write or instead
// of it: Abort must drop what a Write did not complete, and do nothing
// after a Write that succeeded. With --leave-running the images reach
// their writers through a spool each, after the source is thawed (as
// the compressors of Checkpoint.Precompressed do); else CRIU writes at
// their pace, the source frozen anyway.
type StreamSink interface {
	Sink
	Begin(ctx context.Context) error
	Pages(name string, mode uint32) (io.WriteCloser, error)
	Abort()
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

// StoreSink adds the image to a snapshot store as a new snapshot. Of a
// streamed dump (Options.Stream) it is a StreamSink: the pages images are
// cut into chunks as they arrive (store.Adding), and Write adds the small
// images staged in Dir; of a dump staged as files, Write adds them all.
type StoreSink struct {
	Store *store.Store
	At    time.Time
	// Snapshot is the added snapshot, once Write succeeded.
	Snapshot *store.Snapshot

	adding *store.Adding // between Begin and Write or Abort
}

// Begin starts the snapshot (store.StartAdd): the store's lock is held
// until Write or Abort.
func (s *StoreSink) Begin(ctx context.Context) error {
	a, err := s.Store.StartAdd(ctx)
	if err != nil {
		return fmt.Errorf("store snapshot: %w", err)
	}
	s.adding = a
	return nil
}

// Pages is where a pages image of the dump goes: into the snapshot.
func (s *StoreSink) Pages(name string, mode uint32) (io.WriteCloser, error) {
	if s.adding == nil {
		return nil, errors.New("store snapshot: pages before Begin")
	}
	return s.adding.Create(name, mode)
}

// Abort drops the snapshot of a failed dump.
func (s *StoreSink) Abort() {
	if s.adding != nil {
		s.adding.Abort()
		s.adding = nil
	}
}

func (s *StoreSink) Write(ctx context.Context, ck *Checkpoint) error {
	if len(ck.Precompressed()) > 0 {
		// Compressed into the spill directory, not given to the store.
		return errors.New("store snapshot: the pages of a streamed dump went elsewhere than the store")
	}
	var snap *store.Snapshot
	var err error
	if a := s.adding; a != nil {
		s.adding = nil
		snap, err = a.Finish(ck.Dir, ck.Manifest, s.At)
	} else {
		snap, err = s.Store.Add(ctx, ck.Dir, ck.Manifest, s.At)
	}
	if err != nil {
		return fmt.Errorf("store snapshot: %w", err)
	}
	s.Snapshot = snap
	return nil
}
