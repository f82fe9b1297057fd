package store

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Policy is a retention policy, applied to the snapshots of each container
// path separately. A zero field is not used; the zero Policy keeps
// everything.
type Policy struct {
	Last   int // keep the newest Last snapshots
	Hourly int // keep the newest snapshot of each of the newest Hourly hours that have one
	Daily  int // ... of each of the newest Daily days
	Weekly int // ... of each of the newest Weekly ISO weeks (Monday to Sunday)
}

// Reasons a snapshot is kept, as Decision.Reasons lists them.
const (
	ReasonLast   = "last snapshot"
	ReasonHourly = "hourly snapshot"
	ReasonDaily  = "daily snapshot"
	ReasonWeekly = "weekly snapshot"
	ReasonAll    = "policy keeps everything"
)

// Empty reports whether the policy keeps everything.
func (p Policy) Empty() bool {
	return p.Last <= 0 && p.Hourly <= 0 && p.Daily <= 0 && p.Weekly <= 0
}

// Validate rejects negative counts.
func (p Policy) Validate() error {
	if p.Last < 0 || p.Hourly < 0 || p.Daily < 0 || p.Weekly < 0 {
		return errors.New("retention counts must not be negative")
	}
	return nil
}

// String describes the policy in English: "keep the last 3 snapshots, 24
// hourly, 7 daily", "keep 7 daily, 4 weekly snapshots", "keep everything".
func (p Policy) String() string {
	if p.Empty() {
		return "keep everything"
	}
	var parts []string
	n := 0 // the count of the last part, for the noun
	switch {
	case p.Last == 1:
		parts = append(parts, "the last snapshot")
	case p.Last > 1:
		parts = append(parts, fmt.Sprintf("the last %d snapshots", p.Last))
	}
	for _, b := range []struct {
		n    int
		name string
	}{{p.Hourly, "hourly"}, {p.Daily, "daily"}, {p.Weekly, "weekly"}} {
		if b.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", b.n, b.name))
			n = b.n
		}
	}
	s := "keep " + strings.Join(parts, ", ")
	switch {
	case p.Last > 0: // "the last N snapshots" already names them
	case n == 1:
		s += " snapshot"
	default:
		s += " snapshots"
	}
	return s
}

// Decision is what a policy does with one snapshot.
type Decision struct {
	Snapshot *Snapshot
	Keep     bool
	Reasons  []string // every reason it is kept: ReasonLast, ReasonHourly, ...; empty when removed
}

// ApplyPolicy decides which snapshots p keeps, with time buckets in the
// local time zone. See ApplyPolicyIn.
func ApplyPolicy(snaps []*Snapshot, p Policy) []Decision {
	return ApplyPolicyIn(snaps, p, time.Local)
}

// ApplyPolicyIn decides which snapshots p keeps, with hours, days and ISO
// weeks taken in loc. Snapshots are grouped by Path (groups in path order)
// and each group is walked newest first (ties: larger id first), which is
// also the order of the result. The newest p.Last are kept as "last
// snapshot". For each of hourly, daily and weekly, a snapshot is kept when
// its hour (day, week) differs from that of the previous snapshot kept for
// that kind and fewer than N were kept for it: so the newest snapshot of each
// of the N newest buckets that have one. A snapshot kept for several kinds
// lists every reason. An empty policy keeps everything. The result is the
// same as restic's forget with --keep-last, --keep-hourly, --keep-daily and
// --keep-weekly.
func ApplyPolicyIn(snaps []*Snapshot, p Policy, loc *time.Location) []Decision {
	if loc == nil {
		loc = time.Local
	}
	groups := make(map[string][]*Snapshot)
	for _, s := range snaps {
		groups[s.Path] = append(groups[s.Path], s)
	}
	paths := make([]string, 0, len(groups))
	for path := range groups {
		paths = append(paths, path)
	}
	slices.Sort(paths)

	type bucket struct {
		n      int
		key    func(time.Time) int
		reason string
	}
	out := make([]Decision, 0, len(snaps))
	for _, path := range paths {
		list := groups[path]
		slices.SortStableFunc(list, func(a, b *Snapshot) int {
			if c := b.Time.Compare(a.Time); c != 0 {
				return c
			}
			return strings.Compare(b.ID, a.ID)
		})
		buckets := []bucket{
			{p.Hourly, func(t time.Time) int { return t.Year()*1_000_000 + int(t.Month())*10_000 + t.Day()*100 + t.Hour() }, ReasonHourly},
			{p.Daily, func(t time.Time) int { return t.Year()*10_000 + int(t.Month())*100 + t.Day() }, ReasonDaily},
			{p.Weekly, func(t time.Time) int { y, w := t.ISOWeek(); return y*100 + w }, ReasonWeekly},
		}
		last := make([]int, len(buckets))
		for i := range last {
			last[i] = -1
		}
		for i, s := range list {
			d := Decision{Snapshot: s}
			if p.Empty() {
				d.Keep, d.Reasons = true, []string{ReasonAll}
				out = append(out, d)
				continue
			}
			if i < p.Last {
				d.Reasons = append(d.Reasons, ReasonLast)
			}
			t := s.Time.In(loc)
			for k := range buckets {
				b := &buckets[k]
				if b.n <= 0 {
					continue
				}
				if key := b.key(t); key != last[k] {
					last[k] = key
					b.n--
					d.Reasons = append(d.Reasons, b.reason)
				}
			}
			d.Keep = len(d.Reasons) > 0
			out = append(out, d)
		}
	}
	return out
}

// WriteDecisions prints decisions as ApplyPolicy returns them: for each
// path a line with the counts, then one line per snapshot, newest first:
// keep or remove, id, time in loc (nil for local time), reasons.
func WriteDecisions(w io.Writer, ds []Decision, loc *time.Location) error {
	if loc == nil {
		loc = time.Local
	}
	var b strings.Builder
	for i := 0; i < len(ds); {
		path := ds[i].Snapshot.Path
		j, kept := i, 0
		for ; j < len(ds) && ds[j].Snapshot.Path == path; j++ {
			if ds[j].Keep {
				kept++
			}
		}
		fmt.Fprintf(&b, "%s: keep %d of %d snapshots\n", path, kept, j-i)
		for _, d := range ds[i:j] {
			action := "remove"
			if d.Keep {
				action = "keep"
			}
			line := fmt.Sprintf("  %-6s  %s  %s  %s", action, d.Snapshot.ID, d.Snapshot.Time.In(loc).Format("2006-01-02 15:04:05 Mon"), strings.Join(d.Reasons, ", "))
			b.WriteString(strings.TrimRight(line, " ") + "\n")
		}
		i = j
	}
	_, err := io.WriteString(w, b.String())
	return err
}
