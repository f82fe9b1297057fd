package store

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Policy is a retention policy, applied to the snapshots of each container
// path separately. A zero field is not used; the zero Policy keeps
// everything.
type Policy struct {
	Last    int      // keep the newest Last snapshots
	Hourly  int      // keep the newest snapshot of each of the newest Hourly hours that have one
	Daily   int      // ... of each of the newest Daily days
	Weekly  int      // ... of each of the newest Weekly ISO weeks (Monday to Sunday)
	Monthly int      // ... of each of the newest Monthly calendar months
	Yearly  int      // ... of each of the newest Yearly calendar years
	Within  Duration // keep every snapshot newer than the path's newest snapshot minus Within
}

// Reasons a snapshot is kept, as Decision.Reasons lists them. A snapshot
// kept by Policy.Within has the reason "within " followed by the duration
// ("within 2y5m7d3h").
const (
	ReasonLast    = "last snapshot"
	ReasonHourly  = "hourly snapshot"
	ReasonDaily   = "daily snapshot"
	ReasonWeekly  = "weekly snapshot"
	ReasonMonthly = "monthly snapshot"
	ReasonYearly  = "yearly snapshot"
	ReasonAll     = "policy keeps everything"
)

// Empty reports whether the policy keeps everything.
func (p Policy) Empty() bool {
	return p.Last <= 0 && p.Hourly <= 0 && p.Daily <= 0 && p.Weekly <= 0 &&
		p.Monthly <= 0 && p.Yearly <= 0 && p.Within.Zero()
}

// Validate rejects negative counts and durations.
func (p Policy) Validate() error {
	if p.Last < 0 || p.Hourly < 0 || p.Daily < 0 || p.Weekly < 0 || p.Monthly < 0 || p.Yearly < 0 {
		return errors.New("retention counts must not be negative")
	}
	if p.Within.Years < 0 || p.Within.Months < 0 || p.Within.Days < 0 || p.Within.Hours < 0 {
		return errors.New("retention duration must not be negative")
	}
	return nil
}

// Duration is a span of calendar years, months, days and hours, as
// restic's --keep-within takes it: "2y5m7d3h" (m is months). It is
// subtracted field by field (time.Time.AddDate, then hours), so "1m" before
// 31 March is 3 March (Go normalizes 31 February).
type Duration struct {
	Years, Months, Days, Hours int
}

// ParseDuration parses "2y5m7d3h": numbers each followed by one of y, m,
// d, h, each unit at most once, in any order; "" is the zero Duration.
func ParseDuration(s string) (Duration, error) {
	var d Duration
	seen := map[byte]bool{}
	rest := strings.TrimSpace(s)
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return Duration{}, fmt.Errorf("duration %q: want numbers followed by y, m, d or h (2y5m7d3h)", s)
		}
		if i == len(rest) {
			return Duration{}, fmt.Errorf("duration %q: no unit after %s (y, m, d or h)", s, rest)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil {
			return Duration{}, fmt.Errorf("duration %q: %w", s, err)
		}
		unit := rest[i]
		if seen[unit] {
			return Duration{}, fmt.Errorf("duration %q: %c given twice", s, unit)
		}
		seen[unit] = true
		switch unit {
		case 'y':
			d.Years = n
		case 'm':
			d.Months = n
		case 'd':
			d.Days = n
		case 'h':
			d.Hours = n
		default:
			return Duration{}, fmt.Errorf("duration %q: unknown unit %q (y, m, d or h)", s, unit)
		}
		rest = rest[i+1:]
	}
	return d, nil
}

// Zero reports whether d is empty.
func (d Duration) Zero() bool { return d == Duration{} }

// String is d as ParseDuration reads it, zero fields left out: "2y5m7d3h".
func (d Duration) String() string {
	var b strings.Builder
	for _, f := range []struct {
		n    int
		unit string
	}{{d.Years, "y"}, {d.Months, "m"}, {d.Days, "d"}, {d.Hours, "h"}} {
		if f.n != 0 {
			fmt.Fprintf(&b, "%d%s", f.n, f.unit)
		}
	}
	return b.String()
}

// Before is the instant d before t.
func (d Duration) Before(t time.Time) time.Time {
	return t.AddDate(-d.Years, -d.Months, -d.Days).Add(-time.Duration(d.Hours) * time.Hour)
}

// String describes the policy in English: "keep the last 3 snapshots, 24
// hourly, 7 daily", "keep 7 daily, 4 weekly snapshots", "keep 12 monthly
// snapshots and all within 7d of the newest", "keep everything".
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
	}{{p.Hourly, "hourly"}, {p.Daily, "daily"}, {p.Weekly, "weekly"}, {p.Monthly, "monthly"}, {p.Yearly, "yearly"}} {
		if b.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", b.n, b.name))
			n = b.n
		}
	}
	within := ""
	if !p.Within.Zero() {
		within = "all within " + p.Within.String() + " of the newest"
	}
	if len(parts) == 0 {
		return "keep " + within
	}
	s := "keep " + strings.Join(parts, ", ")
	switch {
	case p.Last > 0: // "the last N snapshots" already names them
	case n == 1:
		s += " snapshot"
	default:
		s += " snapshots"
	}
	if within != "" {
		s += " and " + within
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
// weeks taken in loc. Snapshots are grouped by Path and Host (groups in
// path order, then host order: restic's default grouping by host and
// paths, so that one host's retention never thins another's snapshots)
// and each group is walked newest first (ties: larger id first), which is
// also the order of the result. The newest p.Last are kept as "last
// snapshot" (after "within", as restic orders them). With p.Within, every snapshot strictly newer than the group's
// newest snapshot minus p.Within is kept as "within DURATION". For each of
// hourly, daily, weekly, monthly and yearly, a snapshot is kept when its
// hour (day, ISO week, calendar month, calendar year) differs from that of
// the previous snapshot kept for that kind and fewer than N were kept for
// it: so the newest snapshot of each of the N newest buckets that have one.
// A snapshot kept for several kinds lists every reason. An empty policy
// keeps everything. The result is the same as restic's forget with
// --keep-last, --keep-within, --keep-hourly, --keep-daily, --keep-weekly,
// --keep-monthly and --keep-yearly (restic measures --keep-within from the
// newest snapshot not in the future; cr's snapshot times come from its own
// clock, so it takes the newest).
func ApplyPolicyIn(snaps []*Snapshot, p Policy, loc *time.Location) []Decision {
	if loc == nil {
		loc = time.Local
	}
	type group struct{ path, host string }
	groups := make(map[group][]*Snapshot)
	for _, s := range snaps {
		g := group{s.Path, s.Host}
		groups[g] = append(groups[g], s)
	}
	paths := make([]group, 0, len(groups))
	for g := range groups {
		paths = append(paths, g)
	}
	slices.SortFunc(paths, func(a, b group) int {
		if c := strings.Compare(a.path, b.path); c != 0 {
			return c
		}
		return strings.Compare(a.host, b.host)
	})

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
			{p.Monthly, func(t time.Time) int { return t.Year()*100 + int(t.Month()) }, ReasonMonthly},
			{p.Yearly, func(t time.Time) int { return t.Year() }, ReasonYearly},
		}
		var cutoff time.Time // snapshots after it are kept by p.Within
		if len(list) > 0 {
			cutoff = p.Within.Before(list[0].Time.In(loc))
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
			if !p.Within.Zero() && s.Time.After(cutoff) {
				d.Reasons = append(d.Reasons, "within "+p.Within.String())
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
		path, host := ds[i].Snapshot.Path, ds[i].Snapshot.Host
		j, kept := i, 0
		for ; j < len(ds) && ds[j].Snapshot.Path == path && ds[j].Snapshot.Host == host; j++ {
			if ds[j].Keep {
				kept++
			}
		}
		if host != "" {
			path += " (host " + host + ")"
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
