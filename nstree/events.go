package nstree

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/limits"
)

// Journal is the tree's events journal, in its state directory.
func (t *Tree) Journal() events.Journal { return events.Journal{Dir: t.StateDir} }

// Record appends ev to the journal, best effort: an event that cannot be
// recorded never fails the operation that caused it.
func (t *Tree) Record(ev events.Event) { _ = t.Journal().Append(ev) }

// RecordSubtree records an event of kind typ for n and every node below
// it (an operation on a subtree, such as a freeze or a checkpoint, happens
// to each of its containers), with what set adds.
func (t *Tree) RecordSubtree(n *Node, typ string, set func(*events.Event)) {
	now := time.Now()
	n.Walk(func(m *Node) {
		ev := events.Event{Time: now, Type: typ, Path: m.Path, ID: m.ID}
		if set != nil {
			set(&ev)
		}
		t.Record(ev)
	})
}

// RecordPaths is RecordSubtree for containers known by their host paths
// (a restore's), looked up in the tree as it is now.
func (t *Tree) RecordPaths(paths []string, typ string, set func(*events.Event)) {
	f, err := t.Load()
	if err != nil {
		return
	}
	now := time.Now()
	for _, p := range paths {
		ev := events.Event{Time: now, Type: typ, Path: p}
		if n, ok := f.ByPath[p]; ok {
			ev.ID = n.ID
		}
		if set != nil {
			set(&ev)
		}
		t.Record(ev)
	}
}

// pathOf is the current host path of the node id, or "".
func (t *Tree) pathOf(id string) string {
	f, err := t.Load()
	if err != nil {
		return ""
	}
	if n, ok := f.ByID[id]; ok {
		return n.Path
	}
	return ""
}

// LimitPoll is how often a container init reads its node's limit-hit
// counters (and once more when the job ends).
const LimitPoll = 2 * time.Second

// limitWatch is the init's view of its node's limit-hit counters: what it
// has recorded so far, for which node (a restore makes new cgroups, whose
// counters start again at zero).
type limitWatch struct {
	mu     sync.Mutex
	key    string
	seen   limits.Counters
	layout limits.Layout // found again for each node: a migration may bring the init to a host of another layout
}

// checkLimits records, as events, the limit hits of the init's node since
// it last looked.
func (in *initProc) checkLimits() {
	in.mu.Lock()
	t, id, err := in.node()
	info, ns := in.info, in.ns
	in.mu.Unlock()
	if err != nil {
		return
	}
	w := &in.limits
	w.mu.Lock()
	defer w.mu.Unlock()
	if key := id + " " + ns + " " + info.Leaf; key != w.key {
		w.key, w.seen, w.layout = key, limits.Counters{}, limits.Layout{}
		if h, err := freeze.Detect(); err == nil {
			w.layout, _ = limits.Detect(h)
		}
	}
	leaf := strings.TrimPrefix(info.Leaf, "/")
	lay := w.layout
	var c limits.Counters
	if _, err := os.Stat(filepath.Join(lay.Base, leaf)); err == nil {
		c = lay.Counters(path.Dir(leaf), leaf)
	} else if in.cfg.Mount {
		// Inside its own mount namespace the cgroup mounts show only the
		// container's leaf, at their roots: its own counters, not the
		// node's (memory_max and memory_high are not seen).
		c = lay.Counters("", ".")
	}
	var p string
	for _, d := range []struct {
		typ       string
		now, seen *int64
	}{
		{events.MemoryHigh, &c.MemoryHigh, &w.seen.MemoryHigh},
		{events.MemoryMax, &c.MemoryMax, &w.seen.MemoryMax},
		{events.OOMKill, &c.OOMKill, &w.seen.OOMKill},
		{events.PidsMax, &c.PidsMax, &w.seen.PidsMax},
	} {
		if *d.now <= *d.seen {
			continue
		}
		if p == "" {
			p = t.pathOf(id)
		}
		t.Record(events.Event{Type: d.typ, Path: p, ID: id, Count: *d.now - *d.seen})
		*d.seen = *d.now
	}
}

// watchLimits checks the limits every LimitPoll until stop is closed.
func (in *initProc) watchLimits(stop <-chan struct{}) {
	tick := time.NewTicker(LimitPoll)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			in.checkLimits()
		}
	}
}

// recordExit records the job's exit: its status, and the signal that
// killed it, if one did.
func (in *initProc) recordExit(code int) {
	in.mu.Lock()
	t, id, err := in.node()
	in.mu.Unlock()
	if err != nil {
		return
	}
	ev := events.Event{Type: events.Exited, Path: t.pathOf(id), ID: id, ExitCode: &code}
	if in.jobSignal != 0 {
		ev.Signal = unix.SignalName(in.jobSignal)
	}
	t.Record(ev)
}

// EmptyExecLog is the file, in the state directory, that the output of
// the --on-empty-exec commands goes to; it is rotated to .1 at 1 MiB.
const EmptyExecLog = "on-empty-exec.log"

// EmptyExecTimeout is how long the init waits for the --on-empty-exec
// command before it kills it (the command ends with the init, pid 1 of
// the container's pid namespace).
const EmptyExecTimeout = 60 * time.Second

// runEmptyExec runs the container's --on-empty-exec command once, as
// `/bin/sh -c CMD cr-on-empty-exec PATH STATUS`, with CR_PATH, CR_ID,
// CR_EXIT_STATUS and CR_ON_EMPTY in its environment and its output
// appended to the state directory's EmptyExecLog, and records its exit.
func runEmptyExec(t *Tree, c *Config, p string, code int) {
	logPath := filepath.Join(t.StateDir, EmptyExecLog)
	if st, err := os.Stat(logPath); err == nil && st.Size() >= 1<<20 {
		_ = os.Rename(logPath, logPath+".1")
	}
	out, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	defer out.Close()
	fmt.Fprintf(out, "%s %s: on-empty-exec: %s\n", time.Now().UTC().Format(time.RFC3339Nano), p, c.OnEmptyExec)
	ctx, cancel := context.WithTimeout(context.Background(), EmptyExecTimeout)
	defer cancel()
	status := strconv.Itoa(code)
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", c.OnEmptyExec, "cr-on-empty-exec", p, status)
	cmd.Env = append(os.Environ(), "CR_PATH="+p, "CR_ID="+c.ID, "CR_EXIT_STATUS="+status, "CR_ON_EMPTY="+c.OnEmpty)
	cmd.Dir, cmd.Stdout, cmd.Stderr = "/", out, out
	err = cmd.Run()
	rc := -1
	if cmd.ProcessState != nil {
		rc = cmd.ProcessState.ExitCode()
	}
	if err != nil && rc < 0 {
		fmt.Fprintf(out, "%s %s: on-empty-exec: %v\n", time.Now().UTC().Format(time.RFC3339Nano), p, err)
	}
	t.Record(events.Event{Type: events.EmptyExec, Path: p, ID: c.ID, ExitCode: &rc})
}
