package restore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/scratch"
)

// The journal of restores in progress, <state>/restoring/: one record per
// restore, a scratch entry (see package scratch) that its restore holds
// locked from before it creates any node until the restored tree is
// finished (for a lazy restore: until every page arrived) or removed. A
// record whose lock can be taken belongs to a restore whose cr died;
// Recover then removes what that restore left. Its lines, each appended
// once it is true:
//
//	target /lab            where the tree goes
//	lazy                   the restore is lazy (its memory follows)
//	ids c0123 c4567 ...    the nodes made, parents first
//	resuming               the containers are told to resume
//
// Until "resuming" no restored process has run: whatever is in the nodes
// is CRIU's work in progress, and Recover kills it and removes the nodes.
// After it, the tree may be running as the only copy of the job (a
// migration committed, or a plain restore that died just before it
// recorded the result): Recover gives CRIU time to kill what did not
// resume and leaves a tree that runs, except a lazy one, whose memory can
// no longer arrive and which is killed.
const (
	journalDir    = "restoring"
	journalPrefix = "restore-"
)

// journal is one restore's record.
type journal struct{ e *scratch.Entry }

// beginJournal records a restore at target before any node exists.
func beginJournal(t *nstree.Tree, target string, lazy bool) (*journal, error) {
	dir := filepath.Join(t.StateDir, journalDir)
	e, err := scratch.CreateOnly(dir, journalPrefix)
	if os.IsNotExist(err) {
		if err = os.MkdirAll(dir, 0o700); err == nil {
			e, err = scratch.CreateOnly(dir, journalPrefix)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("record restore: %w", err)
	}
	j := &journal{e: e}
	rec := "target " + target + "\n"
	if lazy {
		rec += "lazy\n"
	}
	if err := j.add(rec); err != nil {
		e.Remove()
		return nil, err
	}
	return j, nil
}

// add appends lines to the record and syncs them.
func (j *journal) add(lines string) error {
	f := j.e.File()
	if _, err := f.WriteString(lines); err != nil {
		return fmt.Errorf("record restore: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("record restore: %w", err)
	}
	return nil
}

func (j *journal) created(nodes []*nstree.Node) error {
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = n.ID
	}
	return j.add("ids " + strings.Join(ids, " ") + "\n")
}

func (j *journal) resuming() error { return j.add("resuming\n") }

// end removes the record: the restore is over, whichever way it ended.
func (j *journal) end() {
	if j != nil {
		j.e.Remove()
	}
}

// record is a journal record as read back.
type record struct {
	target   string
	lazy     bool
	ids      []string
	resuming bool
}

func parseRecord(b []byte) record {
	var r record
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "target":
			r.target = v
		case "lazy":
			r.lazy = true
		case "ids":
			r.ids = strings.Fields(v)
		case "resuming":
			r.resuming = true
		}
	}
	return r
}

// halfRestoredWait bounds the wait for CRIU to kill what it restored.
const halfRestoredWait = 10 * time.Second

// Recover removes what the restores of a cr that died left (see the
// journal above), and returns one line for each it acted on. Records of
// restores in progress are left alone. It is cheap when there is nothing
// to do, and every cr that loads the tree may call it.
func Recover(t *nstree.Tree) []string {
	var msgs []string
	scratch.Sweep(filepath.Join(t.StateDir, journalDir), journalPrefix, scratch.Files, func(path string, f *os.File) bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		if msg := recoverOne(t, parseRecord(b)); msg != "" {
			msgs = append(msgs, msg)
		}
		return true
	})
	return msgs
}

func recoverOne(t *nstree.Tree, r record) string {
	what := "interrupted restore of " + r.target
	f, err := t.Load()
	if err != nil {
		return fmt.Sprintf("%s: %v", what, err)
	}
	var nodes []*nstree.Node
	if len(r.ids) > 0 {
		for _, id := range r.ids {
			if n, ok := f.ByID[id]; ok {
				nodes = append(nodes, n)
			}
		}
	} else if n, ok := f.ByPath[r.target]; ok {
		// Died inside CreateRestored: only nodes that look like its own.
		n.Walk(func(m *nstree.Node) { nodes = append(nodes, m) })
	}
	if len(nodes) == 0 {
		return ""
	}
	// A lazy restore is finished only once its memory is all here, and
	// its record then gone; any other ends when its nodes say so.
	for _, n := range nodes {
		if !(r.lazy && r.resuming) && (!n.Restored.IsZero() || n.InitPid != 0 || n.Status != "restoring" && n.Status != "running") {
			return "" // finished, or something else is there now
		}
	}
	switch {
	case r.lazy && r.resuming:
		// CRIU's lazy-pages daemons went with cr: the job would read
		// zeros where its pages were missing. Frozen first, so that it is
		// killed at once, without running on.
		_ = t.Freeze(context.Background(), nodes[0])
		// SIGKILL and thaw (v1 kills frozen tasks only once thawed).
		_ = t.Kill(context.Background(), nodes[0], nstree.KillOptions{Signal: syscall.SIGKILL})
		t.RemoveRestored(nodes)
		return "interrupted lazy restore of " + r.target + ": its memory had not all arrived; killed and removed"
	case r.resuming:
		deadline := time.Now().Add(halfRestoredWait)
		for len(nstree.SubtreeProcs(nodes[0])) > 0 {
			if time.Now().After(deadline) {
				return what + ": processes run there; left alone"
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.RemoveRestored(nodes)
	return what + ": removed what was restored"
}
