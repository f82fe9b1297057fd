package cmd

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/objstore"
	"github.com/cr-dev/cr/restore"
	"github.com/cr-dev/cr/scratch"
)

// RestoreOptions are the flags of cr restore.
type RestoreOptions struct {
	As    string
	Store string
	Host  string
	JSON  bool
}

// RestoreReport is what cr restore reports (--json).
type RestoreReport struct {
	Path           string         `json:"path"`
	Containers     []string       `json:"containers"`
	Pids           map[string]int `json:"init_pids"`
	ElapsedSeconds float64        `json:"elapsed_seconds"`
	// Streamed: fed to CRIU as it was read; then the phases: reading the
	// image's head and small files, restoring up to the hold (CRIU
	// reading the pages as they arrive), reading the rest to its
	// verified end.
	Streamed       bool    `json:"streamed"`
	ExtractSeconds float64 `json:"extract_seconds,omitempty"`
	RestoreSeconds float64 `json:"restore_seconds,omitempty"`
	VerifySeconds  float64 `json:"verify_seconds,omitempty"`
}

func init() { register(newRestoreCommand) }

func newRestoreCommand(g *Global) *cobra.Command {
	var o RestoreOptions
	c := &cobra.Command{
		Use:   "restore IMAGE|s3://BUCKET/KEY",
		Short: "Restore a checkpointed subtree from an image",
		Long: `Verify the whole image (manifest, every checksum, format version, CRIU
version, architecture) before creating anything, then recreate the subtree at
its original path, or at --as PATH, and restore every container with CRIU:
every pid inside each container is the one it had, SysV IPC objects keep
their ids and contents, and the jobs continue where they were. The containers
resume together once all are restored; if any fails, nothing is left. If cr
itself is killed, the next cr command removes what it had made (nodes,
processes, staging). An image in S3-compatible object storage (s3://BUCKET/KEY,
as cr checkpoint -o writes it) is read as a stream, in parallel ranges,
without a local copy of the image.`,
		Example: `  cr restore lab.cr
  cr restore --as /lab-copy lab.cr
  cr restore --json lab.cr | jq .init_pids
  cr restore s3://images/lab.cr
  cr restore --store /var/lib/cr/snapshots /lab     # latest snapshot of /lab
  cr restore --store /var/lib/cr/snapshots 3fa9c2   # a snapshot by id
  cr restore --store s3://snapshots/fleet --host web1 /lab   # the latest web1 took`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRestore(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), g, o, args[0])
		},
	}
	c.Flags().StringVar(&o.Store, "store", "", "restore a snapshot from this store: IMAGE is then an id, a container path (its latest snapshot) or \"latest\"")
	c.Flags().StringVar(&o.Host, "host", "", "with --store: only snapshots taken by this host (as cr images ls shows it)")
	c.Flags().StringVar(&o.As, "as", "", "restore the subtree at this path instead of its original one")
	c.Flags().BoolVar(&o.JSON, "json", false, "print a JSON report")
	return c
}

func runRestore(ctx context.Context, out, errOut io.Writer, g *Global, o RestoreOptions, image string) error {
	if o.Host != "" && o.Store == "" {
		return usageError{fmt.Errorf("--host needs --store")}
	}
	e, err := openEnv()
	if err != nil {
		return err
	}
	var as string
	if o.As != "" {
		if as, err = e.viewer.Resolve(o.As); err != nil {
			return usageError{err}
		}
		if as == e.viewer.Root {
			return usageError{errRootTarget(o.As)}
		}
		if _, ok := e.forest.ByPath[as]; ok {
			return fmt.Errorf("%w: %s", nstree.ErrExists, o.As)
		}
	}
	criu, ver, err := criuEnv(g)
	if err != nil {
		return err
	}
	ctx, cancel := interruptible(ctx)
	defer cancel()
	nc, err := hostNetwork(e.tree)
	if err != nil {
		return err
	}
	ropts := restore.Options{CRIU: criu, CRIUVersion: ver.Code(), StagingDir: stagingDir(e.tree), CheckFiles: true, Network: nc}
	// CRIU's action script, when the image is restored as it is read.
	ropts.Exe, _ = os.Executable()
	target := func(m *images.Manifest) (string, error) { return restoreTarget(e, m, as) }
	var res *restore.Result
	prog := newProgress(errOut, g, o.JSON)
	start := time.Now()
	if o.Store != "" {
		var dir *scratch.Entry
		var m *images.Manifest
		dir, m, err = materializeSnapshot(ctx, o.Store, ropts.StagingDir, image, o.Host)
		if err == nil {
			g.verbosef(errOut, "verified and extracted %s in %s", image, dur(time.Since(start).Seconds()))
			defer dir.Remove()
			var to string
			if to, err = target(m); err == nil {
				res, err = restore.FromDir(ctx, e.tree, dir.Path, m, to, ropts, nil)
			}
		}
	} else {
		// Verified while it is restored: nothing runs before every byte
		// of it was checked.
		var r io.Reader
		var size int64
		if objstore.IsURL(image) {
			sr, oerr := openS3Image(ctx, image)
			if oerr != nil {
				return oerr
			}
			defer sr.Close()
			r, size = sr, sr.Size()
		} else {
			f, oerr := openImage(image)
			if oerr != nil {
				return oerr
			}
			defer f.Close()
			if fi, err := f.Stat(); err == nil {
				size = fi.Size()
			}
			r = f
		}
		prog.phase("restoring "+image, size)
		res, err = restore.FromStream(ctx, e.tree, prog.reader(r), image, target, ropts, nil)
		prog.done()
	}
	if err == nil {
		if res.Streamed {
			g.verbosef(errOut, "restored from the image as it was read: head and small files %s, restore %s, the rest verified %s later",
				dur(res.Phases.Extract.Seconds()), dur(res.Phases.Restore.Seconds()), dur(res.Phases.Verify.Seconds()))
		}
		err = reportRestore(out, e, res, o.JSON)
	}
	return interrupted(ctx, err, "nothing was restored")
}

// restoreTarget is where an image restored by the viewer of e goes: its
// original path, or as; refused outside the viewer's container.
func restoreTarget(e *env, m *images.Manifest, as string) (string, error) {
	target := restore.Target(m, as)
	if !e.viewer.Contains(target) || target == e.viewer.Root {
		return "", fmt.Errorf("%w: the image's path %s is not inside your container; use --as", nstree.ErrOutside, target)
	}
	return target, nil
}

// reportRestore records and reports a restored subtree.
func reportRestore(out io.Writer, e *env, res *restore.Result, asJSON bool) error {
	e.tree.RecordPaths(res.Containers, events.Restored, nil)
	rep := RestoreReport{Path: e.show(res.Root), Pids: map[string]int{}, ElapsedSeconds: res.Elapsed.Seconds(), Streamed: res.Streamed,
		ExtractSeconds: res.Phases.Extract.Seconds(), RestoreSeconds: res.Phases.Restore.Seconds(), VerifySeconds: res.Phases.Verify.Seconds()}
	for _, p := range res.Containers {
		rep.Containers = append(rep.Containers, e.show(p))
	}
	for p, pid := range res.Pids {
		rep.Pids[e.show(p)] = pid
	}
	if asJSON {
		return writeJSON(out, rep)
	}
	fmt.Fprintf(out, "restored %s (%s) in %s\n", rep.Path, plural(len(rep.Containers), "container", "containers"), dur(rep.ElapsedSeconds))
	paths := append([]string(nil), rep.Containers...)
	sort.Strings(paths)
	for _, p := range paths {
		if pid, ok := rep.Pids[p]; ok {
			fmt.Fprintf(out, "  %s  init pid %d\n", p, pid)
		}
	}
	return nil
}
