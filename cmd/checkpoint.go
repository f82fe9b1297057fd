package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/objstore"
)

// CheckpointOptions are the flags of cr checkpoint.
type CheckpointOptions struct {
	Output       string
	LeaveRunning bool
	Compress     string
	JSON         bool
	WithRootfs   bool
	// TCPEstablished keeps established TCP connections of containers
	// with their own network (default true).
	TCPEstablished bool
}

// CheckpointReport is what cr checkpoint reports (--json).
type CheckpointReport struct {
	Path             string  `json:"path"`
	Image            string  `json:"image"`
	Containers       int     `json:"containers"`
	LeftRunning      bool    `json:"left_running"`
	FrozenSeconds    float64 `json:"frozen_seconds"`
	DumpSeconds      float64 `json:"dump_seconds"`
	WriteSeconds     float64 `json:"write_seconds"`
	PagesScanned     int64   `json:"pages_scanned"`
	PagesWritten     int64   `json:"pages_written"`
	RawBytes         int64   `json:"raw_bytes"`
	ImageBytes       int64   `json:"image_bytes"`
	CompressionRatio float64 `json:"compression_ratio"`
	// ThroughputBytesPerSecond is the raw bytes over the dump and write.
	ThroughputBytesPerSecond float64 `json:"throughput_bytes_per_second"`
}

func init() { register(newCheckpointCommand) }

func newCheckpointCommand(g *Global) *cobra.Command {
	var o CheckpointOptions
	c := &cobra.Command{
		Use:   "checkpoint PATH",
		Short: "Checkpoint a container subtree into one image file",
		Long: `Freeze the subtree at PATH as one consistent cut, dump every container in
it with CRIU (processes, memory, threads, signals, timers, pipes, unix sockets,
files, SysV IPC, pid/ipc/uts namespaces, cgroup membership), and write one
compressed, checksummed image file (default: NAME-TIMESTAMP.cr), or stream it
to S3-compatible object storage with -o s3://BUCKET/KEY (no local copy; the
object appears only when the image is whole; endpoint and credentials from
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION or ~/.aws).

Containers with a network namespace of their own (cr run --net) have their
network locked while they are dumped, and their established TCP connections
are dumped with them (--tcp-established, on by default); a container on
cr's bridge (--net=bridge) keeps its address, and its peers see its
connections pause, not end: its veth is unplugged from the dump until the
restored copy runs.

Without --leave-running the subtree stays frozen until the image is complete
and synced to disk, and is then killed and removed; with it, the subtree runs
on and is frozen only for the dump itself, not for compression or writing.

CRIU's pages go straight from CRIU into the compressor (CRIU's image
streamer): no uncompressed copy of the memory is staged, and the space
needed beside the image is about the compressed image. Each pages image is
compressed in pieces of 1 MiB on every CPU at once, and hashed (SHA-256)
beside them. --compress picks the codec; measured on a 2-core machine, on
memory a quarter zeros, half text, a quarter random (docs/performance.md):

  zstd  the default (level 1): about 0.6 GB/s per core, the smallest
        images (0.32 of the memory), the one checkpointctl and Podman's
        tools read
  s2    the fastest: about 1.4 GB/s per core (a checkpoint in about 2/3 of
        zstd's time), images about 11% larger (0.35 of the memory);
        checkpointctl cannot read it
  none  images the size of the memory; only the hash costs (1.2 GB/s)

If anything fails (CRIU, disk, Ctrl-C, SIGTERM) the subtree is thawed and
left running as before, no image is left behind, and CRIU's own reason is
shown with the path of its full log (kept in $CR_STATE_DIR/criu-logs, the
newest 50). If cr itself is killed, the subtree stays (frozen, at worst:
cr thaw resumes it) and the next checkpoint removes its staging and its
partial image.

A --rootfs container's image holds its file system's changes (the upper
layer of its overlay, its tmpfs contents) and its init's executable; its
lower is named by a content digest and found at restore in that host's
rootfs cache ($CR_ROOTFS_CACHE, default /var/lib/cr/rootfs), unless
--with-rootfs carries it in the image too.`,
		Example: `  cr checkpoint /lab -o lab.cr
  cr checkpoint --with-rootfs /vm1 -o vm1.cr       # restorable on a host without its rootfs
  cr checkpoint --leave-running --json /lab/pi | jq .frozen_seconds
  cr restore lab.cr
  cr checkpoint /lab -o s3://images/lab.cr && cr restore s3://images/lab.cr`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCheckpoint(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), g, o, args[0])
		},
	}
	c.Flags().StringVarP(&o.Output, "output", "o", "", "image file to write, or s3://BUCKET/KEY (default NAME-TIMESTAMP.cr)")
	c.Flags().BoolVar(&o.LeaveRunning, "leave-running", false, "keep the subtree running after the dump")
	c.Flags().StringVar(&o.Compress, "compress", images.CompressionZstd, "compression: zstd (smallest; checkpointctl reads it), s2 (fastest: about 2/3 of zstd's time, images about 11% larger) or none")
	c.Flags().BoolVar(&o.WithRootfs, "with-rootfs", false, "carry the lower of --rootfs containers in the image too")
	c.Flags().BoolVar(&o.TCPEstablished, "tcp-established", true, "dump the established TCP connections of containers with their own network (--tcp-established=false: refuse them)")
	c.Flags().BoolVar(&o.JSON, "json", false, "print a JSON report")
	return c
}

// criuEnv finds a working CRIU and its version.
func criuEnv(g *Global) (string, criubin.Version, error) {
	// Without its cache CRIU only runs slower.
	_ = criubin.PrepareCache()
	path, err := criubin.Find(g.CRIU)
	if err != nil {
		return "", criubin.Version{}, envError{err}
	}
	v, err := criubin.GetVersion(path)
	if err != nil {
		return "", criubin.Version{}, envError{err}
	}
	if v.Code() < criubin.MinVersion {
		return "", criubin.Version{}, envError{fmt.Errorf("CRIU %s at %s is older than 4.1 (run scripts/provision.sh)", v, path)}
	}
	return path, v, nil
}

// hostNetwork is this host's bridge network (CR_BRIDGE, CR_SUBNET), where
// restored containers that had an address get it again.
func hostNetwork(t *nstree.Tree) (*network.Config, error) {
	nc, err := network.FromEnv(t.StateDir)
	if err != nil {
		return nil, usageError{err}
	}
	return &nc, nil
}

// stagingDir is where images are staged before compression or restore.
func stagingDir(t *nstree.Tree) string {
	if d := os.Getenv("CR_STAGING"); d != "" {
		return d
	}
	return filepath.Join(t.StateDir, "staging")
}

// errSignal is the cause of a context that interruptible cancelled.
var errSignal = errors.New("interrupted by a signal")

// interruptible returns a context cancelled, with the cause errSignal, by
// SIGINT or SIGTERM.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-ch:
			cancel(errSignal)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(context.Canceled)
	}
}

func runCheckpoint(ctx context.Context, out, errOut io.Writer, g *Global, o CheckpointOptions, path string) error {
	if o.Compress != images.CompressionZstd && o.Compress != images.CompressionS2 && o.Compress != images.CompressionNone {
		return usageError{fmt.Errorf("invalid --compress %q: want zstd, s2 or none", o.Compress)}
	}
	e, n, err := openNode(path)
	if err != nil {
		return err
	}
	criu, ver, err := criuEnv(g)
	if err != nil {
		return err
	}
	if o.Output == "" {
		o.Output = fmt.Sprintf("%s-%s.cr", n.Name, time.Now().Format("20060102-150405"))
	}
	ctx, cancel := interruptible(ctx)
	defer cancel()
	// Fail before touching the job if the image cannot be written.
	var obj imageSink
	if objstore.IsURL(o.Output) {
		if obj, err = createS3Image(ctx, o.Output); err != nil {
			return fmt.Errorf("cannot write the image: %w", err)
		}
		defer obj.Abort() // a no-op once committed
	} else if err := images.CheckOutput(o.Output, false); err != nil {
		return fmt.Errorf("cannot write the image: %w", err)
	}
	prog := newProgress(errOut, g, o.JSON)
	defer prog.done()
	prog.phase("dumping "+e.show(n.Path), subtreeMemory(n))
	fsink := &dump.FileSink{Path: o.Output, Compression: o.Compress, Progress: prog.update}
	var sink dump.Sink = fsink
	var osink *objectSink
	if obj != nil {
		osink = &objectSink{w: obj, archive: dump.ArchiveSink{Compression: o.Compress, Progress: prog.update}}
		sink = osink
	}
	ck, err := dump.Take(ctx, e.tree, n, dump.Options{
		CRIU: criu, CRIUVersion: ver.Code(), CRVersion: Version, StagingDir: stagingDir(e.tree),
		LeaveRunning: o.LeaveRunning, WithRootfs: o.WithRootfs, NoTCPEstablished: !o.TCPEstablished,
		Stream: true, Compression: o.Compress,
		Progress: prog.update,
		Dumped: func(ck *dump.Checkpoint) {
			prog.done()
			g.verbosef(errOut, "dumped %s in %s with %s (frozen so far %s)", e.show(n.Path), dur(ck.Dump.Seconds()), criu, dur(ck.FrozenSoFar().Seconds()))
			prog.phase("writing "+o.Output, ck.Bytes())
		},
		Stored: func(*dump.Checkpoint) {
			image := o.Output
			if obj == nil {
				image = absPath(o.Output)
			}
			e.tree.RecordSubtree(n, events.Checkpointed, func(ev *events.Event) { ev.Image = image })
		},
	}, sink)
	prog.done()
	switch {
	case errors.Is(err, dump.ErrEndSource):
		return fmt.Errorf("image written to %s, but %w", o.Output, err)
	case err != nil && ck == nil: // the dump failed
		return interrupted(ctx, err, e.show(n.Path)+" left running")
	case err != nil:
		if err := interrupted(ctx, err, e.show(n.Path)+" left running"); errors.As(err, new(interruptedError)) {
			return err
		}
		return fmt.Errorf("write image: %w (%s left running)", err, e.show(n.Path))
	}
	res, wdur := fsink.Result, fsink.Elapsed
	if osink != nil {
		res, wdur = osink.archive.Result, osink.elapsed
	}
	g.verbosef(errOut, "wrote %s in %s: %s raw, %s image; CRIU's logs are in it (dump.log beside each container's images)", o.Output, dur(wdur.Seconds()), humanBytes(res.RawBytes), humanBytes(res.ImageBytes))
	rep := CheckpointReport{
		Path: e.show(n.Path), Image: o.Output, Containers: len(ck.Manifest.Containers), LeftRunning: o.LeaveRunning,
		FrozenSeconds: ck.Frozen.Seconds(), DumpSeconds: ck.Dump.Seconds(), WriteSeconds: wdur.Seconds(),
		PagesScanned: ck.Manifest.Stats.PagesScanned, PagesWritten: ck.Manifest.Stats.PagesWritten,
		RawBytes: res.RawBytes, ImageBytes: res.ImageBytes,
	}
	if res.ImageBytes > 0 {
		rep.CompressionRatio = float64(res.RawBytes) / float64(res.ImageBytes)
	}
	if s := (ck.Dump + wdur).Seconds(); s > 0 {
		rep.ThroughputBytesPerSecond = float64(res.RawBytes) / s
	}
	if o.JSON {
		return writeJSON(out, rep)
	}
	fmt.Fprintf(out, "checkpointed %s (%s) to %s\n", rep.Path, plural(rep.Containers, "container", "containers"), rep.Image)
	fmt.Fprintf(out, "  frozen %s, dump %s, write %s\n", dur(rep.FrozenSeconds), dur(rep.DumpSeconds), dur(rep.WriteSeconds))
	fmt.Fprintf(out, "  pages scanned %d, written %d; %s raw, %s image (%.1fx), %.0f MB/s\n", rep.PagesScanned, rep.PagesWritten,
		humanBytes(rep.RawBytes), humanBytes(rep.ImageBytes), rep.CompressionRatio, rep.ThroughputBytesPerSecond/1e6)
	if o.LeaveRunning {
		fmt.Fprintf(out, "  %s keeps running\n", rep.Path)
	}
	return nil
}

// subtreeMemory is the memory in use by the processes of the subtree at n:
// about what a dump of it writes.
func subtreeMemory(n *nstree.Node) int64 {
	var b int64
	n.Walk(func(m *nstree.Node) { b += nstree.UsageOf(mustProcs(m)).RSSBytes })
	return b
}

func dur(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Microsecond).String()
}
