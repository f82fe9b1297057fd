package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is what the test job says of itself on SIGUSR1 (a subset of
// e2e/testjob's report).
type Report struct {
	Pid          int    `json:"pid"`
	Children     []int  `json:"children"`
	Counter      int64  `json:"counter"`
	MemBytes     int    `json:"mem_bytes"`
	MemSHA       string `json:"mem_sha"`
	MemSHAAtInit string `json:"mem_sha_at_init"`
	Reports      int    `json:"reports"`
}

// job is a running workload in the source tree.
type job struct {
	w      Workload
	path   string // its container in the cr tree
	report string // the file it reports to
	first  Report // its report once ready
}

// readyTimeout bounds the job's start: filling and summing 4 GiB takes a
// while on two cores.
const readyTimeout = 3 * time.Minute

// startJob runs the workload in a new container of the source tree and
// waits until it has filled its memory and started its children.
func (e *env) startJob(ctx context.Context, w Workload) (*job, error) {
	j := &job{w: w, path: "/bench/" + w.Name, report: filepath.Join(e.dir, w.Name+".report.json")}
	// The node stays when the job ends, so that a job that died can
	// say why (cr logs).
	args := append([]string{"run", "--on-empty", "keep", j.path, "--", e.testjob, "--report", j.report}, w.Args()...)
	if _, _, err := e.crCmd(ctx, e.src, args...); err != nil {
		return nil, err
	}
	r, err := j.ask(ctx, readyTimeout, func() error { return e.signal(ctx, e.src, j.path) })
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, e.jobDiagnosis(j.path))
	}
	if r.MemBytes != w.MemMiB<<20 || len(r.Children) != w.Children {
		return nil, fmt.Errorf("job reports %d bytes and %d children, want %d and %d", r.MemBytes, len(r.Children), w.MemMiB<<20, w.Children)
	}
	j.first = r
	return j, nil
}

// jobDiagnosis is what cr knows of a job that failed: its entry in cr ls
// and the end of its log.
func (e *env) jobDiagnosis(path string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	if out, _, err := e.crCmd(ctx, e.src, "ls", "--json", path); err == nil {
		fmt.Fprintf(&b, "\n  cr ls: %s", strings.Join(strings.Fields(string(out)), " "))
	}
	if out, _, err := e.crCmd(ctx, e.src, "logs", path); err == nil && len(out) > 0 {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		fmt.Fprintf(&b, "\n  cr logs: %s", strings.Join(lines[max(0, len(lines)-5):], "\n    "))
	}
	return b.String()
}

// signal sends SIGUSR1 to the job of the container at path (its init
// forwards it).
func (e *env) signal(ctx context.Context, t *tree, path string) error {
	_, _, err := e.crCmd(ctx, t, "kill", "-s", "USR1", path)
	return err
}

// ask makes the job write a fresh report and returns it. The job ignores
// SIGUSR1 until it is ready, so the signal is repeated.
func (j *job) ask(ctx context.Context, timeout time.Duration, signal func() error) (Report, error) {
	_ = os.Remove(j.report)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := signal(); err != nil {
			return Report{}, fmt.Errorf("signal the job: %w", err)
		}
		// Summing 4 GiB takes seconds: wait longer between signals
		// for bigger jobs.
		wait := 500*time.Millisecond + time.Duration(j.w.MemMiB)*2*time.Millisecond
		for end := time.Now().Add(wait); time.Now().Before(end); {
			if b, err := os.ReadFile(j.report); err == nil {
				var r Report
				if json.Unmarshal(b, &r) == nil && r.Reports > 0 {
					return r, nil
				}
			}
			select {
			case <-ctx.Done():
				return Report{}, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return Report{}, fmt.Errorf("job %s did not report within %s", j.path, timeout)
}

// verify checks that a restored copy of the job is the job: same pid in
// its namespace, same children, memory unchanged since it was filled.
func (j *job) verify(r Report) error {
	switch {
	case r.MemSHAAtInit != j.first.MemSHAAtInit:
		return errors.New("restored job is not the original (different memory at start)")
	case r.MemSHA != r.MemSHAAtInit:
		return errors.New("restored job's memory differs from what it wrote")
	case r.Pid != j.first.Pid:
		return fmt.Errorf("restored job has pid %d, had %d", r.Pid, j.first.Pid)
	case !slices.Equal(r.Children, j.first.Children):
		return fmt.Errorf("restored job has children %v, had %v", r.Children, j.first.Children)
	case r.Counter < j.first.Counter:
		return fmt.Errorf("restored job's counter went back from %d to %d", j.first.Counter, r.Counter)
	}
	return nil
}

// psEntry is a line of cr ps --json.
type psEntry struct {
	HostPid int `json:"host_pid"`
	Pid     int `json:"pid"`
}

// initPid is the host pid of the container's init.
func (e *env) initPid(ctx context.Context, t *tree, path string) (int, error) {
	out, _, err := e.crCmd(ctx, t, "ps", "--json", path)
	if err != nil {
		return 0, err
	}
	var ps []psEntry
	if err := json.Unmarshal(out, &ps); err != nil {
		return 0, fmt.Errorf("read cr ps --json: %w", err)
	}
	for _, p := range ps {
		if p.Pid == 1 {
			return p.HostPid, nil
		}
	}
	return 0, fmt.Errorf("no init in %s", path)
}

// cgLeaf is the cgroup a process is frozen by: v2 when there is a v2
// hierarchy with a freezer, else the v1 freezer.
type cgLeaf struct {
	Abs  string // directory
	Rel  string // path inside the hierarchy
	Ctrl string // "" for v2, "freezer" for v1 (CRIU's --cgroup-root controller)
}

// freezerCgroup finds the freezer cgroup of a process.
func freezerCgroup(pid int) (cgLeaf, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return cgLeaf{}, err
	}
	v2, v1 := freezerMounts()
	return pickFreezer(string(b), v2, v1, func(p string) bool {
		_, err := os.Stat(p)
		return err == nil
	})
}

// pickFreezer chooses the freezer cgroup from a /proc/PID/cgroup text, the
// v2 mount and the v1 freezer mount ("" when absent).
func pickFreezer(procCgroup, v2Mount, v1Mount string, exists func(string) bool) (cgLeaf, error) {
	var v1Rel string
	sc := bufio.NewScanner(strings.NewReader(procCgroup))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" && v2Mount != "" {
			if abs := filepath.Join(v2Mount, f[2]); exists(filepath.Join(abs, "cgroup.freeze")) {
				return cgLeaf{Abs: abs, Rel: f[2]}, nil
			}
		}
		if slices.Contains(strings.Split(f[1], ","), "freezer") {
			v1Rel = f[2]
		}
	}
	if v1Rel != "" && v1Mount != "" {
		return cgLeaf{Abs: filepath.Join(v1Mount, v1Rel), Rel: v1Rel, Ctrl: "freezer"}, nil
	}
	return cgLeaf{}, errors.New("no freezer cgroup found for the job")
}

// freezerMounts finds the cgroup v2 mount and the v1 freezer mount.
func freezerMounts() (v2, v1 string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		mnt, fstype, opts, ok := parseMountinfo(sc.Text())
		switch {
		case !ok:
		case fstype == "cgroup2" && v2 == "":
			v2 = mnt
		case fstype == "cgroup" && slices.Contains(strings.Split(opts, ","), "freezer"):
			v1 = mnt
		}
	}
	return v2, v1
}

// childPids lists a process's children.
func childPids(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}
