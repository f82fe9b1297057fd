package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/migrate"
)

// MigrateOptions are the flags of cr migrate.
type MigrateOptions struct {
	As      string
	Lazy    bool
	PreCopy bool
	Auth    AuthOptions
	JSON    bool
}

// MigrateReport is what cr migrate reports (--json).
type MigrateReport struct {
	Path             string         `json:"path"`
	Host             string         `json:"host"`
	Target           string         `json:"target"`
	Pids             map[string]int `json:"init_pids"`
	DowntimeSeconds  float64        `json:"downtime_seconds"`
	TotalSeconds     float64        `json:"total_seconds"`
	DumpSeconds      float64        `json:"dump_seconds"`
	TransferSeconds  float64        `json:"transfer_seconds"`
	RestoreSeconds   float64        `json:"restore_seconds"`
	RawBytes         int64          `json:"raw_bytes"`
	BytesSent        int64          `json:"bytes_sent"`
	CompressionRatio float64        `json:"compression_ratio"`
	ThroughputMBps   float64        `json:"throughput_mb_per_s"`
}

func init() {
	register(newMigrateCommand)
	mapError(migrate.ErrRejected, ExitFailure)
	mapError(migrate.ErrInDoubt, ExitFailure)
}

var errUnsupported = errors.New("not implemented")

func newMigrateCommand(g *Global) *cobra.Command {
	var o MigrateOptions
	c := &cobra.Command{
		Use:   "migrate PATH HOST[:PORT]",
		Short: "Move a running subtree to cr serve on another host",
		Long: `Freeze and dump the subtree at PATH as cr checkpoint does, stream it
compressed over an authenticated connection to cr serve on HOST (port 7400 by
default), which verifies and restores it (same pids, same IPC, same names, or
under --as). The source is removed only after the destination reports the
restore done. If anything fails before that (connection, authentication,
a cut stream, the destination's restore, a timeout) the source is thawed and
runs on, and the destination cleans up. If the connection is lost after the
go-ahead was sent, cr cannot know whether the destination runs the job: it
leaves the source frozen and says so (never two copies running).

Authentication: the same --token-file as the receiver's, or mutual TLS.

--lazy (post-copy with CRIU lazy pages) and --pre-copy (iterative, needs
soft-dirty memory tracking) are detected and refused with the reason.`,
		Example: `  cr migrate /lab otherhost --token-file /etc/cr/token
  cr migrate /lab 10.0.0.2:7400 --as /lab-moved --cert client.crt --key client.key --ca ca.crt
  cr migrate --json /lab otherhost --token-file /etc/cr/token | jq .downtime_seconds`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMigrate(cmd.Context(), cmd.OutOrStdout(), g, o, args[0], args[1])
		},
	}
	c.Flags().StringVar(&o.As, "as", "", "restore at this path on the destination")
	c.Flags().BoolVar(&o.Lazy, "lazy", false, "post-copy: resume at the destination before the memory arrives")
	c.Flags().BoolVar(&o.PreCopy, "pre-copy", false, "iterative pre-copy of memory while the job runs")
	o.Auth.AddFlags(c.Flags())
	c.Flags().BoolVar(&o.JSON, "json", false, "print a JSON report")
	return c
}

func runMigrate(ctx context.Context, out io.Writer, g *Global, o MigrateOptions, path, host string) error {
	au, err := o.Auth.auth()
	if err != nil {
		return err
	}
	e, err := openEnv()
	if err != nil {
		return err
	}
	n, err := e.node(path)
	if err != nil {
		return err
	}
	criu, ver, err := criuEnv(g)
	if err != nil {
		return err
	}
	if o.Lazy || o.PreCopy {
		f, ferr := criubin.ProbeFeatures(ctx, criu)
		switch {
		case ferr != nil:
			return envError{ferr}
		case o.PreCopy && !f.MemDirtyTrack:
			return envError{fmt.Errorf("--pre-copy needs soft-dirty memory tracking, which this kernel lacks (CONFIG_MEM_SOFT_DIRTY); use stop-and-copy (no flag)")}
		case o.Lazy && !f.UserFaultFD:
			return envError{fmt.Errorf("--lazy needs userfaultfd, which this kernel lacks; use stop-and-copy (no flag)")}
		}
		flag := "--lazy"
		if o.PreCopy {
			flag = "--pre-copy"
		}
		return usageError{fmt.Errorf("%s: %w in this version of cr (this kernel could do it); use stop-and-copy (no flag)", flag, errUnsupported)}
	}
	as := ""
	if o.As != "" {
		// The destination's tree is the host's: --as is absolute there.
		if as, err = e.viewer.Resolve(o.As); err != nil {
			return usageError{err}
		}
	}
	ctx, cancel := interruptible(ctx)
	defer cancel()
	var ck *dump.Checkpoint
	var frozenAt time.Time
	var raw int64
	mig := migrate.Migration{
		Request: migrate.Request{Root: n.Path, As: as, CRVersion: Version},
		Prepare: func(ctx context.Context) (int64, error) {
			frozenAt = time.Now()
			var err error
			ck, err = dump.Run(ctx, e.tree, n, dump.Options{CRIU: criu, CRIUVersion: ver.Code(), CRVersion: Version, StagingDir: stagingDir(e.tree)})
			if err != nil {
				return 0, err
			}
			raw = ck.Bytes()
			return raw + 1<<20, nil
		},
		Body: func(ctx context.Context, w io.Writer) error {
			_, err := images.WriteArchive(ctx, w, ck.Dir, ck.Manifest, images.WriteOptions{})
			return err
		},
	}
	info, stats, err := migrate.Migrate(ctx, host, au, mig)
	downtime := time.Since(frozenAt)
	if ck != nil {
		defer ck.Cleanup()
	}
	switch {
	case err == nil:
		if ferr := ck.Finish(context.Background()); ferr != nil {
			return fmt.Errorf("migrated, but removing the source failed: %w", ferr)
		}
	case errors.Is(err, migrate.ErrInDoubt):
		return fmt.Errorf("%w\n%s is left frozen here: check %s; if it runs there, `cr kill %s` here, else `cr thaw %s`", err, e.show(n.Path), host, e.show(n.Path), e.show(n.Path))
	default:
		if ck != nil {
			ck.Resume()
			return fmt.Errorf("%w (%s left running here)", err, e.show(n.Path))
		}
		return err
	}
	rep := MigrateReport{Path: e.show(n.Path), Host: host, Target: as, Pids: info.Pids, DowntimeSeconds: downtime.Seconds(),
		TotalSeconds: stats.Elapsed.Seconds(), DumpSeconds: stats.Prepare.Seconds(), TransferSeconds: stats.Transfer.Seconds(),
		RestoreSeconds: stats.Restore.Seconds(), RawBytes: raw, BytesSent: stats.BytesSent}
	if rep.Target == "" {
		rep.Target = n.Path
	}
	if stats.BytesSent > 0 {
		rep.CompressionRatio = float64(raw) / float64(stats.BytesSent)
	}
	if s := stats.Transfer.Seconds(); s > 0 {
		rep.ThroughputMBps = float64(raw) / 1e6 / s
	}
	if o.JSON {
		return writeJSON(out, rep)
	}
	fmt.Fprintf(out, "migrated %s to %s:%s\n", rep.Path, host, rep.Target)
	fmt.Fprintf(out, "  downtime %s (dump %s, transfer %s, restore %s), total %s\n", dur(rep.DowntimeSeconds), dur(rep.DumpSeconds),
		dur(rep.TransferSeconds), dur(rep.RestoreSeconds), dur(rep.TotalSeconds))
	fmt.Fprintf(out, "  %s raw, %s sent (%.1fx), %.0f MB/s\n", humanBytes(raw), humanBytes(rep.BytesSent), rep.CompressionRatio, rep.ThroughputMBps)
	return nil
}
