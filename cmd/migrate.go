package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/migrate"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
)

// MigrateOptions are the flags of cr migrate.
type MigrateOptions struct {
	As       string
	Lazy     bool
	Fallback bool
	PreCopy  bool
	// WithRootfs sends the lower of --rootfs containers too.
	WithRootfs bool
	// TCPEstablished: see CheckpointOptions.
	TCPEstablished bool
	Auth           AuthOptions
	JSON           bool
}

// MigrateReport is what cr migrate reports (--json).
type MigrateReport struct {
	Path             string         `json:"path"`
	Host             string         `json:"host"`
	Target           string         `json:"target"`
	Pids             map[string]int `json:"init_pids"`
	Lazy             bool           `json:"lazy"`
	DowntimeSeconds  float64        `json:"downtime_seconds"`
	TotalSeconds     float64        `json:"total_seconds"`
	DumpSeconds      float64        `json:"dump_seconds"`
	TransferSeconds  float64        `json:"transfer_seconds"`
	RestoreSeconds   float64        `json:"restore_seconds"`
	RawBytes         int64          `json:"raw_bytes"`
	SentBytes        int64          `json:"sent_bytes"`    // all bytes on the wire
	ArchiveBytes     int64          `json:"archive_bytes"` // the compressed image stream
	CompressionRatio float64        `json:"compression_ratio"`
	// ThroughputBytesPerSecond is the raw bytes over the transfer.
	ThroughputBytesPerSecond float64 `json:"throughput_bytes_per_second"`
	// Lazy only: the memory that followed the running job.
	PagesSeconds float64 `json:"pages_seconds,omitempty"`
	PageBytes    int64   `json:"page_bytes,omitempty"`
	// The file systems of --rootfs containers sent before the freeze
	// (their regular files' bytes and entries, the archives' bytes, the
	// time), and what changed in their uppers since, sent after it.
	PreCopyBytes        int64   `json:"precopy_bytes"`
	PreCopyFiles        int     `json:"precopy_files"`
	PreCopyArchiveBytes int64   `json:"precopy_archive_bytes"`
	PreCopySeconds      float64 `json:"precopy_seconds"`
	ChangedBytes        int64   `json:"fs_changed_bytes"`
	ChangedFiles        int     `json:"fs_changed_files"`
	RemovedFiles        int     `json:"fs_removed_files"`
}

func init() {
	register(newMigrateCommand)
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

--lazy is post-copy migration with CRIU's lazy pages: only the job's state
without its private memory is sent before the job resumes at the
destination, so the downtime does not grow with its memory; the pages
follow on demand and in the background through the same authenticated
connection (CRIU's page server never listens on the network). The source
stays frozen until the destination has every page, and is removed then. If
the destination cannot restore lazily (no userfaultfd), cr migrate refuses
before touching the job, or with --fallback migrates stop-and-copy. If the
connection breaks after the job resumed at the destination, the destination
kills its copy (its memory cannot arrive) and the source stays frozen: check
the destination, then thaw or kill it here.

--pre-copy (iterative, needs soft-dirty memory tracking) is detected and
refused with the reason.

The file systems of --rootfs containers travel before the freeze: while
the job runs, their upper layers (and with --with-rootfs the lowers the
destination lacks) go to cr serve; after the freeze only what changed in
the uppers since follows (compared by size, time, mode and, for files held
open for writing, content), so the downtime grows with the files the job
changes meanwhile, not with the size of its file system.

Containers on cr's bridge (cr run --net=bridge) keep their address and
their established TCP connections (--tcp-established, on by default): the
destination's bridge must have the same subnet (CR_SUBNET, CR_BRIDGE there)
and the addresses must be free there, or it refuses before the source is
touched. Peers then reach the container through the destination: every host
of a fleet has the same subnet on its bridge, and traffic to a container's
address must be routed to the host that runs it (a /32 route, or routing
between the hosts' bridges).`,
		Example: `  cr migrate /lab otherhost --token-file /etc/cr/token
  cr migrate --lazy --fallback /lab otherhost --token-file /etc/cr/token
  cr migrate /lab 10.0.0.2:7400 --as /lab-moved --cert client.crt --key client.key --ca ca.crt
  cr migrate --json /lab otherhost --token-file /etc/cr/token | jq .downtime_seconds`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMigrate(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), g, o, args[0], args[1])
		},
	}
	c.Flags().StringVar(&o.As, "as", "", "restore at this path on the destination")
	c.Flags().BoolVar(&o.Lazy, "lazy", false, "post-copy: resume at the destination before the memory arrives")
	c.Flags().BoolVar(&o.Fallback, "fallback", false, "with --lazy: migrate stop-and-copy if the destination cannot restore lazily")
	c.Flags().BoolVar(&o.PreCopy, "pre-copy", false, "iterative pre-copy of memory while the job runs")
	c.Flags().BoolVar(&o.WithRootfs, "with-rootfs", false, "send the lower of --rootfs containers too (for a destination without it)")
	c.Flags().BoolVar(&o.TCPEstablished, "tcp-established", true, "move the established TCP connections of containers with their own network (--tcp-established=false: refuse them)")
	o.Auth.AddFlags(c.Flags())
	c.Flags().BoolVar(&o.JSON, "json", false, "print a JSON report")
	return c
}

func runMigrate(ctx context.Context, out, errOut io.Writer, g *Global, o MigrateOptions, path, host string) error {
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
	if o.Fallback && !o.Lazy {
		return usageError{errors.New("--fallback goes with --lazy")}
	}
	if o.PreCopy {
		f, ferr := criubin.ProbeFeatures(ctx, criu)
		switch {
		case ferr != nil:
			return envError{ferr}
		case !f.MemDirtyTrack:
			return envError{fmt.Errorf("--pre-copy needs soft-dirty memory tracking, which this kernel lacks (CONFIG_MEM_SOFT_DIRTY); use stop-and-copy (no flag) or --lazy")}
		}
		return usageError{fmt.Errorf("--pre-copy: %w in this version of cr (this kernel could do it); use stop-and-copy (no flag) or --lazy", errUnsupported)}
	}
	if o.Lazy {
		// The source's CRIU keeps the pages in pipes it must grow.
		if err := criubin.CheckLazyPipes(); err != nil {
			return envError{err}
		}
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
	// The host contract, which the destination checks before anything is
	// frozen: the lowers it must have, the files the containers on this
	// host's file system use, this CPU.
	var lowers, sendLowers []string
	if o.WithRootfs {
		sendLowers, err = dump.Lowers(n)
	} else {
		lowers, err = dump.Lowers(n)
	}
	if err != nil {
		return err
	}
	files, err := dump.HostFiles(n)
	if err != nil {
		return err
	}
	cpu, err := criubin.CPUInfo(ctx, criu)
	if err != nil {
		return envError{err}
	}
	var ck *dump.Checkpoint
	var frozenAt, resumedAt time.Time
	var raw int64
	// The file systems of --rootfs containers go before the freeze when
	// the destination takes them; then only their changes follow.
	var pre struct {
		snaps map[string]*rootfs.Snapshot
		stats dump.PreCopyStats
	}
	hasRootfs := len(subtreeRootfs(n)) > 0
	prog := newProgress(errOut, g, o.JSON)
	defer prog.done()
	mig := migrate.Migration{
		Request: migrate.Request{Root: n.Path, As: as, CRVersion: Version, Lazy: o.Lazy, Lowers: lowers,
			Arch: runtime.GOARCH, CRIUVersion: ver.Code(), Files: files, CPUInfo: cpu,
			Networks: subtreeNetworks(n), Published: subtreePublished(n),
			PreCopy: hasRootfs && !o.Lazy, SendLowers: sendLowers},
		PreCopy: func(ctx context.Context, want []string, send migrate.SendLayer) error {
			prog.phase("sending file systems to "+host, subtreeRootfs(n).size(e.tree))
			snaps, st, err := dump.PreCopy(e.tree, n, want, func(path, digest string, size int64, body func(io.Writer) error) error {
				l := migrate.Layer{Kind: migrate.LayerUpper, Path: path, Size: size}
				if path == "" {
					l = migrate.Layer{Kind: migrate.LayerLower, Digest: digest, Size: size}
				}
				return send(l, body)
			}, prog.update)
			prog.done()
			if err != nil {
				return err
			}
			pre.snaps, pre.stats = snaps, st
			g.verbosef(errOut, "sent %s of file systems (%d files) before the freeze", humanBytes(st.Bytes), st.Files)
			return nil
		},
		Prepare: func(ctx context.Context) (int64, error) {
			frozenAt = time.Now()
			var err error
			prog.phase("dumping "+e.show(n.Path), subtreeMemory(n))
			// Pre-copied, the lowers are at the destination already.
			withRootfs := o.WithRootfs && pre.snaps == nil
			ck, err = dump.Run(ctx, e.tree, n, dump.Options{CRIU: criu, CRIUVersion: ver.Code(), CRVersion: Version,
				StagingDir: stagingDir(e.tree), Lazy: o.Lazy, Stream: !o.Lazy, WithRootfs: withRootfs, NoTCPEstablished: !o.TCPEstablished,
				PreCopied: pre.snaps, Progress: prog.update})
			prog.done()
			if err != nil {
				return 0, err
			}
			raw = ck.Bytes()
			g.verbosef(errOut, "dumped %s in %s with %s", e.show(n.Path), dur(time.Since(frozenAt).Seconds()), criu)
			return raw + 1<<20, nil
		},
		Body: func(ctx context.Context, w io.Writer) error {
			prog.phase("sending to "+host, raw)
			start := time.Now()
			sink := &dump.ArchiveSink{W: w, Progress: prog.update}
			err := sink.Write(ctx, ck)
			res := sink.Result
			prog.done()
			g.verbosef(errOut, "sent %s (%s compressed) in %s", humanBytes(res.RawBytes), humanBytes(res.ImageBytes), dur(time.Since(start).Seconds()))
			return err
		},
		Pages: func() map[int]*os.File {
			links := map[int]*os.File{}
			for _, pl := range ck.Pages() {
				links[pl.Container] = pl.Proc.Conn
			}
			return links
		},
		OnResumed: func(migrate.RestoreInfo) { resumedAt = time.Now() },
	}
	info, stats, err := migrate.Migrate(ctx, host, au, mig)
	if errors.Is(err, migrate.ErrNoLazy) && o.Fallback {
		if !g.Quiet {
			fmt.Fprintf(errOut, "cr migrate: %v; migrating stop-and-copy (--fallback)\n", err)
		}
		o.Lazy, mig.Request.Lazy, mig.Request.PreCopy = false, false, hasRootfs
		info, stats, err = migrate.Migrate(ctx, host, au, mig)
	}
	downtime := time.Since(frozenAt)
	if !resumedAt.IsZero() {
		downtime = resumedAt.Sub(frozenAt)
	}
	if ck != nil {
		defer ck.Cleanup()
	}
	if ck != nil {
		if err == nil {
			e.tree.RecordSubtree(n, events.MigratedOut, func(ev *events.Event) { ev.Host = host })
		}
		// The source's fate, decided where every checkpoint's is.
		serr := err
		if errors.Is(err, migrate.ErrInDoubt) {
			serr = fmt.Errorf("%w: %w", dump.ErrInDoubt, err)
		}
		if serr = ck.Settle(serr, false); err == nil && serr != nil {
			return fmt.Errorf("migrated, but %w", serr)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, migrate.ErrInDoubt):
		return fmt.Errorf("%w\n%s is left frozen here: check %s; if it runs there, `cr kill %s` here, else `cr thaw %s`", err, e.show(n.Path), host, e.show(n.Path), e.show(n.Path))
	case ck != nil:
		return interrupted(ctx, fmt.Errorf("%w (%s left running here)", err, e.show(n.Path)), e.show(n.Path)+" left running")
	default:
		return interrupted(ctx, err, e.show(n.Path)+" left running")
	}
	rep := MigrateReport{Path: e.show(n.Path), Host: host, Target: as, Pids: info.Pids, Lazy: o.Lazy, DowntimeSeconds: downtime.Seconds(),
		TotalSeconds: stats.Elapsed.Seconds(), DumpSeconds: stats.Prepare.Seconds(), TransferSeconds: stats.Transfer.Seconds(),
		RestoreSeconds: stats.Restore.Seconds(), RawBytes: raw, SentBytes: stats.BytesSent, ArchiveBytes: stats.ArchiveBytes,
		PagesSeconds: stats.Pages.Seconds(), PageBytes: stats.PageBytes,
		PreCopyBytes: pre.stats.Bytes, PreCopyFiles: pre.stats.Files, PreCopyArchiveBytes: stats.PreCopyBytes, PreCopySeconds: stats.PreCopy.Seconds()}
	if ck != nil && ck.Manifest != nil {
		for _, c := range ck.Manifest.Containers {
			if r := c.Rootfs; r != nil && r.UpperDelta {
				rep.ChangedBytes += r.UpperBytes
				rep.ChangedFiles += r.UpperFiles
				rep.RemovedFiles += r.Removed
			}
		}
	}
	if rep.Target == "" {
		rep.Target = n.Path
	}
	if stats.ArchiveBytes > 0 {
		rep.CompressionRatio = float64(raw) / float64(stats.ArchiveBytes)
	}
	if s := stats.Transfer.Seconds(); s > 0 {
		rep.ThroughputBytesPerSecond = float64(raw) / s
	}
	if o.JSON {
		return writeJSON(out, rep)
	}
	fmt.Fprintf(out, "migrated %s to %s:%s\n", rep.Path, host, rep.Target)
	fmt.Fprintf(out, "  downtime %s (dump %s, transfer %s, restore %s), total %s\n", dur(rep.DowntimeSeconds), dur(rep.DumpSeconds),
		dur(rep.TransferSeconds), dur(rep.RestoreSeconds), dur(rep.TotalSeconds))
	fmt.Fprintf(out, "  image: %s raw, %s sent (%.1fx), %.0f MB/s\n", humanBytes(raw), humanBytes(rep.ArchiveBytes), rep.CompressionRatio, rep.ThroughputBytesPerSecond/1e6)
	if o.Lazy {
		fmt.Fprintf(out, "  lazy: %s of memory followed in %s after the job resumed\n", humanBytes(rep.PageBytes), dur(rep.PagesSeconds))
	}
	if rep.PreCopyArchiveBytes > 0 {
		fmt.Fprintf(out, "  file systems: %s (%d files) sent before the freeze in %s; %s (%d files, %d removed) changed since\n",
			humanBytes(rep.PreCopyBytes), rep.PreCopyFiles, dur(rep.PreCopySeconds), humanBytes(rep.ChangedBytes), rep.ChangedFiles, rep.RemovedFiles)
	}
	return nil
}

// rootfsNodes are the running --rootfs containers of a subtree.
type rootfsNodes []*nstree.Node

func subtreeRootfs(n *nstree.Node) rootfsNodes {
	var out rootfsNodes
	n.Walk(func(m *nstree.Node) {
		if m.Rootfs != "" && m.InitPid != 0 {
			out = append(out, m)
		}
	})
	return out
}

// size is what their uppers hold, for the progress of a pre-copy.
func (ns rootfsNodes) size(t *nstree.Tree) int64 {
	var total int64
	for _, m := range ns {
		s, _ := rootfs.Size(t.RootfsLayout(&m.Config).Upper)
		total += s
	}
	return total
}

// subtreeNetworks lists the bridge addresses of the containers under n,
// for the destination's host checks.
func subtreeNetworks(n *nstree.Node) []string {
	var out []string
	n.Walk(func(m *nstree.Node) {
		if m.Network != nil && m.InitPid != 0 {
			out = append(out, m.Network.Address)
		}
	})
	return out
}

// subtreePublished lists the ports the containers under n publish.
func subtreePublished(n *nstree.Node) []string {
	var out []string
	n.Walk(func(m *nstree.Node) {
		if m.Network != nil && m.InitPid != 0 {
			out = append(out, m.Network.Publish...)
		}
	})
	return out
}
