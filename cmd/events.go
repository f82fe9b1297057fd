package cmd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/nstree"
)

// EventsOptions are the flags of cr events.
type EventsOptions struct {
	JSON   bool
	Since  string // a duration back from now, or an RFC 3339 time
	Follow bool
}

func init() { register(newEventsCommand) }

func newEventsCommand(g *Global) *cobra.Command {
	var o EventsOptions
	c := &cobra.Command{
		Use:   "events [PATH]",
		Short: "Show what happened to containers (started, exited, limits hit...)",
		Long: `Show the events of the containers at and below PATH (default: every container
you can see), oldest first, from the journal that the commands and container
inits that cause them append to (in the state directory, bounded: the newest
1 to 2 MiB of events are kept).

The events: started, exited (exit_code, and signal when a signal killed the
job), empty (the last process is gone; on_empty says what happens to the
node), removed, frozen, thawed, checkpointed (image; store and snapshot for
cr snapshot), restored, migrated_out (host), migrated_in, empty_exec (the
--on-empty-exec command ran; exit_code), and the limits hit: memory_high,
memory_max, oom_kill and pids_max, each with the count of hits since the
last one recorded. Limit
hits are read by the container's init every 2 seconds and once more when
the job ends (inside a --mount container, whose init sees only its own
cgroup, oom_kill and pids_max only).

Paths are the containers' paths when it happened, shown as you see them.
With --json each event is one line: {"time":"<RFC 3339 with
nanoseconds>","type":"exited","path":"/lab/pi","id":"...","exit_code":0}.`,
		Example: `  cr events
  cr events --since 10m /lab
  cr events --since 2026-12-02T00:00:00Z --json
  cr events -f --json | jq -r 'select(.type == "oom_kill") | .path'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := ""
			if len(args) == 1 {
				p = args[0]
			}
			return runEvents(cmd.Context(), cmd.OutOrStdout(), o, p)
		},
	}
	c.Flags().BoolVar(&o.JSON, "json", false, "print each event as one line of JSON")
	c.Flags().StringVar(&o.Since, "since", "", "only events since this long ago (10m, 1h) or this time (RFC 3339)")
	c.Flags().BoolVarP(&o.Follow, "follow", "f", false, "keep printing events as they happen")
	return c
}

// parseSince reads --since: a duration back from now, or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("invalid --since %q: want a duration (10m, 1h30m) or an RFC 3339 time (2026-12-02T00:00:00Z)", s)
}

func runEvents(ctx context.Context, out io.Writer, o EventsOptions, p string) error {
	since, err := parseSince(o.Since, time.Now())
	if err != nil {
		return usageError{err}
	}
	e, err := openEnv()
	if err != nil {
		return err
	}
	abs, err := e.viewer.Resolve(p)
	if err != nil {
		return usageError{err}
	}
	// A container that is gone keeps its history: PATH need not exist.
	scope := events.Scope{Root: e.viewer.Root, Under: abs, Since: since}
	show := func(ev events.Event) error {
		ev, ok := scope.Apply(ev)
		if !ok {
			return nil
		}
		_, err := io.WriteString(out, formatEvent(ev, o.JSON))
		return err
	}
	j := e.tree.Journal()
	if o.Follow {
		if ctx == nil {
			ctx = context.Background()
		}
		return j.Follow(250*time.Millisecond, ctx.Done(), true, show)
	}
	evs, err := j.Read()
	if err != nil {
		return err
	}
	for _, ev := range evs {
		if err := show(ev); err != nil {
			return err
		}
	}
	return nil
}

// formatEvent is one event as cr events prints it: a JSON line, or
// "TIME  TYPE  PATH  details".
func formatEvent(ev events.Event, asJSON bool) string {
	if asJSON {
		b, _ := json.Marshal(ev)
		return string(b) + "\n"
	}
	var d []string
	if ev.ExitCode != nil {
		d = append(d, fmt.Sprintf("exit_code=%d", *ev.ExitCode))
	}
	if ev.Signal != "" {
		d = append(d, "signal="+ev.Signal)
	}
	if ev.Count != 0 {
		d = append(d, fmt.Sprintf("count=%d", ev.Count))
	}
	if ev.OnEmpty != "" {
		d = append(d, "on_empty="+ev.OnEmpty)
	}
	if ev.Image != "" {
		d = append(d, "image="+oneLine(ev.Image))
	}
	if ev.Store != "" {
		d = append(d, "store="+oneLine(ev.Store), "snapshot="+oneLine(ev.Snapshot))
	}
	if ev.Host != "" {
		d = append(d, "host="+oneLine(ev.Host))
	}
	line := fmt.Sprintf("%s  %-12s  %s", ev.Time.UTC().Format("2006-01-02T15:04:05.000Z07:00"), oneLine(ev.Type), nstree.Quote(ev.Path))
	if len(d) > 0 {
		line += "  " + strings.Join(d, " ")
	}
	return line + "\n"
}

// absPath is p made absolute, for the journal (p as given if that fails).
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
