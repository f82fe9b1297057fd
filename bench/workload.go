package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// WorkloadResult is everything measured on one workload: the median of
// every number over the runs, and each run.
type WorkloadResult struct {
	Name      string   `json:"name"`
	MemMiB    int      `json:"mem_mib"`
	Processes int      `json:"processes"` // the job's, the container's init not counted
	Run                // the median of each number over Runs
	Runs      []*Run   `json:"runs"`
	Errors    []string `json:"errors,omitempty"`
	Warnings  []string `json:"warnings,omitempty"` // what went wrong and was retried
}

// Run is one pass over a workload: a fresh job, raw CRIU and cr on it,
// then its migration.
type Run struct {
	RawFirst     bool              `json:"raw_first"` // raw CRIU measured before cr (else after)
	Raw          *RawResult        `json:"raw_criu,omitempty"`
	Peer         *PeerResult       `json:"podman_like,omitempty"`
	Zstd         *ZstdResult       `json:"zstd,omitempty"`
	CheckpointLR *CheckpointResult `json:"cr_checkpoint_leave_running,omitempty"`
	Checkpoint   *CheckpointResult `json:"cr_checkpoint,omitempty"`
	Restore      *RestoreResult    `json:"cr_restore,omitempty"`
	// The same with --compress s2 (the default is zstd), after Restore.
	CheckpointS2 *CheckpointResult `json:"cr_checkpoint_s2,omitempty"`
	RestoreS2    *RestoreResult    `json:"cr_restore_s2,omitempty"`
	Stores       *StoresResult     `json:"cr_stores,omitempty"`
	Lazy         *MigrateResult    `json:"cr_migrate_lazy,omitempty"`
	Migrate      *MigrateResult    `json:"cr_migrate,omitempty"`
}

// crCheckpoint is cr checkpoint --json.
type crCheckpoint struct {
	FrozenSeconds    float64 `json:"frozen_seconds"`
	DumpSeconds      float64 `json:"dump_seconds"`
	WriteSeconds     float64 `json:"write_seconds"`
	PagesScanned     int64   `json:"pages_scanned"`
	PagesWritten     int64   `json:"pages_written"`
	RawBytes         int64   `json:"raw_bytes"`
	ImageBytes       int64   `json:"image_bytes"`
	CompressionRatio float64 `json:"compression_ratio"`
	ThroughputBps    float64 `json:"throughput_bytes_per_second"`
}

// crRestore is cr restore --json.
type crRestore struct {
	Pids           map[string]int `json:"init_pids"`
	ElapsedSeconds float64        `json:"elapsed_seconds"`
}

// crMigrate is cr migrate --json.
type crMigrate struct {
	DowntimeSeconds  float64 `json:"downtime_seconds"`
	TotalSeconds     float64 `json:"total_seconds"`
	DumpSeconds      float64 `json:"dump_seconds"`
	TransferSeconds  float64 `json:"transfer_seconds"`
	RestoreSeconds   float64 `json:"restore_seconds"`
	RawBytes         int64   `json:"raw_bytes"`
	BytesSent        int64   `json:"sent_bytes"`
	ArchiveBytes     int64   `json:"archive_bytes"`
	CompressionRatio float64 `json:"compression_ratio"`
	ThroughputBps    float64 `json:"throughput_bytes_per_second"`
	// --lazy: the memory that followed the running job.
	PagesSeconds float64 `json:"pages_seconds,omitempty"`
	PageBytes    int64   `json:"page_bytes,omitempty"`
}

// CheckpointResult is one cr checkpoint: the wall time around the command
// and what it reported, and the most its staging area and cr's own
// memory (VmHWM) held while it ran.
type CheckpointResult struct {
	WallSeconds      float64      `json:"wall_seconds"`
	CR               crCheckpoint `json:"cr"`
	PeakStagingBytes int64        `json:"peak_staging_bytes"`
	PeakRSSBytes     int64        `json:"peak_rss_bytes"`
}

// PeerResult is a Podman-like checkpoint and restore of the same job:
// criu dump into a directory (the raw dump), then tar | zstd -1 -T0 into
// a file; restore: zstd -d | tar x, then criu restore (the raw restore,
// from the extracted directory).
type PeerResult struct {
	ArchiveSeconds    float64 `json:"archive_seconds"`
	ArchiveBytes      int64   `json:"archive_bytes"`
	ExtractSeconds    float64 `json:"extract_seconds"`
	SendSeconds       float64 `json:"send_seconds"`       // the archive over the veth, A to B
	CheckpointSeconds float64 `json:"checkpoint_seconds"` // raw dump + archive
	RestoreSeconds    float64 `json:"restore_seconds"`    // extract + raw restore
	MigrateSeconds    float64 `json:"migrate_seconds"`    // raw dump + archive + send + extract + raw restore
}

// RestoreResult is one cr restore.
type RestoreResult struct {
	WallSeconds float64   `json:"wall_seconds"`
	CR          crRestore `json:"cr"`
	Verified    bool      `json:"verified"`
}

// MigrateResult is one cr migrate between the namespaces.
type MigrateResult struct {
	Available   bool      `json:"available"`
	Reason      string    `json:"reason,omitempty"` // why not available
	WallSeconds float64   `json:"wall_seconds"`
	CR          crMigrate `json:"cr"`
	// EndToEndMBps is the image's raw bytes over the downtime: how fast
	// the job's state moved while it was stopped.
	EndToEndMBps float64 `json:"end_to_end_mb_per_s"`
	// From cr serve's log: receiving (decompress, verify, write to its
	// staging area) and restoring, as the receiver saw them.
	ServeReceiveSeconds float64 `json:"serve_receive_seconds"`
	ServeRestoreSeconds float64 `json:"serve_restore_seconds"`
	Verified            bool    `json:"verified"`
}

// stepError names the step that failed.
type stepError struct {
	step string
	err  error
}

func (e *stepError) Error() string { return e.step + ": " + e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func step(name string, err error) error {
	if err == nil {
		return nil
	}
	return &stepError{name, err}
}

// measure runs the workload runs times, from the source network
// namespace, removing everything of it after each run. Raw CRIU goes
// first in odd runs and after cr in even ones, so that neither always
// finds the memory the other just freed.
func (e *env) measure(ctx context.Context, w Workload, runs int) *WorkloadResult {
	r := &WorkloadResult{Name: w.Name, MemMiB: w.MemMiB, Processes: w.Processes()}
	for i := range runs {
		if ctx.Err() != nil {
			break
		}
		run := &Run{RawFirst: i%2 == 0}
		logf(" run %d of %d (%s first)", i+1, runs, map[bool]string{true: "raw CRIU", false: "cr"}[run.RawFirst])
		warn := func(msg string) {
			logf("  warning: %s", msg)
			r.Warnings = append(r.Warnings, fmt.Sprintf("run %d: %s", i+1, msg))
		}
		err := inNetns(netnsPath(e.nsA), func() error { return e.measureIn(ctx, w, run, warn) })
		e.cleanWorkload(w)
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("run %d: %v", i+1, err))
			break
		}
		r.Runs = append(r.Runs, run)
	}
	if len(r.Runs) > 0 {
		r.Run = *medianRun(r.Runs)
	}
	return r
}

// measureIn is one run on a thread inside namespace A: the job, cr and
// CRIU all run there, as on the first of two hosts.
func (e *env) measureIn(ctx context.Context, w Workload, r *Run, warn func(string)) error {
	j, err := e.startJob(ctx, w)
	if err != nil && ctx.Err() == nil {
		// Starting the job is not what is measured: try once more, and
		// say so.
		warn(fmt.Sprintf("start the job: %v; starting it again", err))
		_, _, _ = e.crCmd(ctx, e.src, "kill", "/bench")
		j, err = e.startJob(ctx, w)
	}
	if err != nil {
		return step("start the job", err)
	}
	if r.RawFirst {
		err = e.measureRaw(ctx, j, r)
		if err == nil {
			err = e.measureCR(ctx, j, r)
		}
	} else {
		err = e.measureCR(ctx, j, r)
		if err == nil {
			err = e.measureRaw(ctx, j, r)
		}
	}
	if err != nil {
		return err
	}
	if err := e.measureStores(ctx, j, r); err != nil {
		return err
	}
	return e.measureMigrate(ctx, j, r)
}

// measureRaw dumps the job with CRIU to tmpfs, measures zstd on its pages,
// and restores a copy beside it.
func (e *env) measureRaw(ctx context.Context, j *job, r *Run) error {
	pid, err := e.initPid(ctx, e.src, j.path)
	if err != nil {
		return step("find the job", err)
	}
	leaf, err := freezerCgroup(pid)
	if err != nil {
		return step("find the job's cgroup", err)
	}
	rawDir := filepath.Join(e.dir, "raw-"+j.w.Name)
	defer os.RemoveAll(rawDir)
	if r.Raw, err = e.rawDump(ctx, pid, leaf, rawDir); err != nil {
		return step("raw criu dump", err)
	}
	logf("  raw criu dump: %s wall, frozen %s, %s", secs(r.Raw.DumpWallSeconds), secs(r.Raw.FrozenSeconds), human(r.Raw.ImageBytes))
	if r.Zstd, err = measureZstd(rawDir); err != nil {
		return step("zstd ceiling", err)
	}
	logf("  zstd on its pages: %.0f MB/s, %.2fx", r.Zstd.CompressMBps, r.Zstd.Ratio)
	// The Podman-like peer archives the raw dump, and the raw restore
	// runs from what it extracts.
	p := &PeerResult{}
	archive := rawDir + ".tar.zst"
	peerDir := rawDir + "-peer"
	defer os.Remove(archive)
	defer os.RemoveAll(peerDir)
	_, wall, err := e.run(ctx, "sh", []string{"-c", `tar -C "$1" -cf - . | zstd -1 -T0 -q -o "$2"`, "sh", rawDir, archive}, nil)
	if err != nil {
		return step("podman-like archive", err)
	}
	p.ArchiveSeconds = wall.Seconds()
	if fi, err := os.Stat(archive); err == nil {
		p.ArchiveBytes = fi.Size()
	}
	_ = os.RemoveAll(rawDir) // as a peer would not keep it
	// Its migration sends the archive over the veth (received into a
	// file, as a peer's receiver would), then extracts what arrived.
	recv := rawDir + "-recv.tar.zst"
	defer os.Remove(recv)
	send, err := sendFile(netnsPath(e.nsB), addrB, archive, recv)
	if err != nil {
		return step("podman-like send", err)
	}
	p.SendSeconds = send.Seconds()
	if err := os.MkdirAll(peerDir, 0o700); err != nil {
		return err
	}
	if _, wall, err = e.run(ctx, "sh", []string{"-c", `zstd -dc -q "$1" | tar -C "$2" -xf -`, "sh", recv, peerDir}, nil); err != nil {
		return step("podman-like extract", err)
	}
	p.ExtractSeconds = wall.Seconds()
	if err := e.rawRestore(ctx, j, peerDir, leaf, r.Raw); err != nil {
		return step("raw criu restore", err)
	}
	logf("  raw criu restore: %s wall (verified)", secs(r.Raw.RestoreWallSeconds))
	p.CheckpointSeconds = r.Raw.DumpWallSeconds + p.ArchiveSeconds
	p.RestoreSeconds = p.ExtractSeconds + r.Raw.RestoreWallSeconds
	p.MigrateSeconds = p.CheckpointSeconds + p.SendSeconds + p.RestoreSeconds
	r.Peer = p
	logf("  podman-like: checkpoint %s (archive %s, %s), restore %s (extract %s), migrate %s (send %s)", secs(p.CheckpointSeconds), secs(p.ArchiveSeconds),
		human(p.ArchiveBytes), secs(p.RestoreSeconds), secs(p.ExtractSeconds), secs(p.MigrateSeconds), secs(p.SendSeconds))
	return nil
}

// measureCR checkpoints the job with cr, leaving it running, then to a
// file (the job ends), and restores it from that file; then the same to a
// zstd file.
func (e *env) measureCR(ctx context.Context, j *job, r *Run) error {
	img := filepath.Join(e.dir, j.w.Name+"-lr.cr")
	var err error
	r.CheckpointLR, err = e.checkpoint(ctx, j, img, true)
	_ = os.Remove(img)
	if err != nil {
		return step("cr checkpoint --leave-running", err)
	}
	logf("  cr checkpoint --leave-running: %s wall, frozen %s", secs(r.CheckpointLR.WallSeconds), secs(r.CheckpointLR.CR.FrozenSeconds))
	img = filepath.Join(e.dir, j.w.Name+".cr")
	defer os.Remove(img)
	if r.Checkpoint, err = e.checkpoint(ctx, j, img, false); err != nil {
		return step("cr checkpoint", err)
	}
	logf("  cr checkpoint: %s wall, frozen %s, image %s", secs(r.Checkpoint.WallSeconds), secs(r.Checkpoint.CR.FrozenSeconds), human(r.Checkpoint.CR.ImageBytes))
	if r.Restore, err = e.restore(ctx, j, img); err != nil {
		return step("cr restore", err)
	}
	logf("  cr restore: %s wall (verified)", secs(r.Restore.WallSeconds))
	simg := filepath.Join(e.dir, j.w.Name+"-s2.cr")
	defer os.Remove(simg)
	if r.CheckpointS2, err = e.checkpoint(ctx, j, simg, false, "--compress", "s2"); err != nil {
		return step("cr checkpoint --compress s2", err)
	}
	logf("  cr checkpoint --compress s2: %s wall, image %s", secs(r.CheckpointS2.WallSeconds), human(r.CheckpointS2.CR.ImageBytes))
	if r.RestoreS2, err = e.restore(ctx, j, simg); err != nil {
		return step("cr restore of the s2 image", err)
	}
	logf("  cr restore (s2): %s wall (verified)", secs(r.RestoreS2.WallSeconds))
	return nil
}

// measureMigrate migrates with --lazy (if refused, the job stays), then
// stop-and-copy.
func (e *env) measureMigrate(ctx context.Context, j *job, r *Run) error {
	var err error
	if r.Lazy, err = e.migrate(ctx, j, true); err != nil {
		return step("cr migrate --lazy", err)
	}
	if r.Lazy.Available {
		logf("  cr migrate --lazy: downtime %s", secs(r.Lazy.CR.DowntimeSeconds))
		// The job now runs at the destination: start it over.
		_, _, _ = e.crCmd(ctx, e.dst, "kill", "/bench")
		_, _, _ = e.crCmd(ctx, e.src, "kill", "/bench")
		if j, err = e.startJob(ctx, j.w); err != nil {
			return step("start the job again", err)
		}
	} else {
		logf("  cr migrate --lazy: not available")
	}
	if r.Migrate, err = e.migrate(ctx, j, false); err != nil {
		return step("cr migrate", err)
	}
	logf("  cr migrate: downtime %s, %s wall, %.0f MB/s end to end", secs(r.Migrate.CR.DowntimeSeconds), secs(r.Migrate.WallSeconds), r.Migrate.EndToEndMBps)
	return nil
}

// checkpoint runs cr checkpoint of the job to img.
func (e *env) checkpoint(ctx context.Context, j *job, img string, leaveRunning bool, extra ...string) (*CheckpointResult, error) {
	args := append([]string{"checkpoint", "--json", "-o", img}, extra...)
	if leaveRunning {
		args = append(args, "--leave-running")
	}
	stop := make(chan struct{})
	peak := peakDirBytes(filepath.Join(e.dir, e.src.Name, "staging"), stop)
	out, wall, err := e.crCmd(ctx, e.src, append(args, j.path)...)
	close(stop)
	staged := <-peak
	if err != nil {
		return nil, err
	}
	res := &CheckpointResult{WallSeconds: wall.Seconds(), PeakStagingBytes: staged, PeakRSSBytes: e.lastMaxRSS}
	if err := json.Unmarshal(out, &res.CR); err != nil {
		return nil, fmt.Errorf("read cr checkpoint --json: %w", err)
	}
	return res, nil
}

// restore runs cr restore of img and checks the job is back.
func (e *env) restore(ctx context.Context, j *job, img string) (*RestoreResult, error) {
	out, wall, err := e.crCmd(ctx, e.src, "restore", "--json", img)
	if err != nil {
		return nil, err
	}
	res := &RestoreResult{WallSeconds: wall.Seconds()}
	if err := json.Unmarshal(out, &res.CR); err != nil {
		return nil, fmt.Errorf("read cr restore --json: %w", err)
	}
	rep, err := j.ask(ctx, time.Minute, func() error { return e.signal(ctx, e.src, j.path) })
	if err != nil {
		return nil, err
	}
	if err := j.verify(rep); err != nil {
		return nil, err
	}
	res.Verified = true
	return res, nil
}

// migrate moves the job to cr serve in namespace B, checks it runs there,
// and kills it there. A refused --lazy is a result, not an error.
func (e *env) migrate(ctx context.Context, j *job, lazy bool) (*MigrateResult, error) {
	args := []string{"migrate", "--json", "--token-file", e.token}
	if lazy {
		args = append(args, "--lazy")
	}
	out, wall, err := e.crCmd(ctx, e.src, append(args, j.path, addrB+":"+servePort)...)
	var ce *cmdError
	if err != nil && lazy && errors.As(err, &ce) && ce.Code > 0 {
		return &MigrateResult{Reason: ce.firstLine()}, nil
	}
	if err != nil {
		return nil, err
	}
	res := &MigrateResult{Available: true, WallSeconds: wall.Seconds()}
	if err := json.Unmarshal(out, &res.CR); err != nil {
		return nil, fmt.Errorf("read cr migrate --json: %w", err)
	}
	if res.CR.DowntimeSeconds > 0 {
		res.EndToEndMBps = float64(res.CR.RawBytes) / 1e6 / res.CR.DowntimeSeconds
	}
	if b, err := os.ReadFile(e.serveLog); err == nil {
		res.ServeReceiveSeconds, res.ServeRestoreSeconds = serveTimes(string(b), j.path)
	}
	rep, err := j.ask(ctx, time.Minute, func() error { return e.signal(ctx, e.dst, j.path) })
	if err != nil {
		return nil, fmt.Errorf("at the destination: %w", err)
	}
	if err := j.verify(rep); err != nil {
		return nil, fmt.Errorf("at the destination: %w", err)
	}
	res.Verified = true
	if _, _, err := e.crCmd(ctx, e.dst, "kill", j.path); err != nil {
		return nil, fmt.Errorf("kill at the destination: %w", err)
	}
	return res, nil
}

// serveDone matches cr serve's line for a finished migration, lazy or not.
var serveDone = regexp.MustCompile(` (\S+): done(?: \(lazy\))?: .* received in (\S+), restored \d+ containers? in ([^\s,]+)(?:,|$)`)

// serveTimes reads the receive and restore times of the last migration of
// path from cr serve's log.
func serveTimes(log, path string) (receive, restore float64) {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		m := serveDone.FindStringSubmatch(lines[i])
		if m == nil || m[1] != path {
			continue
		}
		r, err1 := time.ParseDuration(m[2])
		s, err2 := time.ParseDuration(m[3])
		if err1 != nil || err2 != nil {
			return 0, 0
		}
		return r.Seconds(), s.Seconds()
	}
	return 0, 0
}

// cleanWorkload removes the workload's containers from both trees, any
// raw restored copy, and its files.
func (e *env) cleanWorkload(w Workload) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, t := range []*tree{e.src, e.dst} {
		_, _, _ = e.crCmd(ctx, t, "kill", "/bench")
	}
	removeCgroupTree(e.rawCg)
	for _, p := range []string{"raw-" + w.Name, w.Name + ".cr", w.Name + "-lr.cr", w.Name + ".report.json", "store-" + w.Name} {
		_ = os.RemoveAll(filepath.Join(e.dir, p))
	}
}

// secs formats seconds for progress lines and tables.
func secs(s float64) string {
	switch {
	case s == 0:
		return "-"
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	default:
		return fmt.Sprintf("%.2f s", s)
	}
}

// human formats a byte count.
func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
