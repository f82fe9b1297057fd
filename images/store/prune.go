package store

import (
	"context"
	"fmt"
	"time"
)

// PruneResult says what Prune removed (or, on a dry run, would remove).
type PruneResult struct {
	Chunks     int   // unreferenced chunks
	Bytes      int64 // their size on disk: the space freed
	KeptChunks int   // chunks some snapshot references
	KeptBytes  int64
	TempFiles  int // leftovers of interrupted writes in DIR/tmp
}

// Prune deletes every chunk that no snapshot references (left by Remove,
// Forget, or an Add that crashed before writing its record) and the
// leftovers in DIR/tmp. It refuses to run while a snapshot record is
// damaged, since it could not know which chunks that snapshot needs: remove
// the damaged snapshot first. With dryRun it only counts.
func (s *Store) Prune(ctx context.Context, dryRun bool) (PruneResult, error) {
	var res PruneResult
	unlock, err := s.hold(ctx, true)
	if err != nil {
		return res, fmt.Errorf("prune: %w", err)
	}
	defer unlock()

	ids, err := s.ids()
	if err != nil {
		return res, fmt.Errorf("prune: %w", err)
	}
	used := make(map[string]bool)
	for _, id := range ids {
		snap, err := s.loadSnapshot(id)
		if err != nil {
			return res, fmt.Errorf("prune: %w", err)
		}
		for _, f := range snap.Files {
			for _, c := range f.Chunks {
				used[c] = true
			}
		}
	}

	if res.TempFiles, err = s.be.cleanTmp(ctx, dryRun); err != nil {
		return res, fmt.Errorf("prune: %w", err)
	}
	err = s.be.listChunks(ctx, func(name string, size int64) error {
		if used[name] {
			res.KeptChunks++
			res.KeptBytes += size
			return nil
		}
		if !dryRun {
			if err := s.be.removeChunk(ctx, name); err != nil {
				return err
			}
		}
		res.Chunks++
		res.Bytes += size
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("prune: %w", err)
	}
	return res, nil
}

// Forget applies p to the snapshots of path ("" for every path, each path
// on its own) with time buckets in the local time zone, removes the
// snapshots p does not keep (unless dryRun), and returns the decisions. The
// removed snapshots' chunks stay until Prune.
func (s *Store) Forget(ctx context.Context, path string, p Policy, dryRun bool) ([]Decision, error) {
	return s.ForgetFrom(ctx, path, "", p, dryRun)
}

// ForgetFrom is Forget of the snapshots host took ("" for every host; the
// policy applies to each path and host on its own either way).
func (s *Store) ForgetFrom(ctx context.Context, path, host string, p Policy, dryRun bool) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("forget: %w", err)
	}
	unlock, err := s.hold(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("forget: %w", err)
	}
	defer unlock()
	all, err := s.List(path)
	if err != nil {
		return nil, fmt.Errorf("forget: %w", err)
	}
	snaps := all
	if host != "" {
		snaps = nil
		for _, sn := range all {
			if sn.Host == host {
				snaps = append(snaps, sn)
			}
		}
	}
	ds := ApplyPolicyIn(snaps, p, time.Local)
	if dryRun {
		return ds, nil
	}
	var drop []string
	for _, d := range ds {
		if !d.Keep {
			drop = append(drop, d.Snapshot.ID)
		}
	}
	if err := s.remove(drop); err != nil {
		return ds, fmt.Errorf("forget: %w", err)
	}
	return ds, nil
}
