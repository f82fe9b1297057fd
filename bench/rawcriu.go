package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"golang.org/x/sys/unix"
)

// RawResult is CRIU run by hand on the same job, with the options cr
// gives it, images in tmpfs.
type RawResult struct {
	DumpArgs        []string `json:"dump_args"`
	DumpWallSeconds float64  `json:"dump_wall_seconds"`
	// From CRIU's stats-dump.
	FreezingSeconds float64 `json:"freezing_seconds"`
	FrozenSeconds   float64 `json:"frozen_seconds"`
	MemdumpSeconds  float64 `json:"memdump_seconds"`
	MemwriteSeconds float64 `json:"memwrite_seconds"`
	PagesScanned    uint64  `json:"pages_scanned"`
	PagesWritten    uint64  `json:"pages_written"`
	ImageBytes      int64   `json:"image_bytes"` // every file CRIU wrote but its log
	PagesBytes      int64   `json:"pages_bytes"` // pages-*.img

	RestoreArgs        []string `json:"restore_args"`
	RestoreWallSeconds float64  `json:"restore_wall_seconds"`
	// From CRIU's stats-restore.
	RestoreSeconds float64 `json:"restore_seconds"`
	ForkingSeconds float64 `json:"forking_seconds"`
	PagesRestored  uint64  `json:"pages_restored"`
	Verified       bool    `json:"verified"`
}

// usec converts CRIU's microsecond statistics.
func usec(v uint32) float64 { return float64(v) / 1e6 }

// rawDump runs criu dump on the container's init the way cr's dump
// package does (freeze_cgroup on the container's own leaf, leave running,
// cgroups, file locks, log level 4), into dir.
func (e *env) rawDump(ctx context.Context, pid int, leaf cgLeaf, dir string) (*RawResult, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	args := []string{"dump", "-t", strconv.Itoa(pid), "-D", dir, "--leave-running",
		"--freeze-cgroup", leaf.Abs, "--manage-cgroups", "--file-locks", "-v4", "-o", "dump.log"}
	r := &RawResult{DumpArgs: args}
	_, wall, err := e.run(ctx, e.criu, args, nil)
	if err != nil {
		return nil, withLog(err, filepath.Join(dir, "dump.log"))
	}
	r.DumpWallSeconds = wall.Seconds()
	st, err := crit.GetDumpStats(dir)
	if err != nil {
		return nil, fmt.Errorf("read CRIU's dump statistics: %w", err)
	}
	r.FreezingSeconds, r.FrozenSeconds = usec(st.GetFreezingTime()), usec(st.GetFrozenTime())
	r.MemdumpSeconds, r.MemwriteSeconds = usec(st.GetMemdumpTime()), usec(st.GetMemwriteTime())
	r.PagesScanned, r.PagesWritten = st.GetPagesScanned(), st.GetPagesWritten()
	r.ImageBytes, r.PagesBytes = imageSizes(dir)
	return r, nil
}

// imageSizes sums a CRIU images directory: all files but logs, and the
// page images alone.
func imageSizes(dir string) (all, pages int64) {
	ents, _ := os.ReadDir(dir)
	for _, d := range ents {
		fi, err := d.Info()
		if err != nil || !fi.Mode().IsRegular() || strings.HasSuffix(d.Name(), ".log") {
			continue
		}
		all += fi.Size()
		if strings.HasPrefix(d.Name(), "pages-") {
			pages += fi.Size()
		}
	}
	return all, pages
}

// rawRestore restores the raw images beside the running original, the way
// cr's restore package does (cgroups in soft mode under a new cgroup root,
// file locks, log level 4), checks the copy is the job, and removes it.
func (e *env) rawRestore(ctx context.Context, j *job, dir string, leaf cgLeaf, r *RawResult) error {
	root := "/" + e.rawCg + "/" + j.w.Name + "/.tasks"
	pidfile := dir + ".pid"
	_ = os.Remove(pidfile)
	defer os.Remove(pidfile)
	args := []string{"restore", "-D", dir, "--restore-detached", "--manage-cgroups=soft",
		"--cgroup-root", leaf.Ctrl + ":" + root, "--file-locks", "-v4", "-o", "restore.log", "--pidfile", pidfile}
	r.RestoreArgs = args
	defer removeCgroupTree(e.rawCg) // kills the copy, removes its cgroups
	_, wall, err := e.run(ctx, e.criu, args, nil)
	if err != nil {
		return withLog(err, filepath.Join(dir, "restore.log"))
	}
	r.RestoreWallSeconds = wall.Seconds()
	if st, err := crit.GetRestoreStats(dir); err == nil {
		r.RestoreSeconds, r.ForkingSeconds = usec(st.GetRestoreTime()), usec(st.GetForkingTime())
		r.PagesRestored = st.GetPagesRestored()
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return fmt.Errorf("read CRIU's pidfile: %w", err)
	}
	initPid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("read CRIU's pidfile: %w", err)
	}
	// The copy: its init, the job, the job's children, all in the new cgroup.
	v2, v1 := freezerMounts()
	mnt := v2
	if leaf.Ctrl != "" {
		mnt = v1
	}
	if n := len(cgroupProcs(filepath.Join(mnt, root))); n != j.w.Processes()+1 {
		return fmt.Errorf("restored copy has %d processes in its cgroup, want %d", n, j.w.Processes()+1)
	}
	kids := childPids(initPid)
	if len(kids) != 1 {
		return fmt.Errorf("restored init %d has children %v, want the job alone", initPid, kids)
	}
	rep, err := j.ask(ctx, time.Minute, func() error { return unix.Kill(kids[0], unix.SIGUSR1) })
	if err != nil {
		return err
	}
	if err := j.verify(rep); err != nil {
		return err
	}
	r.Verified = true
	return nil
}

// withLog adds CRIU's error lines to a failed run.
func withLog(err error, log string) error {
	b, rerr := os.ReadFile(log)
	if rerr != nil {
		return err
	}
	var errs []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "Error (") && !strings.Contains(l, "RLIMIT_NOFILE") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) > 5 {
		errs = errs[len(errs)-5:]
	}
	return fmt.Errorf("%w\n  %s", err, strings.Join(errs, "\n  "))
}
