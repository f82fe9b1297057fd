// Package probe finds out which kinds of job this host can checkpoint by
// doing it, rather than by trusting `criu check`: it starts tiny scratch
// jobs in a private tree of its own (its own state directory and cgroup
// parent, nothing the user's tree shows), checkpoints each through the
// dump package, restores it through the restore package, and then asks the
// restored job whether what it held still works and whether its pid is
// the one it had.
//
// The scratch job is cr itself re-executed with JobArg (see JobMain): it
// holds what its kind asks for (a TCP listener and a UDP socket, say),
// prints "ready PID", and on SIGUSR1 uses all of it again and prints
// "ok PID" or "fail REASON" into its container's log.
package probe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/restore"
	"github.com/cr-dev/cr/scratch"
)

// Kind is one kind of job the probe checkpoints.
type Kind struct {
	Name string // as cr check prints it
	What string // what the scratch job holds
	// The job's own namespaces and what it holds.
	Mount, Net, Sockets bool
	// Required: without it cr cannot checkpoint anything.
	Required bool
}

// Kinds are the probes, in the order they run.
var Kinds = []Kind{
	{Name: "checkpoint: processes", What: "a process with its memory, pid and pipes", Required: true},
	{Name: "checkpoint: inet sockets", What: "a TCP listener and a UDP socket, in a --net container", Net: true, Sockets: true},
	{Name: "checkpoint: --mount", What: "a process in a --mount container", Mount: true},
}

// Options say how to probe.
type Options struct {
	CRIU        string
	CRIUVersion int
	CRVersion   string
	Exe         string // the cr binary, re-executed as the scratch job
	BinDir      string // where the container init's binary is kept (shared with the real tree)
	Hier        freeze.Hierarchy
	Scratch     string // parent of the probe's own state directory
	Timeout     time.Duration
}

// Result is what one probe found.
type Result struct {
	Kind    Kind
	OK      bool
	Detail  string // why not: CRIU's own reason where it gave one
	Elapsed time.Duration
}

// Run runs every probe in kinds, one after the other, and removes all it
// made (containers, cgroups, state) before it returns.
func Run(ctx context.Context, o Options, kinds []Kind) ([]Result, error) {
	if o.Timeout == 0 {
		o.Timeout = 20 * time.Second
	}
	t, cleanup, err := scratchTree(o)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	var out []Result
	for i, k := range kinds {
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, o.Timeout)
		err := one(pctx, t, o, fmt.Sprintf("/probe%d", i+1), k)
		cancel()
		r := Result{Kind: k, OK: err == nil, Elapsed: time.Since(start)}
		if err != nil {
			r.Detail = reason(err)
		}
		out = append(out, r)
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
	}
	return out, nil
}

// reason is the one line a user needs: CRIU's reason when CRIU failed.
func reason(err error) string {
	var ce *criubin.CRIUError
	if errors.As(err, &ce) && ce.Reason != "" {
		return ce.Reason
	}
	return err.Error()
}

// scratchPrefix names the probes' private trees: their state directory
// under Options.Scratch, a scratch entry (see package scratch), and their
// cgroup parent, which has the same name.
const scratchPrefix = "cr-probe-"

// scratchTree makes a private tree: a state directory under o.Scratch,
// held by this process while it lives, and a cgroup parent of the same
// name. What a killed probe left (its lock gone) is removed first.
func scratchTree(o Options) (*nstree.Tree, func(), error) {
	if err := os.MkdirAll(o.Scratch, 0o700); err != nil {
		return nil, nil, fmt.Errorf("probe: %w", err)
	}
	scratch.Sweep(o.Scratch, scratchPrefix, scratch.Dirs, func(path string, _ *os.File) bool {
		removeTree(privateTree(o, path))
		return true
	})
	dir, err := scratch.MkdirOnly(o.Scratch, scratchPrefix)
	if err != nil {
		return nil, nil, fmt.Errorf("probe: %w", err)
	}
	t := privateTree(o, dir.Path)
	cleanup := func() {
		removeTree(t)
		_ = dir.Remove()
	}
	return t, cleanup, nil
}

// privateTree is the probe's tree whose state directory is state.
func privateTree(o Options, state string) *nstree.Tree {
	return &nstree.Tree{StateDir: state, CgroupParent: filepath.Base(state), BinDir: o.BinDir, Hier: o.Hier}
}

// removeTree kills every container of a private tree and removes its
// cgroups.
func removeTree(t *nstree.Tree) {
	killAll(t)
	for _, b := range t.CgroupBases() {
		removeCgroups(b)
	}
}

// killAll kills every container of t and removes its nodes.
func killAll(t *nstree.Tree) {
	f, err := t.Load()
	if err != nil {
		return
	}
	for _, n := range f.Top {
		_ = t.Kill(context.Background(), n, nstree.KillOptions{Grace: time.Millisecond})
	}
}

// removeCgroups removes a cgroup directory and everything below it; its
// processes must be gone.
func removeCgroups(base string) {
	var dirs []string
	_ = filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = syscall.Rmdir(dirs[i])
	}
}

// one runs, checkpoints and restores one scratch job, and asks it.
func one(ctx context.Context, t *nstree.Tree, o Options, path string, k Kind) error {
	args := []string{o.Exe, JobArg}
	if k.Sockets {
		args = append(args, "sockets")
	}
	if _, err := t.Run(nstree.RunOptions{Path: path, Command: args, Cwd: "/", Env: []string{"PATH=/usr/bin:/bin"},
		Mount: k.Mount, Net: k.Net, OnEmpty: nstree.OnEmptyKeep}); err != nil {
		return fmt.Errorf("start the job: %w", err)
	}
	n, err := lookup(t, path)
	if err != nil {
		return err
	}
	before, err := waitLine(ctx, t, n, "ready ", 0)
	if err != nil {
		return err
	}
	ck, err := dump.Run(ctx, t, n, dump.Options{CRIU: o.CRIU, CRIUVersion: o.CRIUVersion, CRVersion: o.CRVersion,
		StagingDir: filepath.Join(t.StateDir, "staging")})
	if err != nil {
		return err
	}
	defer ck.Cleanup()
	if err := ck.Finish(ctx); err != nil {
		return fmt.Errorf("end the dumped job: %w", err)
	}
	if _, err := restore.FromDir(ctx, t, ck.Dir, ck.Manifest, path, restore.Options{CRIU: o.CRIU, CRIUVersion: o.CRIUVersion,
		StagingDir: filepath.Join(t.StateDir, "staging")}, nil); err != nil {
		return err
	}
	n, err = lookup(t, path)
	if err != nil {
		return err
	}
	// Ask the restored job; the init forwards SIGUSR1 to it.
	if err := syscall.Kill(n.InitPid, syscall.SIGUSR1); err != nil {
		return fmt.Errorf("ask the restored job: %w", err)
	}
	got, err := waitLine(ctx, t, n, "ok ", 0)
	if err != nil {
		return fmt.Errorf("the restored job: %w", err)
	}
	if got != before {
		return fmt.Errorf("the restored job has pid %s, it had %s", got, before)
	}
	return nil
}

func lookup(t *nstree.Tree, path string) (*nstree.Node, error) {
	f, err := t.Load()
	if err != nil {
		return nil, err
	}
	return f.Lookup(path)
}

// waitLine waits for the skip+1-th line of the container's log that starts
// with prefix and returns the rest of it; a "fail " line ends the wait
// with its reason.
func waitLine(ctx context.Context, t *nstree.Tree, n *nstree.Node, prefix string, skip int) (string, error) {
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for {
		seen := 0
		if f, err := os.Open(t.LogPath(n.ID)); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				l := sc.Text()
				if r, ok := strings.CutPrefix(l, "fail "); ok {
					f.Close()
					return "", errors.New(r)
				}
				if r, ok := strings.CutPrefix(l, prefix); ok {
					if seen == skip {
						f.Close()
						return r, nil
					}
					seen++
				}
			}
			f.Close()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no %q from the job: %w", strings.TrimSpace(prefix), ctx.Err())
		case <-tk.C:
		}
	}
}
