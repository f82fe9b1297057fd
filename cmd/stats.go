package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/limits"
	"github.com/cr-dev/cr/nstree"
)

// StatsOptions are the flags of cr stats.
type StatsOptions struct {
	Recursive bool
	JSON      bool
	Watch     bool
	Interval  time.Duration
}

// StatsEntry is one container's usage at one moment, as cr stats --json
// prints it (one line each).
type StatsEntry struct {
	Time  time.Time `json:"time"`
	Path  string    `json:"path"`
	ID    string    `json:"id"`
	State string    `json:"state"`
	// CPUPercent is the CPU time used over the last interval, in percent
	// of one CPU (200 is two CPUs' worth).
	CPUPercent float64 `json:"cpu_percent"`
	limits.Stats
}

func init() { register(newStatsCommand) }

func newStatsCommand(g *Global) *cobra.Command {
	var o StatsOptions
	c := &cobra.Command{
		Use:   "stats [PATH]",
		Short: "Show containers' live resource usage",
		Long: `Show what the containers under PATH (default: your root) use, as cr ls picks
them (a container and its children; -r the whole subtree). Each container's
figures are those of its cgroup, so they cover its whole subtree.

  CPU%       CPU time over the last interval, in percent of one CPU
  CPU        CPU time used; THROTTLED: time held back by its CPU limit
  MEM        memory in use (less the inactive page cache, as Podman counts
             it); LIMIT its memory limit, PEAK the most it used, OOM the
             processes the OOM killer ended
  PIDS       tasks (processes and threads) / pids limit
  IO         bytes read / written on block devices, where the host counts
             them (v2 io.stat with the io controller, v1 blkio)
  PSI        pressure stall information where the kernel keeps it per
             cgroup (cgroup v2, in the hybrid hierarchy too): the share of
             the last 10 s that some task waited for CPU / memory / I/O

Without --watch it measures CPU% over half a second and prints once. With
--watch it refreshes every --interval: on a terminal it redraws the table in
place, as podman stats does; else it prints a table per refresh. With
--json every container is one JSON line per refresh, with "time", and the
figures in cpu, memory, pids, io and pressure (a member the host does not
offer is left out).`,
		Example: `  cr stats
  cr stats -r /lab
  cr stats --watch --interval 1s /lab
  cr stats --json /lab/pi | jq .memory.usage_bytes`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := ""
			if len(args) == 1 {
				p = args[0]
			}
			return runStats(cmd.Context(), cmd.OutOrStdout(), o, p)
		},
	}
	c.Flags().BoolVarP(&o.Recursive, "recursive", "r", false, "the whole subtree")
	c.Flags().BoolVar(&o.JSON, "json", false, "print JSON lines")
	c.Flags().BoolVarP(&o.Watch, "watch", "w", false, "keep refreshing")
	c.Flags().DurationVar(&o.Interval, "interval", 2*time.Second, "time between refreshes with --watch")
	return c
}

func runStats(ctx context.Context, out io.Writer, o StatsOptions, p string) error {
	if o.Interval < 100*time.Millisecond {
		return usageError{fmt.Errorf("invalid --interval %s: want at least 100ms", o.Interval)}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	e, err := openEnv()
	if err != nil {
		return err
	}
	nodes, err := e.listNodes(p, o.Recursive)
	if err != nil {
		return err
	}
	lay := e.tree.Layout()
	prev := map[string]StatsEntry{}
	sample := func() []StatsEntry {
		var s []StatsEntry
		for _, n := range nodes {
			se := StatsEntry{Time: time.Now().UTC(), Path: e.show(n.Path), ID: n.ID, State: n.State()}
			if rel, ok := lay.Rel(n.Cgroup); ok {
				se.Stats = lay.Stats(rel)
			}
			if pe, ok := prev[n.ID]; ok && se.CPU != nil && pe.CPU != nil {
				if dt := se.Time.Sub(pe.Time).Seconds(); dt > 0 {
					se.CPUPercent = max(0, (se.CPU.UsageSeconds-pe.CPU.UsageSeconds)/dt*100)
				}
			}
			prev[n.ID] = se
			s = append(s, se)
		}
		return s
	}
	sample()
	wait := o.Interval
	if !o.Watch {
		wait = 500 * time.Millisecond
	}
	redraw := o.Watch && !o.JSON && isTerminalWriter(out)
	for first := true; ; first = false {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		entries := sample()
		if o.JSON {
			for _, se := range entries {
				b, err := json.Marshal(se)
				if err != nil {
					return err
				}
				if _, err := fmt.Fprintf(out, "%s\n", b); err != nil {
					return err
				}
			}
		} else {
			var b bytes.Buffer
			if redraw {
				b.WriteString("\x1b[H\x1b[2J")
			} else if !first {
				b.WriteString("\n")
			}
			printStats(&b, entries)
			if _, err := out.Write(b.Bytes()); err != nil {
				return err
			}
		}
		if !o.Watch {
			return nil
		}
		// A container that went is left out; the set is the one asked for.
		if f, err := e.tree.Load(); err == nil {
			var still []*nstree.Node
			for _, n := range nodes {
				if m, ok := f.ByID[n.ID]; ok {
					still = append(still, m)
				}
			}
			nodes = still
		}
	}
}

func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminal(f)
}

// printStats prints cr stats's table.
func printStats(w io.Writer, entries []StatsEntry) {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSTATE\tCPU%\tCPU\tTHROTTLED\tMEM\tLIMIT\tPEAK\tOOM\tPIDS\tIO R/W\tPSI CPU/MEM/IO")
	secs := func(s float64) string {
		return time.Duration(s * float64(time.Second)).Round(10 * time.Millisecond).String()
	}
	for _, se := range entries {
		col := map[string]string{}
		for _, k := range []string{"cpu%", "cpu", "thr", "mem", "limit", "peak", "oom", "pids", "io", "psi"} {
			col[k] = "-"
		}
		if c := se.CPU; c != nil {
			col["cpu%"], col["cpu"], col["thr"] = fmt.Sprintf("%.1f", se.CPUPercent), secs(c.UsageSeconds), secs(c.ThrottledSeconds)
		}
		if m := se.Memory; m != nil {
			col["mem"], col["peak"], col["oom"] = humanBytes(m.UsageBytes), humanBytes(m.PeakBytes), fmt.Sprint(m.OOMKills)
			if m.LimitBytes > 0 {
				col["limit"] = humanBytes(m.LimitBytes)
			}
		}
		if p := se.Pids; p != nil {
			col["pids"] = fmt.Sprint(p.Current)
			if p.Max > 0 {
				col["pids"] += fmt.Sprintf("/%d", p.Max)
			}
		}
		if io := se.IO; io != nil {
			col["io"] = humanBytes(io.ReadBytes) + "/" + humanBytes(io.WriteBytes)
		}
		if ps := se.Pressure; ps != nil {
			pct := func(x *limits.Pressure) string {
				if x == nil {
					return "-"
				}
				return fmt.Sprintf("%.1f%%", x.Some.Avg10)
			}
			col["psi"] = pct(ps.CPU) + "/" + pct(ps.Memory) + "/" + pct(ps.IO)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", nstree.Quote(se.Path), se.State,
			col["cpu%"], col["cpu"], col["thr"], col["mem"], col["limit"], col["peak"], col["oom"], col["pids"], col["io"], col["psi"])
	}
	tw.Flush()
	_ = writeTrimmed(w, b.Bytes())
}
