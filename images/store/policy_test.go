package store

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func TestPolicyString(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{}, "keep everything"},
		{Policy{Last: 3, Hourly: 24, Daily: 7}, "keep the last 3 snapshots, 24 hourly, 7 daily"},
		{Policy{Last: 1}, "keep the last snapshot"},
		{Policy{Last: 1, Weekly: 4}, "keep the last snapshot, 4 weekly"},
		{Policy{Daily: 7, Weekly: 4}, "keep 7 daily, 4 weekly snapshots"},
		{Policy{Hourly: 1}, "keep 1 hourly snapshot"},
		{Policy{Last: 2, Hourly: 3, Daily: 4, Weekly: 5}, "keep the last 2 snapshots, 3 hourly, 4 daily, 5 weekly"},
		{Policy{Monthly: 12, Yearly: 3}, "keep 12 monthly, 3 yearly snapshots"},
		{Policy{Yearly: 1}, "keep 1 yearly snapshot"},
		{Policy{Within: Duration{Days: 7}}, "keep all within 7d of the newest"},
		{Policy{Monthly: 6, Within: Duration{Years: 2, Months: 5, Days: 7, Hours: 3}}, "keep 6 monthly snapshots and all within 2y5m7d3h of the newest"},
		{Policy{Last: 1, Within: Duration{Hours: 36}}, "keep the last snapshot and all within 36h of the newest"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.p, got, tc.want)
		}
		if tc.p.Empty() != (tc.want == "keep everything") {
			t.Errorf("%+v: Empty() = %v", tc.p, tc.p.Empty())
		}
	}
	if err := (Policy{Daily: -1}).Validate(); err == nil {
		t.Error("negative count accepted")
	}
	if err := (Policy{Monthly: -1}).Validate(); err == nil {
		t.Error("negative monthly count accepted")
	}
	if err := (Policy{Within: Duration{Days: -1}}).Validate(); err == nil {
		t.Error("negative duration accepted")
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Duration
		err  string
	}{
		{"2y5m7d3h", Duration{Years: 2, Months: 5, Days: 7, Hours: 3}, ""},
		{"3h7d", Duration{Days: 7, Hours: 3}, ""},
		{"1m", Duration{Months: 1}, ""},
		{"48h", Duration{Hours: 48}, ""},
		{"", Duration{}, ""},
		{"7", Duration{}, `duration "7": no unit after 7 (y, m, d or h)`},
		{"7w", Duration{}, `duration "7w": unknown unit 'w' (y, m, d or h)`},
		{"d", Duration{}, `duration "d": want numbers followed by y, m, d or h (2y5m7d3h)`},
		{"-1d", Duration{}, `duration "-1d": want numbers followed by y, m, d or h (2y5m7d3h)`},
		{"1d2d", Duration{}, `duration "1d2d": d given twice`},
	} {
		got, err := ParseDuration(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if err == nil && tc.in != "" {
			if back, _ := ParseDuration(got.String()); back != got {
				t.Errorf("%q: String %q does not parse back", tc.in, got.String())
			}
		}
	}
}

// snapList builds synthetic snapshots; ids number them in creation order.
type snapList []*Snapshot

func (l *snapList) add(path string, times ...time.Time) {
	for _, tm := range times {
		*l = append(*l, &Snapshot{ID: fmt.Sprintf("%016x", len(*l)+1), Path: path, Time: tm})
	}
}

// series adds n snapshots of path every step from start.
func (l *snapList) series(path string, start time.Time, step time.Duration, n int) {
	for i := range n {
		l.add(path, start.Add(time.Duration(i)*step))
	}
}

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04:05", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestApplyPolicyGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		p     Policy
		snaps func(*snapList)
	}{
		{"empty-policy", Policy{}, func(l *snapList) {
			l.series("/a", utc("2025-01-01 10:00:00"), time.Hour, 3)
			l.series("/b", utc("2025-01-01 10:30:00"), time.Hour, 2)
		}},
		{"last", Policy{Last: 3}, func(l *snapList) {
			l.series("/job", utc("2025-01-01 10:00:00"), 5*time.Minute, 6)
		}},
		{"last-more-than-available", Policy{Last: 10}, func(l *snapList) {
			l.series("/job", utc("2025-01-01 10:00:00"), 5*time.Minute, 4)
		}},
		// Every 20 minutes across midnight: the newest of each hour.
		{"hourly-midnight", Policy{Hourly: 4}, func(l *snapList) {
			l.series("/job", utc("2024-12-31 21:40:00"), 20*time.Minute, 14)
		}},
		// Either side of midnight, and an hour with no snapshot.
		{"daily-midnight", Policy{Daily: 3}, func(l *snapList) {
			l.add("/job",
				utc("2025-03-01 12:00:00"), utc("2025-03-01 23:59:59"),
				utc("2025-03-02 00:00:00"), utc("2025-03-02 00:00:01"), utc("2025-03-02 23:00:00"),
				utc("2025-03-03 00:00:00"),
				utc("2025-03-05 08:00:00"), utc("2025-03-05 09:00:00"))
		}},
		// ISO weeks run Monday to Sunday and cross years: 2024-12-30 is in
		// week 1 of 2025, 2021-01-03 in week 53 of 2020.
		{"weekly-iso-year", Policy{Weekly: 5}, func(l *snapList) {
			l.add("/job",
				utc("2020-12-30 12:00:00"), utc("2021-01-03 23:59:59"), utc("2021-01-04 00:00:00"),
				utc("2024-12-28 12:00:00"), utc("2024-12-29 23:59:59"), utc("2024-12-30 00:00:00"),
				utc("2025-01-01 12:00:00"), utc("2025-01-05 23:00:00"), utc("2025-01-06 00:00:00"))
		}},
		{"n-larger-than-available", Policy{Hourly: 100, Daily: 100, Weekly: 100}, func(l *snapList) {
			l.series("/job", utc("2025-06-01 10:00:00"), 25*time.Hour, 5)
		}},
		// Every 3 hours for 10 days on two paths, offset, with every kind.
		{"combined-paths", Policy{Last: 2, Hourly: 3, Daily: 4, Weekly: 2}, func(l *snapList) {
			l.series("/vserver1/calculate_pi", utc("2025-02-20 01:00:00"), 3*time.Hour, 80)
			l.series("/vserver2", utc("2025-02-26 02:30:00"), 7*time.Hour, 12)
		}},
		// The newest of each calendar month, across a year's end; months
		// with no snapshot do not count.
		{"monthly", Policy{Monthly: 4}, func(l *snapList) {
			l.add("/job",
				utc("2024-10-31 23:59:59"), utc("2024-11-01 00:00:00"), utc("2024-11-30 12:00:00"),
				utc("2024-12-01 00:00:00"), utc("2024-12-31 23:59:59"), utc("2025-01-01 00:00:00"),
				utc("2025-01-15 10:00:00"), utc("2025-03-02 10:00:00"))
		}},
		{"yearly", Policy{Yearly: 3}, func(l *snapList) {
			l.add("/job",
				utc("2021-06-01 10:00:00"), utc("2022-12-31 23:59:59"), utc("2023-01-01 00:00:00"),
				utc("2023-07-01 10:00:00"), utc("2025-01-01 00:00:00"), utc("2025-02-01 00:00:00"))
		}},
		// Within 1m2d3h of the newest (2025-03-31 12:00), by the calendar as
		// restic and Go's AddDate count: 2025-02-29 12:00, normalized to
		// 2025-03-01 12:00, less 3 hours, so after 2025-03-01 09:00:00,
		// strictly (a snapshot at the cutoff goes). 28 February goes too
		// though it is "one month and two days" before in everyday speech.
		// Measured from each path's newest snapshot, not from now.
		{"within", Policy{Within: Duration{Months: 1, Days: 2, Hours: 3}}, func(l *snapList) {
			l.add("/job",
				utc("2025-02-28 12:00:00"), utc("2025-03-01 08:59:59"), utc("2025-03-01 09:00:00"),
				utc("2025-03-01 09:00:01"), utc("2025-03-15 00:00:00"), utc("2025-03-31 12:00:00"))
			l.add("/old", utc("2020-01-01 00:00:00"), utc("2020-01-02 00:00:00"), utc("2019-12-01 00:00:00"))
		}},
		{"within-and-counts", Policy{Last: 1, Monthly: 2, Yearly: 2, Within: Duration{Days: 2}}, func(l *snapList) {
			l.series("/job", utc("2024-11-20 06:00:00"), 19*time.Hour, 80)
		}},
		// Two snapshots at the same instant: the larger id is newer.
		{"same-time", Policy{Last: 1, Hourly: 2}, func(l *snapList) {
			l.add("/job", utc("2025-01-01 10:00:00"), utc("2025-01-01 10:00:00"), utc("2025-01-01 09:00:00"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l snapList
			tc.snaps(&l)
			// The input order must not matter.
			rand.New(rand.NewPCG(1, 2)).Shuffle(len(l), func(i, j int) { l[i], l[j] = l[j], l[i] })
			ds := ApplyPolicyIn(l, tc.p, time.UTC)
			if len(ds) != len(l) {
				t.Fatalf("%d decisions for %d snapshots", len(ds), len(l))
			}
			var b bytes.Buffer
			fmt.Fprintln(&b, tc.p)
			if err := WriteDecisions(&b, ds, time.UTC); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got := b.String(); got != string(want) {
				t.Errorf("decisions differ from %s (go test -update rewrites it):\ngot:\n%s\nwant:\n%s", golden, got, want)
			}
			checkDecisions(t, l, tc.p, ds, time.UTC)
		})
	}
}

// checkDecisions compares ApplyPolicyIn with a direct reading of the rules:
// for each kind, the distinct buckets sorted newest first, the first N of
// them, and the newest snapshot of each.
func checkDecisions(t *testing.T, snaps []*Snapshot, p Policy, ds []Decision, loc *time.Location) {
	t.Helper()
	want := make(map[string][]string)
	byPath := make(map[string][]*Snapshot)
	for _, s := range snaps {
		byPath[s.Path] = append(byPath[s.Path], s)
	}
	newer := func(a, b *Snapshot) bool {
		return a.Time.After(b.Time) || a.Time.Equal(b.Time) && a.ID > b.ID
	}
	for _, list := range byPath {
		slices.SortFunc(list, func(a, b *Snapshot) int {
			if newer(a, b) {
				return -1
			}
			return 1
		})
		if p.Empty() {
			for _, s := range list {
				want[s.ID] = []string{ReasonAll}
			}
			continue
		}
		if !p.Within.Zero() {
			// Within: later than the newest minus the duration, by the calendar.
			n := list[0].Time.In(loc)
			cut := time.Date(n.Year()-p.Within.Years, n.Month()-time.Month(p.Within.Months), n.Day()-p.Within.Days,
				n.Hour()-p.Within.Hours, n.Minute(), n.Second(), n.Nanosecond(), loc)
			for _, s := range list {
				if s.Time.After(cut) {
					want[s.ID] = append(want[s.ID], "within "+p.Within.String())
				}
			}
		}
		for i := 0; i < p.Last && i < len(list); i++ {
			want[list[i].ID] = append(want[list[i].ID], ReasonLast)
		}
		for _, k := range []struct {
			n      int
			format func(time.Time) string
			reason string
		}{
			{p.Hourly, func(t time.Time) string { return t.Format("2006-01-02 15") }, ReasonHourly},
			{p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }, ReasonDaily},
			{p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%04d-W%02d", y, w) }, ReasonWeekly},
			{p.Monthly, func(t time.Time) string { return t.Format("2006-01") }, ReasonMonthly},
			{p.Yearly, func(t time.Time) string { return t.Format("2006") }, ReasonYearly},
		} {
			newest := make(map[string]*Snapshot)
			for _, s := range list {
				key := k.format(s.Time.In(loc))
				if cur, ok := newest[key]; !ok || newer(s, cur) {
					newest[key] = s
				}
			}
			keys := make([]string, 0, len(newest))
			for key := range newest {
				keys = append(keys, key)
			}
			slices.Sort(keys)
			slices.Reverse(keys)
			for i := 0; i < k.n && i < len(keys); i++ {
				s := newest[keys[i]]
				want[s.ID] = append(want[s.ID], k.reason)
			}
		}
	}
	for _, d := range ds {
		w := want[d.Snapshot.ID]
		if d.Keep != (len(w) > 0) || strings.Join(d.Reasons, ",") != strings.Join(w, ",") {
			t.Errorf("%s at %v: keep %v %v, want reasons %v", d.Snapshot.ID, d.Snapshot.Time, d.Keep, d.Reasons, w)
		}
	}
	// Groups in path order, newest first within each.
	for i := 1; i < len(ds); i++ {
		a, b := ds[i-1].Snapshot, ds[i].Snapshot
		if a.Path > b.Path || a.Path == b.Path && !newer(a, b) {
			t.Errorf("decision %d (%s %v) out of order after %s %v", i, b.Path, b.Time, a.Path, a.Time)
		}
	}
}

// TestApplyPolicyRandom checks random lists and policies against the rules.
func TestApplyPolicyRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 43))
	start := utc("2024-12-20 00:00:00")
	for range 300 {
		var l snapList
		for range rng.IntN(60) {
			path := []string{"/a", "/b", "/a/c"}[rng.IntN(3)]
			l.add(path, start.Add(time.Duration(rng.Int64N(int64(400*24*time.Hour)))).Truncate(time.Minute))
		}
		p := Policy{Last: rng.IntN(4), Hourly: rng.IntN(6), Daily: rng.IntN(6), Weekly: rng.IntN(4),
			Monthly: rng.IntN(5), Yearly: rng.IntN(3)}
		if rng.IntN(2) == 0 {
			p.Within = Duration{Months: rng.IntN(3), Days: rng.IntN(20), Hours: rng.IntN(30)}
		}
		checkDecisions(t, l, p, ApplyPolicyIn(l, p, time.UTC), time.UTC)
		if t.Failed() {
			t.Fatalf("policy %+v", p)
		}
	}
}

// TestApplyPolicyLocation: buckets follow the given time zone.
func TestApplyPolicyLocation(t *testing.T) {
	var l snapList
	// 20:00 and 23:00 UTC on one UTC day; in UTC+3 they fall on two days.
	l.add("/job", utc("2025-05-01 20:00:00"), utc("2025-05-01 23:00:00"))
	p := Policy{Daily: 5}
	kept := func(loc *time.Location) int {
		n := 0
		for _, d := range ApplyPolicyIn(l, p, loc) {
			if d.Keep {
				n++
			}
		}
		return n
	}
	if n := kept(time.UTC); n != 1 {
		t.Errorf("UTC: %d kept, want 1", n)
	}
	if n := kept(time.FixedZone("UTC+3", 3*3600)); n != 2 {
		t.Errorf("UTC+3: %d kept, want 2", n)
	}
}

// TestPolicyGroupsByHost: retention thins each host's snapshots of a path
// on its own (restic's default grouping), and ForgetFrom touches only the
// given host's.
func TestPolicyGroupsByHost(t *testing.T) {
	base := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var snaps []*Snapshot
	for i, h := range []string{"a", "b", "a", "b", "a"} {
		snaps = append(snaps, &Snapshot{ID: fmt.Sprintf("%016x", i), Path: "/fleet", Host: h, Time: base.Add(time.Duration(i) * time.Hour)})
	}
	ds := ApplyPolicyIn(snaps, Policy{Last: 1}, time.UTC)
	kept := map[string]bool{}
	for _, d := range ds {
		if d.Keep {
			kept[d.Snapshot.ID] = true
		}
	}
	if want := map[string]bool{fmt.Sprintf("%016x", 3): true, fmt.Sprintf("%016x", 4): true}; !maps.Equal(kept, want) {
		t.Errorf("kept %v, want the newest of each host %v", kept, want)
	}
	var b strings.Builder
	if err := WriteDecisions(&b, ds, time.UTC); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "/fleet (host a): keep 1 of 3 snapshots\n") || !strings.Contains(b.String(), "/fleet (host b): keep 1 of 2 snapshots\n") {
		t.Errorf("decisions:\n%s", b.String())
	}

	ctx := context.Background()
	f := newFakeBucket()
	sa, sb := openFake(t, f, "", "a"), openFake(t, f, "", "b")
	rng := rand.New(rand.NewPCG(11, 12))
	for i := 0; i < 2; i++ {
		for _, s := range []*Store{sa, sb} {
			if _, err := s.Add(ctx, stageJob(t, rng, makeMemory(rng, 32<<10)), testManifest("/fleet"), base.Add(time.Duration(i)*time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := sa.ForgetFrom(ctx, "/fleet", "a", Policy{Last: 1}, false); err != nil {
		t.Fatal(err)
	}
	left, _ := sa.List("")
	hosts := map[string]int{}
	for _, s := range left {
		hosts[s.Host]++
	}
	if hosts["a"] != 1 || hosts["b"] != 2 {
		t.Errorf("after host a's forget: %v snapshots per host, want a:1 b:2", hosts)
	}
}
