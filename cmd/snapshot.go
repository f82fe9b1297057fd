package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/images/store"
)

// RetentionOptions are the retention flags of cr snapshot and cr images prune.
type RetentionOptions struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       string // --keep-within: "2y5m7d3h"
}

// AddFlags adds the --keep-* flags.
func (r *RetentionOptions) AddFlags(f *pflag.FlagSet) {
	f.IntVar(&r.Last, "keep-last", 0, "keep the last N snapshots of each container path")
	f.IntVar(&r.Hourly, "keep-hourly", 0, "keep the last snapshot of each of the last N hours")
	f.IntVar(&r.Daily, "keep-daily", 0, "keep the last snapshot of each of the last N days")
	f.IntVar(&r.Weekly, "keep-weekly", 0, "keep the last snapshot of each of the last N ISO weeks")
	f.IntVar(&r.Monthly, "keep-monthly", 0, "keep the last snapshot of each of the last N calendar months")
	f.IntVar(&r.Yearly, "keep-yearly", 0, "keep the last snapshot of each of the last N calendar years")
	f.StringVar(&r.Within, "keep-within", "", "keep every snapshot within `DURATION` (2y5m7d3h: years, months, days, hours) of the newest")
}

func (r RetentionOptions) policy() (store.Policy, error) {
	if r.Last < 0 || r.Hourly < 0 || r.Daily < 0 || r.Weekly < 0 || r.Monthly < 0 || r.Yearly < 0 {
		return store.Policy{}, usageError{errors.New("--keep-* take a number >= 0")}
	}
	within, err := store.ParseDuration(r.Within)
	if err != nil {
		return store.Policy{}, usageError{fmt.Errorf("--keep-within: %w", err)}
	}
	return store.Policy{Last: r.Last, Hourly: r.Hourly, Daily: r.Daily, Weekly: r.Weekly,
		Monthly: r.Monthly, Yearly: r.Yearly, Within: within}, nil
}

// SnapshotOptions are the flags of cr snapshot.
type SnapshotOptions struct {
	Store    string
	Keep     RetentionOptions
	LockWait time.Duration
	JSON     bool
}

// SnapshotReport is what cr snapshot reports (--json).
type SnapshotReport struct {
	ID            string           `json:"id"`
	Path          string           `json:"path"`
	Time          time.Time        `json:"time"`
	FrozenSeconds float64          `json:"frozen_seconds"`
	AddedBytes    int64            `json:"added_bytes"`
	TotalBytes    int64            `json:"total_bytes"`
	Policy        string           `json:"policy"`
	Retention     []RetentionEntry `json:"retention,omitempty"`
}

// RetentionEntry is one snapshot's fate under the policy.
type RetentionEntry struct {
	ID      string    `json:"id"`
	Path    string    `json:"path"`
	Time    time.Time `json:"time"`
	Keep    bool      `json:"keep"`
	Reasons []string  `json:"reasons,omitempty"`
}

func init() {
	register(newSnapshotCommand)
}

func newSnapshotCommand(g *Global) *cobra.Command {
	var o SnapshotOptions
	c := &cobra.Command{
		Use:   "snapshot PATH --store DIR|s3://BUCKET/PREFIX [--keep-...]",
		Short: "Snapshot a running subtree into a deduplicating store",
		Long: `Checkpoint the subtree at PATH and leave it running (it is frozen only for
the dump, never for storing), into the store at DIR (created on first use, which is said on stderr),
or in S3-compatible object storage at s3://BUCKET/PREFIX, which many hosts
can share (endpoint, region and credentials from AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or ~/.aws; each
snapshot records its host: CR_HOSTNAME or the host name).
The store keeps chunks by content, so memory that did not change since the
last snapshot, and identical pages across containers, are stored once.

Then the retention policy is applied to the snapshots of PATH that this host
took (CR_HOSTNAME or the host name; another host's are its own): --keep-last,
--keep-within, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly,
--keep-yearly (restic's "forget" semantics; a snapshot is kept if any rule
keeps it; no rule keeps everything). Unused chunks are removed.

Made for cron: quiet on success (-v to hear what was kept and why), a lock so
that overlapping runs wait (up to --lock-wait) or exit 9, and a crash at any
moment leaves every listed snapshot complete and restorable. In S3, hosts
snapshot at the same time; removing unused chunks waits for a moment when no
other host holds the store (until then they stay, and the next prune takes them).`,
		Example: `  cr snapshot /lab --store /var/lib/cr/snapshots --keep-hourly 24 --keep-daily 7
  # crontab: every 10 minutes
  */10 * * * * root cr snapshot /lab --store /var/lib/cr/snapshots --keep-last 6 --keep-daily 7
  cr restore --store /var/lib/cr/snapshots /lab     # the latest snapshot of /lab
  AWS_ENDPOINT_URL=http://10.0.0.5:8333 cr snapshot /lab --store s3://snapshots/fleet --keep-last 6`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshot(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), g, o, args[0])
		},
	}
	c.Flags().StringVar(&o.Store, "store", "", "the snapshot store: a directory or s3://BUCKET/PREFIX (required)")
	o.Keep.AddFlags(c.Flags())
	c.Flags().DurationVar(&o.LockWait, "lock-wait", time.Minute, "how long to wait for another cr using the store")
	c.Flags().BoolVar(&o.JSON, "json", false, "print a JSON report")
	_ = c.MarkFlagRequired("store")
	return c
}

func runSnapshot(ctx context.Context, out, errOut io.Writer, g *Global, o SnapshotOptions, path string) error {
	pol, err := o.Keep.policy()
	if err != nil {
		return err
	}
	e, n, err := openNode(path)
	if err != nil {
		return err
	}
	criu, ver, err := criuEnv(g)
	if err != nil {
		return err
	}
	st, created, err := store.OpenOrCreate(o.Store)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(errOut, "created store %s\n", st.Dir())
	}
	ctx, cancel := interruptible(ctx)
	defer cancel()
	// Shared: in S3 other hosts snapshot meanwhile (in a directory it is
	// the one exclusive lock); the prune after the retention upgrades it.
	unlock, err := st.LockShared(ctx, o.LockWait)
	if err != nil {
		return err
	}
	defer unlock()
	prog := newProgress(errOut, g, o.JSON)
	defer prog.done()
	prog.phase("dumping "+e.show(n.Path), subtreeMemory(n))
	var astart time.Time
	st.Progress = prog.update
	sink := &dump.StoreSink{Store: st, At: time.Now()}
	ck, err := dump.Take(ctx, e.tree, n, dump.Options{
		CRIU: criu, CRIUVersion: ver.Code(), CRVersion: Version, StagingDir: stagingDir(e.tree), LeaveRunning: true,
		// The pages go from CRIU into the store's chunker (behind a
		// spool each: the job is thawed as soon as CRIU is done).
		Stream:   true,
		Progress: prog.update,
		Dumped: func(ck *dump.Checkpoint) {
			prog.done()
			g.verbosef(errOut, "dumped %s in %s with %s, frozen %s", e.show(n.Path), dur(ck.Dump.Seconds()), criu, dur(ck.Frozen.Seconds()))
			astart = time.Now()
			sink.At = astart
			prog.phase("storing "+e.show(n.Path), ck.Bytes())
		},
		Stored: func(*dump.Checkpoint) {
			e.tree.RecordSubtree(n, events.Checkpointed, func(ev *events.Event) { ev.Store, ev.Snapshot = absPath(o.Store), sink.Snapshot.ID })
		},
	}, sink)
	prog.done()
	if ck != nil {
		g.verbosef(errOut, "stored in %s", dur(time.Since(astart).Seconds()))
	}
	if err != nil {
		return interrupted(ctx, err, e.show(n.Path)+" left running")
	}
	snap := sink.Snapshot
	rep := SnapshotReport{ID: snap.ID, Path: e.show(snap.Path), Time: snap.Time, FrozenSeconds: ck.Frozen.Seconds(),
		AddedBytes: snap.AddedBytes, TotalBytes: snap.TotalBytes, Policy: pol.String()}
	var decisions []store.Decision
	if !pol.Empty() {
		decisions, rep.Retention, err = applyRetention(ctx, st, pol, snap.Path, st.Host, false)
		if errors.Is(err, store.ErrLocked) && store.IsS3(o.Store) {
			// The snapshot is stored and the retention applied; only the
			// unused chunks stay until a prune finds the store alone.
			fmt.Fprintf(errOut, "retention applied; unused chunks stay for a later prune: %v\n", err)
			err = nil
		}
		if err != nil {
			return err
		}
	}
	if o.JSON {
		return writeJSON(out, rep)
	}
	if g.Verbose {
		fmt.Fprintf(out, "snapshot %s of %s: frozen %s, %s added, %s in all\n", rep.ID, rep.Path, dur(rep.FrozenSeconds),
			humanBytes(rep.AddedBytes), humanBytes(rep.TotalBytes))
		if !pol.Empty() {
			fmt.Fprintf(out, "policy: %s\n", pol)
			return store.WriteDecisions(out, decisions, nil)
		}
	}
	return nil
}

// applyRetention applies pol to the snapshots of path (all paths if "")
// that host took (all hosts if ""), each path and host on its own,
// removes what it does not keep, and the chunks nothing uses any more.
func applyRetention(ctx context.Context, st *store.Store, pol store.Policy, path, host string, dryRun bool) ([]store.Decision, []RetentionEntry, error) {
	ds, err := st.ForgetFrom(ctx, path, host, pol, dryRun)
	if err != nil {
		return nil, nil, err
	}
	var out []RetentionEntry
	removed := false
	for _, d := range ds {
		out = append(out, RetentionEntry{ID: d.Snapshot.ID, Path: d.Snapshot.Path, Time: d.Snapshot.Time, Keep: d.Keep, Reasons: d.Reasons})
		removed = removed || !d.Keep
	}
	if removed && !dryRun {
		if _, err := st.Prune(ctx, false); err != nil {
			return ds, out, err
		}
	}
	return ds, out, nil
}
