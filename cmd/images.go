package cmd

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/store"
	"github.com/cr-dev/cr/scratch"
)

func init() { register(newImagesCommand) }

// SnapshotEntry is a line of cr images ls --json.
type SnapshotEntry struct {
	ID         string    `json:"id"`
	Path       string    `json:"path"`
	Host       string    `json:"host"` // that took it; "" for snapshots that do not record it
	Time       time.Time `json:"time"`
	AddedBytes int64     `json:"added_bytes"`
	TotalBytes int64     `json:"total_bytes"`
	Containers int       `json:"containers"`
}

func newImagesCommand(g *Global) *cobra.Command {
	var dir string
	var asJSON bool
	c := &cobra.Command{
		Use:   "images",
		Short: "Work with a snapshot store",
		Long: `List, inspect, remove, prune, verify and export the snapshots that
cr snapshot keeps in a store (--store DIR, or --store s3://BUCKET/PREFIX in
S3-compatible object storage, configured by AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or ~/.aws). A snapshot is named by
its id or any unique prefix of it. Restore one with cr restore --store DIR
ID, or the latest of a container with cr restore --store DIR PATH.`,
		Example: `  cr images ls --store /var/lib/cr/snapshots
  cr images prune --store /var/lib/cr/snapshots --keep-daily 7 --dry-run
  cr images verify --store /var/lib/cr/snapshots
  cr images export --store /var/lib/cr/snapshots 3fa9c2 -o lab.cr
  cr images ls --store s3://snapshots/fleet`,
	}
	c.PersistentFlags().StringVar(&dir, "store", "", "the snapshot store: a directory or s3://BUCKET/PREFIX (required)")
	c.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	open := func() (*store.Store, error) {
		if dir == "" {
			return nil, usageError{fmt.Errorf("--store DIR or s3://BUCKET/PREFIX is required")}
		}
		return store.Open(dir) // never creates one: a mistyped path is "no such store"
	}
	// openLocked opens the store and takes its lock, for commands that
	// change it.
	openLocked := func(ctx context.Context) (*store.Store, func(), error) {
		st, err := open()
		if err != nil {
			return nil, nil, err
		}
		unlock, err := st.Lock(ctx, time.Minute)
		if err != nil {
			return nil, nil, err
		}
		return st, unlock, nil
	}
	ls := &cobra.Command{
		Use:   "ls [PATH]",
		Short: "List snapshots (of PATH)",
		Example: `  cr images ls --store /var/lib/cr/snapshots
  cr images ls --store /var/lib/cr/snapshots /lab
  cr images ls --store /var/lib/cr/snapshots --json | jq -r '.[].id'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			path := ""
			if len(args) == 1 {
				path = args[0]
			}
			snaps, err := st.List(path)
			if err != nil {
				return err
			}
			es := []SnapshotEntry{}
			for _, s := range snaps {
				es = append(es, SnapshotEntry{ID: s.ID, Path: s.Path, Host: s.Host, Time: s.Time, AddedBytes: s.AddedBytes, TotalBytes: s.TotalBytes, Containers: len(s.Manifest.Containers)})
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), es)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tPATH\tHOST\tTIME\tADDED\tTOTAL")
			for _, e := range es {
				host := e.Host
				if host == "" {
					host = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.Path, host, e.Time.Local().Format("2006-01-02 15:04:05"), humanBytes(e.AddedBytes), humanBytes(e.TotalBytes))
			}
			return tw.Flush()
		},
	}
	inspect := &cobra.Command{
		Use:   "inspect ID",
		Short: "Show a snapshot's manifest",
		Example: `  cr images inspect --store /var/lib/cr/snapshots 3fa9c2
  cr images inspect --store /var/lib/cr/snapshots --json 3fa9c2 | jq .manifest.containers`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			s, err := st.Get(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), snapshotReport(s))
			}
			out := cmd.OutOrStdout()
			from := ""
			if s.Host != "" {
				from = " from " + s.Host
			}
			fmt.Fprintf(out, "snapshot %s of %s%s at %s: %s, %s added\n", s.ID, s.Path, from, s.Time.Local().Format(time.RFC3339), humanBytes(s.TotalBytes), humanBytes(s.AddedBytes))
			for _, c := range s.Manifest.Containers {
				fmt.Fprintf(out, "  %s", c.Path)
				if len(c.Command) > 0 {
					fmt.Fprintf(out, "  %v", c.Command)
				}
				fmt.Fprintln(out)
				for _, p := range c.Processes {
					fmt.Fprintf(out, "    pid %d  %s\n", p.Pid, p.Command)
				}
			}
			return nil
		},
	}
	rm := &cobra.Command{
		Use:   "rm ID...",
		Short: "Remove snapshots (their unused chunks go too)",
		Example: `  cr images rm --store /var/lib/cr/snapshots 3fa9c2
  cr images rm --store /var/lib/cr/snapshots 3fa9c2 77b0e1`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, unlock, err := openLocked(cmd.Context())
			if err != nil {
				return err
			}
			defer unlock()
			var ids []string
			for _, a := range args {
				s, err := st.Get(a)
				if err != nil {
					return err
				}
				ids = append(ids, s.ID)
			}
			if err := st.Remove(ids...); err != nil {
				return err
			}
			_, err = st.Prune(cmd.Context(), false)
			return err
		},
	}
	var keep RetentionOptions
	var dryRun bool
	prune := &cobra.Command{
		Use:   "prune [PATH] --keep-...",
		Short: "Apply a retention policy and remove unused chunks",
		Example: `  cr images prune --store /var/lib/cr/snapshots --keep-daily 7 --dry-run
  cr images prune --store /var/lib/cr/snapshots /lab --keep-last 3 --keep-monthly 12
  cr images prune --store /var/lib/cr/snapshots --keep-within 30d   # all within 30 days of the newest
  cr images prune --store /var/lib/cr/snapshots                     # no policy: only unused chunks go`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, err := keep.policy()
			if err != nil {
				return err
			}
			st, unlock, err := openLocked(cmd.Context())
			if err != nil {
				return err
			}
			defer unlock()
			path := ""
			if len(args) == 1 {
				path = args[0]
			}
			ds, es, err := applyRetention(cmd.Context(), st, pol, path, "", dryRun)
			if err != nil {
				return err
			}
			if pol.Empty() && !dryRun {
				if _, err := st.Prune(cmd.Context(), false); err != nil {
					return err
				}
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), es)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "policy: %s\n", pol)
			return store.WriteDecisions(cmd.OutOrStdout(), ds, nil)
		},
	}
	keep.AddFlags(prune.Flags())
	prune.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be removed, remove nothing")
	var subset string
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Re-read every chunk and check every hash",
		Long: `Read every snapshot record and every chunk they use (from S3 too: each is
downloaded and hashed again), once each, and report what is damaged: the
snapshot, file and chunk, and why. Nothing is repaired or removed. With
--read-data-subset, only a share of the chunks is read (every record is
still checked): 10% (or 0.1) picks at random each run, N/T picks group N of T,
so that 1/7 to 7/7 on seven days read every chunk once a week.`,
		Example: `  cr images verify --store /var/lib/cr/snapshots
  cr images verify --store /var/lib/cr/snapshots || echo "damaged (exit 8)"
  cr images verify --store s3://snapshots/fleet --read-data-subset 10%
  cr images verify --store s3://snapshots/fleet --read-data-subset "$(date +%u)/7"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			var sub store.Subset
			if subset != "" {
				if sub, err = store.ParseSubset(subset); err != nil {
					return usageError{err}
				}
			}
			rep, err := st.VerifySubset(cmd.Context(), sub)
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSON(cmd.OutOrStdout(), verifyReport(rep)); err != nil {
					return err
				}
			} else {
				out := cmd.OutOrStdout()
				if rep.Chunks == rep.TotalChunks {
					fmt.Fprintf(out, "%s, %s checked\n", plural(rep.Snapshots, "snapshot", "snapshots"), plural(rep.Chunks, "chunk", "chunks"))
				} else {
					fmt.Fprintf(out, "%s, %d of %s checked (%s)\n", plural(rep.Snapshots, "snapshot", "snapshots"), rep.Chunks, plural(rep.TotalChunks, "chunk", "chunks"), sub)
				}
				for _, d := range rep.Damaged {
					fmt.Fprintf(out, "DAMAGED snapshot %s: file %s, chunk %s: %s\n", d.SnapshotID, d.File, d.Chunk, d.Reason)
				}
			}
			if len(rep.Damaged) > 0 {
				return fmt.Errorf("%w: %s: %v", store.ErrDamaged, plural(len(rep.DamagedSnapshots()), "damaged snapshot", "damaged snapshots"), rep.DamagedSnapshots())
			}
			return nil
		},
	}
	verify.Flags().StringVar(&subset, "read-data-subset", "", "read only this share of the chunks: a percentage (10%), a fraction (0.1) or N/T")
	var output, compress string
	export := &cobra.Command{
		Use:   "export ID -o FILE",
		Short: "Write a snapshot as an ordinary image file",
		Example: `  cr images export --store /var/lib/cr/snapshots 3fa9c2 -o lab.cr
  cr images export --store /var/lib/cr/snapshots 3fa9c2 -o lab.cr --compress none
  cr restore lab.cr`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return usageError{fmt.Errorf("-o FILE is required")}
			}
			st, err := open()
			if err != nil {
				return err
			}
			s, err := st.Get(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := interruptible(cmd.Context())
			defer cancel()
			return st.Export(ctx, s.ID, output, images.WriteOptions{Compression: compress, Stats: func(*images.Stats) {}})
		},
	}
	export.Flags().StringVarP(&output, "output", "o", "", "image file to write")
	export.Flags().StringVar(&compress, "compress", "zstd", "compression: zstd, s2 or none (see cr checkpoint --help)")
	c.AddCommand(ls, inspect, rm, prune, verify, export)
	return c
}

// SnapshotInspect is what cr images inspect --json reports.
type SnapshotInspect struct {
	ID          string    `json:"id"`
	Path        string    `json:"path"`
	Host        string    `json:"host"`
	Time        time.Time `json:"time"`
	AddedBytes  int64     `json:"added_bytes"`
	TotalBytes  int64     `json:"total_bytes"`
	CRVersion   string    `json:"cr_version"`
	CRIUVersion string    `json:"criu_version"` // "4.2.1"
	Kernel      string    `json:"kernel"`
	Arch        string    `json:"arch"`
	// Stats of the dump, as cr inspect reports them.
	Stats      *InspectStats      `json:"stats,omitempty"`
	Containers []images.Container `json:"containers"` // the manifest's (docs/image-format.md)
}

func snapshotReport(s *store.Snapshot) SnapshotInspect {
	m := s.Manifest
	return SnapshotInspect{ID: s.ID, Path: s.Path, Host: s.Host, Time: s.Time, AddedBytes: s.AddedBytes, TotalBytes: s.TotalBytes,
		CRVersion: m.CRVersion, CRIUVersion: criuVersionString(m.CRIUVersion), Kernel: m.Kernel, Arch: m.Arch,
		Stats: inspectStats(m.Stats, 0), Containers: m.Containers}
}

// VerifyResult is what cr images verify --json reports.
type VerifyResult struct {
	Snapshots   int            `json:"snapshots"`    // checked
	Chunks      int            `json:"chunks"`       // distinct chunks read and checked
	TotalChunks int            `json:"total_chunks"` // distinct chunks the snapshots use (more than chunks with --read-data-subset)
	Damaged     []DamageReport `json:"damaged"`
}

// DamageReport is one damaged file of a snapshot.
type DamageReport struct {
	SnapshotID string `json:"snapshot_id"`
	File       string `json:"file"`
	Chunk      string `json:"chunk,omitempty"`
	Reason     string `json:"reason"`
}

func verifyReport(r store.VerifyReport) VerifyResult {
	v := VerifyResult{Snapshots: r.Snapshots, Chunks: r.Chunks, TotalChunks: r.TotalChunks, Damaged: []DamageReport{}}
	for _, d := range r.Damaged {
		v.Damaged = append(v.Damaged, DamageReport{SnapshotID: d.SnapshotID, File: d.File, Chunk: d.Chunk, Reason: d.Reason})
	}
	return v
}

// criuVersionString is a manifest's CRIU version (40201) as CRIU prints
// it ("4.2.1").
func criuVersionString(code int) string {
	return fmt.Sprintf("%d.%d.%d", code/10000, code/100%100, code%100)
}

// materializeSnapshot rebuilds a snapshot into a fresh staging directory,
// verifying every chunk; ref is an id (or prefix) or a container path for
// its latest snapshot.
func materializeSnapshot(ctx context.Context, dir, staging, ref, host string) (*scratch.Entry, *images.Manifest, error) {
	st, err := store.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	var s *store.Snapshot
	if len(ref) > 0 && ref[0] == '/' {
		s, err = st.LatestFrom(ref, host)
	} else if ref == "latest" {
		s, err = st.LatestFrom("", host)
	} else {
		s, err = st.Get(ref)
		if err == nil && host != "" && s.Host != host {
			err = fmt.Errorf("%w: snapshot %s was taken by host %s, not %s", store.ErrNotFound, s.ID, s.Host, host)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	tmp, err := scratch.Mkdir(staging, "snap-")
	if err != nil {
		return nil, nil, err
	}
	m, err := st.Materialize(ctx, s.ID, tmp.Path)
	if err != nil {
		tmp.Remove()
		if errors.Is(err, store.ErrDamaged) {
			return nil, nil, fmt.Errorf("snapshot %s is damaged; nothing was restored (cr images verify lists what is): %w", s.ID, err)
		}
		return nil, nil, err
	}
	return tmp, m, nil
}
