package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"sort"
	"sync"
)

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Snapshots int      // snapshot records checked
	Chunks    int      // distinct chunks read and checked
	Damaged   []Damage // in snapshot id order, then file order
}

// DamagedSnapshots returns the ids of the snapshots that have damage.
func (r VerifyReport) DamagedSnapshots() []string {
	var ids []string
	for _, d := range r.Damaged {
		if len(ids) == 0 || ids[len(ids)-1] != d.SnapshotID {
			ids = append(ids, d.SnapshotID)
		}
	}
	return ids
}

// Verify reads every snapshot record and every chunk they reference,
// decompresses each chunk once and checks its sha256, and checks that each
// file's chunks add up to its size. It changes nothing: damage is reported,
// naming the snapshot, the file and the chunk, and the undamaged snapshots
// stay usable. The error is for failures of the check itself (for example
// an unreadable snapshots directory), not for damage.
func (s *Store) Verify(ctx context.Context) (VerifyReport, error) {
	var rep VerifyReport
	ids, err := s.ids()
	if err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	var snaps []*Snapshot
	for _, id := range ids {
		snap, err := s.loadSnapshot(id)
		var d Damage
		switch {
		case errors.Is(err, ErrNotFound):
			continue // removed meanwhile
		case errors.As(err, &d):
			rep.Snapshots++
			rep.Damaged = append(rep.Damaged, d)
			continue
		case err != nil:
			return rep, fmt.Errorf("verify: %w", err)
		}
		rep.Snapshots++
		snaps = append(snaps, snap)
	}

	var names []string
	seen := make(map[string]bool)
	for _, snap := range snaps {
		for _, f := range snap.Files {
			for _, c := range f.Chunks {
				if !seen[c] {
					seen[c] = true
					names = append(names, c)
				}
			}
		}
	}
	sort.Strings(names) // read in directory order
	results, err := s.checkChunks(ctx, names)
	if err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	rep.Chunks = len(names)

	for _, snap := range snaps {
		var damage []Damage
		for _, f := range snap.Files {
			var size int64
			bad := false
			reported := make(map[string]bool)
			for _, c := range f.Chunks {
				r := results[c]
				if r.fault == "" {
					size += r.size
					continue
				}
				bad = true
				if !reported[c] {
					reported[c] = true
					damage = append(damage, Damage{SnapshotID: snap.ID, File: f.Name, Chunk: c, Reason: r.fault})
				}
			}
			if !bad && size != f.Size {
				damage = append(damage, Damage{SnapshotID: snap.ID, File: f.Name, Reason: fmt.Sprintf("chunks add up to %d bytes, want %d", size, f.Size)})
			}
		}
		// A snapshot removed while Verify ran lost its chunks to Prune
		// legitimately.
		if len(damage) > 0 {
			if _, err := s.be.readRecord(ctx, snap.ID); errors.Is(err, fs.ErrNotExist) {
				rep.Snapshots--
				continue
			}
		}
		rep.Damaged = append(rep.Damaged, damage...)
	}
	sort.SliceStable(rep.Damaged, func(i, j int) bool { return rep.Damaged[i].SnapshotID < rep.Damaged[j].SnapshotID })
	return rep, nil
}

type chunkCheck struct {
	size  int64
	fault string
}

// checkChunks reads and checks every named chunk with a few workers.
func (s *Store) checkChunks(ctx context.Context, names []string) (map[string]chunkCheck, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	results := make(map[string]chunkCheck, len(names))
	var mu sync.Mutex
	work := make(chan string)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			var buf []byte
			for name := range work {
				data, err := s.readChunk(name, buf)
				buf = data
				var fault *chunkFault
				var r chunkCheck
				switch {
				case errors.As(err, &fault):
					r.fault = fault.reason
				case err != nil:
					cancel(err)
					continue
				default:
					r.size = int64(len(data))
				}
				mu.Lock()
				results[name] = r
				mu.Unlock()
			}
		})
	}
	for _, name := range names {
		select {
		case work <- name:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	if ctx.Err() != nil {
		return nil, context.Cause(ctx)
	}
	return results, nil
}
