package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// VerifyReport is the result of Verify.
type VerifyReport struct {
	Snapshots   int      // snapshot records checked
	Chunks      int      // distinct chunks read and checked
	TotalChunks int      // distinct chunks the records list (Chunks, unless a subset was read)
	Damaged     []Damage // in snapshot id order, then file order
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
	return s.VerifySubset(ctx, Subset{})
}

// VerifySubset is Verify reading only the chunks sub selects (every chunk
// for the zero Subset); every record is still checked, and the files whose
// chunks were all read are checked whole.
func (s *Store) VerifySubset(ctx context.Context, sub Subset) (VerifyReport, error) {
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
	rep.TotalChunks = len(names)
	names = sub.pick(names)
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
				r, ok := results[c]
				if !ok {
					bad = true // not read: the size cannot be checked
					continue
				}
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
	for range s.readers() {
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

// Subset selects the chunks verify reads, as restic's --read-data-subset:
// a fraction of them chosen at random on each run (Fraction, 0 < f <= 1),
// or group N of T (N/T: chunks whose name, as a number, is N-1 modulo T;
// running 1/T to T/T reads each chunk once). The zero Subset is all.
type Subset struct {
	Fraction float64
	N, T     int
}

// ParseSubset parses "10%", "0.1" or "2/5".
func ParseSubset(s string) (Subset, error) {
	bad := fmt.Errorf("--read-data-subset %q: want a percentage (10%%), a fraction (0.1) or N/T (2/5)", s)
	if n, t, ok := strings.Cut(s, "/"); ok {
		nv, err1 := strconv.Atoi(n)
		tv, err2 := strconv.Atoi(t)
		if err1 != nil || err2 != nil || tv < 1 || nv < 1 || nv > tv {
			return Subset{}, bad
		}
		return Subset{N: nv, T: tv}, nil
	}
	scale := 1.0
	if p, ok := strings.CutSuffix(s, "%"); ok {
		s, scale = p, 100
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f/scale > 1 || math.IsNaN(f) {
		return Subset{}, bad
	}
	return Subset{Fraction: f / scale}, nil
}

func (sub Subset) String() string {
	switch {
	case sub.T > 0:
		return fmt.Sprintf("%d/%d", sub.N, sub.T)
	case sub.Fraction > 0:
		return strconv.FormatFloat(sub.Fraction*100, 'g', -1, 64) + "%"
	}
	return "all"
}

func (sub Subset) pick(names []string) []string {
	switch {
	case sub.T > 0:
		var out []string
		for _, n := range names {
			v, _ := strconv.ParseUint(n[:15], 16, 64)
			if int(v%uint64(sub.T)) == sub.N-1 {
				out = append(out, n)
			}
		}
		return out
	case sub.Fraction > 0 && sub.Fraction < 1:
		k := int(math.Ceil(sub.Fraction * float64(len(names))))
		perm := rand.Perm(len(names))[:k]
		sort.Ints(perm)
		out := make([]string, k)
		for i, p := range perm {
			out[i] = names[p]
		}
		return out
	}
	return names
}
