package dump

import (
	"fmt"
	"io"
	"strings"

	"github.com/cr-dev/cr/hostcheck"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/rootfs"
)

// PreCopyStats count what a pre-copy sent.
type PreCopyStats struct {
	Layers int   // archives: lowers and uppers
	Files  int   // their entries other than directories
	Bytes  int64 // their regular files' lengths
}

// PreCopySend sends one file system of a pre-copy: the upper of the
// container at path (relative to the subtree's root, as in the manifest)
// or, with path empty, the lower digest; body writes its archive, whose
// regular files hold at most size bytes.
type PreCopySend func(path, digest string, size int64, body func(w io.Writer) error) error

// PreCopy sends, while the subtree at root runs, the file systems of its
// --rootfs containers that a migration can send before the freeze: the
// lowers whose digests are in lowers (those the destination lacks), then
// the upper of every container with a job. It returns the uppers'
// snapshots by path for Options.PreCopied: the dump then stages for each
// only what changed since. progress, if set, gets the bytes sent so far.
func PreCopy(t *nstree.Tree, root *nstree.Node, lowers []string, send PreCopySend, progress func(int64)) (map[string]*rootfs.Snapshot, PreCopyStats, error) {
	var st PreCopyStats
	var sent int64
	type fs struct{ path, digest, dir string }
	var todo []fs
	want := map[string]bool{}
	for _, d := range lowers {
		want[d] = true
	}
	var err error
	root.Walk(func(n *nstree.Node) {
		if err != nil || n.Rootfs == "" || n.InitPid == 0 {
			return
		}
		if len(want) > 0 {
			var d string
			if d, err = rootfs.Digest(n.Rootfs); err != nil {
				return
			}
			if want[d] {
				delete(want, d)
				todo = append(todo, fs{digest: d, dir: n.Rootfs})
			}
		}
		todo = append(todo, fs{path: relPath(root, n), dir: t.RootfsLayout(&n.Config).Upper})
	})
	if err != nil {
		return nil, st, err
	}
	// The lowers first: a restore needs them before any upper.
	var lowersFirst []fs
	for _, f := range todo {
		if f.path == "" {
			lowersFirst = append(lowersFirst, f)
		}
	}
	for _, f := range todo {
		if f.path != "" {
			lowersFirst = append(lowersFirst, f)
		}
	}
	snaps := map[string]*rootfs.Snapshot{}
	for _, f := range lowersFirst {
		size, err := rootfs.Size(f.dir)
		if err != nil {
			return nil, st, err
		}
		// Room for what the job writes while its upper is sent.
		limit := size + size/4 + 16<<20
		var snap *rootfs.Snapshot
		err = send(f.path, f.digest, limit, func(w io.Writer) error {
			cw := &countWriter{w: w, f: func(n int64) {
				if progress != nil {
					progress(sent + n)
				}
			}}
			var err error
			snap, err = rootfs.WritePreCopy(cw, f.dir, limit)
			sent += cw.n
			return err
		})
		if err != nil {
			what := "the lower " + f.digest
			if f.path != "" {
				what = "the upper of " + f.path
			}
			return nil, st, fmt.Errorf("pre-copy of %s: %w", what, err)
		}
		st.Layers++
		st.Files += snap.Stats.Files
		st.Bytes += snap.Stats.Bytes
		if f.path != "" {
			snaps[f.path] = snap
		}
	}
	return snaps, st, nil
}

// relPath is n's path relative to root, as the manifest has it.
func relPath(root, n *nstree.Node) string {
	rel := strings.TrimPrefix(n.Path, root.Path)
	if rel == "" {
		return "/"
	}
	return rel
}

// countWriter counts what goes through it.
type countWriter struct {
	w io.Writer
	n int64
	f func(int64)
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.f(c.n)
	return n, err
}

// writingIn lists what the container's processes hold open for writing
// (or mapped shared and writable), relative to its root.
func writingIn(n *nstree.Node) func(rel string) bool {
	pids, _ := nstree.Procs(n.Leaf())
	set := map[string]bool{}
	for _, p := range hostcheck.Writing(pids) {
		set[strings.TrimPrefix(p, "/")] = true
	}
	return func(rel string) bool { return set[rel] }
}
