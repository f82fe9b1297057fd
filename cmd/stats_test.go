package cmd

import (
	"bytes"
	"testing"
	"time"

	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/limits"
)

func TestPrintStats(t *testing.T) {
	var b bytes.Buffer
	printStats(&b, []StatsEntry{
		{Path: "/lab", State: "running", CPUPercent: 150.04, Stats: limits.Stats{
			CPU:      &limits.CPUStats{UsageSeconds: 12.345, ThrottledSeconds: 0.5},
			Memory:   &limits.MemoryStats{UsageBytes: 64 << 20, PeakBytes: 100 << 20, LimitBytes: 128 << 20, OOMKills: 1},
			Pids:     &limits.PidsStats{Current: 7, Max: 100},
			IO:       &limits.IOStats{ReadBytes: 4096, WriteBytes: 1 << 20},
			Pressure: &limits.PressureStats{CPU: &limits.Pressure{Some: limits.PressureLine{Avg10: 2.5}}},
		}},
		{Path: "/lab/x", State: "empty"},
	})
	want := "PATH    STATE    CPU%   CPU     THROTTLED  MEM      LIMIT     PEAK      OOM  PIDS   IO R/W         PSI CPU/MEM/IO\n" +
		"/lab    running  150.0  12.35s  500ms      64.0MiB  128.0MiB  100.0MiB  1    7/100  4.0KiB/1.0MiB  2.5%/-/-\n" +
		"/lab/x  empty    -      -       -          -        -         -         -    -      -              -\n"
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"10m":                  now.Add(-10 * time.Minute),
		"2026-12-02T00:00:00Z": now.Add(-time.Hour),
	} {
		if got, err := parseSince(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"yesterday", "-5m", "2026-12-02"} {
		if _, err := parseSince(bad, now); err == nil {
			t.Errorf("parseSince(%q) accepted", bad)
		}
	}
}

func TestFormatEvent(t *testing.T) {
	code := 137
	ev := events.Event{Time: time.Date(2026, 12, 2, 0, 0, 1, 234567891, time.UTC), Type: events.Exited, Path: "/lab/pi", ID: "c1", ExitCode: &code, Signal: "SIGKILL"}
	if got := formatEvent(ev, false); got != "2026-12-02T00:00:01.234Z  exited        /lab/pi  exit_code=137 signal=SIGKILL\n" {
		t.Errorf("text: %q", got)
	}
	if got := formatEvent(ev, true); got != `{"time":"2026-12-02T00:00:01.234567891Z","type":"exited","path":"/lab/pi","id":"c1","exit_code":137,"signal":"SIGKILL"}`+"\n" {
		t.Errorf("json: %q", got)
	}
	ev = events.Event{Time: ev.Time, Type: "x\x1b[2J", Path: "/a\nb"}
	if got := formatEvent(ev, false); got != "2026-12-02T00:00:01.234Z  x\\x1b[2J      \"/a\\nb\"\n" {
		t.Errorf("hostile: %q", got)
	}
}
