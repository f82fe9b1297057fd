package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"
)

// Results are one run of the bench: results.json.
type Results struct {
	Started   string            `json:"started"`
	Seconds   float64           `json:"seconds"`
	Quick     bool              `json:"quick"`
	Runs      int               `json:"runs"` // per workload; the workload's numbers are medians
	Host      Host              `json:"host"`
	Ceilings  Ceilings          `json:"ceilings"`
	Workloads []*WorkloadResult `json:"workloads"`
	Targets   []Target          `json:"targets"`
}

// Host describes the machine and the software measured.
type Host struct {
	CPU      string `json:"cpu"`
	Cores    int    `json:"cores"`
	MemBytes int64  `json:"mem_bytes"`
	Kernel   string `json:"kernel"`
	CRIU     string `json:"criu"`
	CR       string `json:"cr"`
	Go       string `json:"go"`
	WorkDir  string `json:"work_dir"`
	Tmpfs    bool   `json:"work_dir_is_tmpfs"`
}

func hostInfo(ctx context.Context, e *env) Host {
	h := Host{Cores: runtime.NumCPU(), Go: runtime.Version(), WorkDir: e.dir, Tmpfs: e.dirTmpfs}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		h.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	h.CPU = procField("/proc/cpuinfo", "model name")
	if kb, err := strconv.ParseInt(strings.TrimSuffix(procField("/proc/meminfo", "MemTotal"), " kB"), 10, 64); err == nil {
		h.MemBytes = kb << 10
	}
	if out, _, err := e.run(ctx, e.criu, []string{"--version"}, nil); err == nil {
		h.CRIU = strings.TrimPrefix(firstLine(string(out)), "Version: ")
	}
	if out, _, err := e.run(ctx, e.cr, []string{"--version"}, nil); err == nil {
		h.CR = strings.TrimPrefix(firstLine(string(out)), "cr version ")
	}
	return h
}

// procField reads "key : value" from a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Target statuses.
const (
	Pass = "PASS"
	Miss = "MISS"
	NA   = "N/A" // the workload it needs was not run, or failed
)

// Target is one tracked goal of the issue, evaluated on one workload.
type Target struct {
	ID       string  `json:"id"`
	Goal     string  `json:"goal"`
	Workload string  `json:"workload"`
	Value    float64 `json:"value"`
	Limit    float64 `json:"limit"`
	AtMost   bool    `json:"at_most"` // Value must be <= Limit; else >=
	Unit     string  `json:"unit"`    // "x" (a ratio), "s", "of ceiling"
	Status   string  `json:"status"`
	Detail   string  `json:"detail"`
}

func (t *Target) judge() {
	switch {
	case t.Status != "":
	case t.AtMost && t.Value <= t.Limit, !t.AtMost && t.Value >= t.Limit:
		t.Status = Pass
	default:
		t.Status = Miss
	}
}

// Miss says by how much a missed target is missed.
func (t Target) Miss() string {
	if t.Status != Miss || t.Value == 0 || t.Limit == 0 {
		return ""
	}
	pct := func(p float64) string {
		if p < 10 {
			return fmt.Sprintf("%.1f%%", p)
		}
		return fmt.Sprintf("%.0f%%", p)
	}
	if t.AtMost {
		return pct((t.Value/t.Limit-1)*100) + " over"
	}
	return pct((1-t.Value/t.Limit)*100) + " short"
}

func (t Target) valueString() string {
	if t.Status == NA || (t.Status == Miss && t.Value == 0) {
		return "-"
	}
	v := formatUnit(t.Value, t.Unit)
	if t.Unit == "x" && v == formatUnit(t.Limit, t.Unit) {
		v = fmt.Sprintf("%.3fx", t.Value) // a MISS by 0.3% must not read as the limit
	}
	return v
}

func formatUnit(v float64, unit string) string {
	switch unit {
	case "s":
		return secs(v)
	case "of ceiling":
		return fmt.Sprintf("%.0f%%", v*100)
	default:
		return fmt.Sprintf("%.2fx", v)
	}
}

// evaluateTargets checks every target of the issue against the results.
func evaluateTargets(res *Results) []Target {
	var ts []Target
	add := func(t Target) {
		t.judge()
		ts = append(ts, t)
	}
	byName := map[string]*WorkloadResult{}
	for _, w := range res.Workloads {
		byName[w.Name] = w
	}
	for _, w := range res.Workloads {
		if w.Raw != nil && w.CheckpointLR != nil && w.Raw.FrozenSeconds > 0 {
			add(Target{ID: "frozen", Goal: "cr frozen (checkpoint --leave-running) <= 1.1x CRIU's frozen_time", Workload: w.Name,
				Value: w.CheckpointLR.CR.FrozenSeconds / w.Raw.FrozenSeconds, Limit: 1.1, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, CRIU %s", secs(w.CheckpointLR.CR.FrozenSeconds), secs(w.Raw.FrozenSeconds))})
		}
		if w.Raw != nil && w.Checkpoint != nil && w.Raw.DumpWallSeconds > 0 {
			add(Target{ID: "checkpoint-wall", Goal: "cr checkpoint to a compressed file <= 1.25x criu dump to tmpfs (wall)", Workload: w.Name,
				Value: w.Checkpoint.WallSeconds / w.Raw.DumpWallSeconds, Limit: 1.25, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, criu %s", secs(w.Checkpoint.WallSeconds), secs(w.Raw.DumpWallSeconds))})
		}
		// zstd is the default codec: w.Checkpoint.
		if ck, z := w.Checkpoint, w.Zstd; w.Raw != nil && ck != nil && z != nil && z.CompressMBps > 0 {
			alone := float64(z.InputBytes) / 1e6 / z.CompressMBps
			slower := max(w.Raw.DumpWallSeconds, alone)
			add(Target{ID: "checkpoint-zstd", Goal: "cr checkpoint --compress zstd <= 1.1x the slower of criu dump and zstd alone on the pages (wall)", Workload: w.Name,
				Value: ck.WallSeconds / slower, Limit: 1.1, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, criu %s, zstd alone %s", secs(ck.WallSeconds), secs(w.Raw.DumpWallSeconds), secs(alone))})
		}
		if w.Raw != nil && w.Restore != nil && w.Raw.RestoreWallSeconds > 0 {
			add(Target{ID: "restore-wall", Goal: "cr restore <= 1.15x criu restore (wall)", Workload: w.Name,
				Value: w.Restore.WallSeconds / w.Raw.RestoreWallSeconds, Limit: 1.15, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, criu %s", secs(w.Restore.WallSeconds), secs(w.Raw.RestoreWallSeconds))})
		}
		if w.MemMiB > 0 && w.Raw != nil && w.Checkpoint != nil && w.Raw.ImageBytes > 0 {
			add(Target{ID: "image-size", Goal: "cr image <= 1/4 of CRIU's images", Workload: w.Name,
				Value: float64(w.Checkpoint.CR.ImageBytes) / float64(w.Raw.ImageBytes), Limit: 0.25, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, CRIU %s", human(w.Checkpoint.CR.ImageBytes), human(w.Raw.ImageBytes))})
		}
		if p := w.Peer; p != nil && w.Checkpoint != nil && p.CheckpointSeconds > 0 {
			add(Target{ID: "peer-checkpoint", Goal: "cr checkpoint <= 0.5x the Podman-like checkpoint (criu dump; tar | zstd -1 -T0)", Workload: w.Name,
				Value: w.Checkpoint.WallSeconds / p.CheckpointSeconds, Limit: 0.5, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, peer %s", secs(w.Checkpoint.WallSeconds), secs(p.CheckpointSeconds))})
		}
		if p := w.Peer; p != nil && w.Restore != nil && p.RestoreSeconds > 0 {
			add(Target{ID: "peer-restore", Goal: "cr restore <= 0.5x the Podman-like restore (zstd -d | tar x; criu restore)", Workload: w.Name,
				Value: w.Restore.WallSeconds / p.RestoreSeconds, Limit: 0.5, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, peer %s", secs(w.Restore.WallSeconds), secs(p.RestoreSeconds))})
		}
		if p := w.Peer; p != nil && w.Migrate != nil && w.Migrate.Available && p.MigrateSeconds > 0 {
			add(Target{ID: "peer-migrate", Goal: "cr migrate downtime <= 0.5x the Podman-like migration (dump, archive, send, extract, restore)", Workload: w.Name,
				Value: w.Migrate.CR.DowntimeSeconds / p.MigrateSeconds, Limit: 0.5, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, peer %s", secs(w.Migrate.CR.DowntimeSeconds), secs(p.MigrateSeconds))})
		}
		if p := w.Peer; w.MemMiB > 0 && p != nil && w.Checkpoint != nil && p.ArchiveBytes > 0 {
			add(Target{ID: "image-vs-zstd", Goal: "cr image within 5% of zstd -1 of the same dump", Workload: w.Name,
				Value: float64(w.Checkpoint.CR.ImageBytes) / float64(p.ArchiveBytes), Limit: 1.05, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("cr %s, tar | zstd -1 %s", human(w.Checkpoint.CR.ImageBytes), human(p.ArchiveBytes))})
		}
		if ck := w.Checkpoint; w.MemMiB > 0 && ck != nil && ck.PeakStagingBytes > 0 {
			add(Target{ID: "extra-space", Goal: "peak staging while checkpointing <= the image + 64 MiB", Workload: w.Name,
				Value: float64(ck.PeakStagingBytes) / float64(ck.CR.ImageBytes+64<<20), Limit: 1, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("staging peak %s, image %s; peak RSS of cr %s", human(ck.PeakStagingBytes), human(ck.CR.ImageBytes), human(ck.PeakRSSBytes))})
		}
		if ck := w.Checkpoint; w.MemMiB > 0 && ck != nil && ck.PeakRSSBytes > 0 {
			add(Target{ID: "extra-space-rss", Goal: "peak staging + cr's peak RSS while checkpointing <= the image + 64 MiB", Workload: w.Name,
				Value: float64(ck.PeakStagingBytes+ck.PeakRSSBytes) / float64(ck.CR.ImageBytes+64<<20), Limit: 1, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("staging peak %s + RSS %s, image %s", human(ck.PeakStagingBytes), human(ck.PeakRSSBytes), human(ck.CR.ImageBytes))})
		}
		if w.MemMiB > 0 && w.Raw != nil && w.Migrate != nil && w.Migrate.Available && w.Raw.DumpWallSeconds+w.Raw.RestoreWallSeconds > 0 {
			raw := w.Raw.DumpWallSeconds + w.Raw.RestoreWallSeconds
			add(Target{ID: "migrate-downtime", Goal: "stop-and-copy downtime <= 1.2x criu dump + criu restore", Workload: w.Name,
				Value: w.Migrate.CR.DowntimeSeconds / raw, Limit: 1.2, AtMost: true, Unit: "x",
				Detail: fmt.Sprintf("downtime %s, criu %s", secs(w.Migrate.CR.DowntimeSeconds), secs(raw))})
		}
		if w.MemMiB > 0 && w.Migrate != nil && w.Migrate.Available {
			name, lowest := lowestCeiling(res.Ceilings, w.Zstd)
			add(Target{ID: "migrate-throughput", Goal: "stop-and-copy migration >= 60% of the lowest ceiling", Workload: w.Name,
				Value: w.Migrate.EndToEndMBps / lowest, Limit: 0.6, Unit: "of ceiling",
				Detail: fmt.Sprintf("%.0f MB/s (raw bytes over downtime); lowest ceiling %s %.0f MB/s", w.Migrate.EndToEndMBps, name, lowest)})
		}
	}

	// One-workload targets.
	trivial := Target{ID: "trivial", Goal: "trivial job: cr checkpoint + cr restore < 150 ms", Workload: "trivial", Limit: 0.150, AtMost: true, Unit: "s"}
	if w := byName["trivial"]; w != nil && w.Checkpoint != nil && w.Restore != nil {
		trivial.Value = w.Checkpoint.WallSeconds + w.Restore.WallSeconds
		trivial.Detail = fmt.Sprintf("checkpoint %s + restore %s", secs(w.Checkpoint.WallSeconds), secs(w.Restore.WallSeconds))
	} else {
		trivial.Status, trivial.Detail = NA, "workload not measured"
	}
	add(trivial)

	lazy1 := Target{ID: "lazy-downtime", Goal: "--lazy migration downtime, 1 GiB < 0.5 s", Workload: "mem-1G", Limit: 0.5, AtMost: true, Unit: "s"}
	lazyScale := Target{ID: "lazy-scaling", Goal: "--lazy downtime, 1 GiB <= 1.5x 256 MiB", Workload: "mem-1G", Limit: 1.5, AtMost: true, Unit: "x"}
	g, q := byName["mem-1G"], byName["mem-256M"]
	switch {
	case g == nil || g.Lazy == nil:
		lazy1.Status, lazy1.Detail = NA, "workload not measured"
		lazyScale.Status, lazyScale.Detail = NA, "workload not measured"
	case !g.Lazy.Available:
		lazy1.Status, lazy1.Detail = Miss, "--lazy not available: "+g.Lazy.Reason
		lazyScale.Status, lazyScale.Detail = Miss, lazy1.Detail
	default:
		lazy1.Value = g.Lazy.CR.DowntimeSeconds
		lazy1.Detail = "downtime " + secs(lazy1.Value)
		switch {
		case q == nil || q.Lazy == nil:
			lazyScale.Status, lazyScale.Detail = NA, "mem-256M not measured"
		case !q.Lazy.Available || q.Lazy.CR.DowntimeSeconds == 0:
			lazyScale.Status, lazyScale.Detail = Miss, "--lazy not available for mem-256M: "+q.Lazy.Reason
		default:
			lazyScale.Value = g.Lazy.CR.DowntimeSeconds / q.Lazy.CR.DowntimeSeconds
			lazyScale.Detail = fmt.Sprintf("1 GiB %s, 256 MiB %s", secs(g.Lazy.CR.DowntimeSeconds), secs(q.Lazy.CR.DowntimeSeconds))
		}
	}
	add(lazy1)
	add(lazyScale)
	return ts
}

// lowestCeiling is the slowest of the ceilings for a workload:
// tmpfs writes, TCP (loopback and veth), zstd on its data.
func lowestCeiling(c Ceilings, z *ZstdResult) (string, float64) {
	name, v := "tmpfs write", c.TmpfsWriteMBps
	try := func(n string, x float64) {
		if x > 0 && (v == 0 || x < v) {
			name, v = n, x
		}
	}
	try("TCP loopback", c.TCPLoopbackMBps)
	try("TCP veth", c.TCPVethMBps)
	if z != nil {
		try("zstd", z.CompressMBps)
	}
	return name, v
}

// writeTables prints the run as aligned tables.
func writeTables(out io.Writer, res *Results) {
	h := res.Host
	fmt.Fprintf(out, "cr %s vs CRIU %s on %s (%d cores, %s), kernel %s; %s in all\n",
		h.CR, h.CRIU, h.CPU, h.Cores, human(h.MemBytes), h.Kernel, secs(res.Seconds))
	fmt.Fprintf(out, "Every workload number is the median of its runs (%d; %d for %s; spread below); ceilings are the best of %d tries.\n\n",
		res.Runs, runsFor(bigWorkload, res.Runs), bigWorkload, tries)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	c := res.Ceilings
	fmt.Fprintln(tw, "CEILING (this run, MB = 10^6 B)\tMB/s")
	fmt.Fprintf(tw, "tmpfs write\t%.0f\n", c.TmpfsWriteMBps)
	fmt.Fprintf(tw, "TCP loopback\t%.0f\n", c.TCPLoopbackMBps)
	fmt.Fprintf(tw, "TCP over the veth (netns A -> B)\t%.0f\n", c.TCPVethMBps)
	fmt.Fprintf(tw, "TLS 1.3 over the veth (info)\t%.0f\n", c.TLSVethMBps)
	fmt.Fprintf(tw, "sha256, one core (info)\t%.0f\n", c.SHA256MBps)
	fmt.Fprintf(tw, "first touch of 4 GiB of new memory (info)\t%.0f\n", c.FreshMemMBps)
	tw.Flush()

	fmt.Fprintln(out, "\nZSTD ON THE WORKLOAD'S PAGES (SpeedFastest; compress on all cores, decompress on one, as cr) | S2 for comparison (info)")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tPAGES\tRATIO\tCOMPRESS MB/s\tDECOMPRESS MB/s\t|\tS2 RATIO\tS2 MB/s\t")
	for _, w := range res.Workloads {
		if z := w.Zstd; z != nil {
			fmt.Fprintf(tw, "%s\t%s\t%.2fx\t%.0f\t%.0f\t|\t%.2fx\t%.0f\t\n", w.Name, human(z.InputBytes), z.Ratio, z.CompressMBps, z.DecompressMBps, z.S2Ratio, z.S2CompressMBps)
		}
	}
	tw.Flush()

	fmt.Fprintln(out, "\nCHECKPOINT: raw criu dump (to tmpfs) | cr checkpoint --leave-running | cr checkpoint (to a file, the default codec; the job ends)")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tCRIU IMAGE\tDUMP\tFROZEN\t|\tWALL\tFROZEN\t|\tWALL\tFROZEN\tDUMP\tWRITE\tIMAGE\tvs CRIU\tMB/s\t")
	for _, w := range res.Workloads {
		r, lr, ck := w.Raw, w.CheckpointLR, w.Checkpoint
		row := []string{w.Name}
		if r != nil {
			row = append(row, human(r.ImageBytes), secs(r.DumpWallSeconds), secs(r.FrozenSeconds))
		} else {
			row = append(row, "-", "-", "-")
		}
		row = append(row, "|")
		if lr != nil {
			row = append(row, secs(lr.WallSeconds), secs(lr.CR.FrozenSeconds))
		} else {
			row = append(row, "-", "-")
		}
		row = append(row, "|")
		if ck != nil {
			vs := "-"
			if r != nil && r.ImageBytes > 0 {
				vs = fmt.Sprintf("%.2f", float64(ck.CR.ImageBytes)/float64(r.ImageBytes))
			}
			row = append(row, secs(ck.WallSeconds), secs(ck.CR.FrozenSeconds), secs(ck.CR.DumpSeconds), secs(ck.CR.WriteSeconds),
				human(ck.CR.ImageBytes), vs, fmt.Sprintf("%.0f", float64(ck.CR.RawBytes)/1e6/ck.WallSeconds))
		} else {
			row = append(row, "-", "-", "-", "-", "-", "-", "-")
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()

	fmt.Fprintln(out, "\nCODECS: cr checkpoint to a file with the default (zstd) | with --compress s2 | zstd alone on the pages; cr restore of each")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tZSTD WALL\tIMAGE\tRSS\tRESTORE\t|\tS2 WALL\tIMAGE\tRSS\tRESTORE\t|\tZSTD ALONE\t")
	for _, w := range res.Workloads {
		row := []string{w.Name}
		for _, p := range []struct {
			ck *CheckpointResult
			rs *RestoreResult
		}{{w.Checkpoint, w.Restore}, {w.CheckpointS2, w.RestoreS2}} {
			if p.ck != nil {
				row = append(row, secs(p.ck.WallSeconds), human(p.ck.CR.ImageBytes), human(p.ck.PeakRSSBytes))
			} else {
				row = append(row, "-", "-", "-")
			}
			if p.rs != nil {
				row = append(row, secs(p.rs.WallSeconds))
			} else {
				row = append(row, "-")
			}
			row = append(row, "|")
		}
		if z := w.Zstd; z != nil && z.CompressMBps > 0 {
			row = append(row, secs(float64(z.InputBytes)/1e6/z.CompressMBps))
		} else {
			row = append(row, "-")
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()

	fmt.Fprintln(out, "\nSPACE: what cr checkpoint (to a file) held beside the image | PODMAN-LIKE PEER: criu dump to a dir, tar | zstd -1 -T0; zstd -d | tar x, criu restore")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tPEAK STAGING\tcr PEAK RSS\tIMAGE\t|\tCHECKPOINT\tARCHIVE\tRESTORE\tEXTRACT\tMIGRATE\tcr/peer ckpt\tcr/peer rst\tcr/peer mig\t")
	for _, w := range res.Workloads {
		row := []string{w.Name}
		if ck := w.Checkpoint; ck != nil {
			row = append(row, human(ck.PeakStagingBytes), human(ck.PeakRSSBytes), human(ck.CR.ImageBytes))
		} else {
			row = append(row, "-", "-", "-")
		}
		row = append(row, "|")
		if p := w.Peer; p != nil {
			ck, rs, mg := "-", "-", "-"
			if w.Checkpoint != nil && p.CheckpointSeconds > 0 {
				ck = fmt.Sprintf("%.2f", w.Checkpoint.WallSeconds/p.CheckpointSeconds)
			}
			if w.Restore != nil && p.RestoreSeconds > 0 {
				rs = fmt.Sprintf("%.2f", w.Restore.WallSeconds/p.RestoreSeconds)
			}
			if w.Migrate != nil && w.Migrate.Available && p.MigrateSeconds > 0 {
				mg = fmt.Sprintf("%.2f", w.Migrate.CR.DowntimeSeconds/p.MigrateSeconds)
			}
			row = append(row, secs(p.CheckpointSeconds), human(p.ArchiveBytes), secs(p.RestoreSeconds), secs(p.ExtractSeconds), secs(p.MigrateSeconds), ck, rs, mg)
		} else {
			row = append(row, "-", "-", "-", "-", "-", "-", "-", "-")
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()

	fmt.Fprintln(out, "\nRESTORE: raw criu restore (from tmpfs) | cr restore (from the zstd file); every copy checked (pids, memory)")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tWALL\tCRIU restore_time\t|\tWALL\tcr elapsed\tMB/s\t")
	for _, w := range res.Workloads {
		row := []string{w.Name}
		if r := w.Raw; r != nil && r.RestoreWallSeconds > 0 {
			row = append(row, secs(r.RestoreWallSeconds), secs(r.RestoreSeconds))
		} else {
			row = append(row, "-", "-")
		}
		row = append(row, "|")
		if rs := w.Restore; rs != nil && w.Checkpoint != nil {
			row = append(row, secs(rs.WallSeconds), secs(rs.CR.ElapsedSeconds), fmt.Sprintf("%.0f", float64(w.Checkpoint.CR.RawBytes)/1e6/rs.WallSeconds))
		} else {
			row = append(row, "-", "-", "-")
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()

	fmt.Fprintln(out, "\nSTORES: cr snapshot + cr restore --store of the same job: a directory store (work dir) | an S3 store (SeaweedFS on loopback); every copy checked")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tSNAPSHOT\tFROZEN\tADDED\tRESTORE\t|\tSNAPSHOT\tFROZEN\tADDED\tRESTORE\t|\tS3/DIR SNAPSHOT\tS3/DIR RESTORE\t")
	s3reason := ""
	for _, w := range res.Workloads {
		st := w.Stores
		if st == nil || st.Dir == nil {
			continue
		}
		d := st.Dir
		row := []string{w.Name, secs(d.SnapshotWallSeconds), secs(d.FrozenSeconds), human(d.AddedBytes), secs(d.RestoreWallSeconds), "|"}
		if s := st.S3; s != nil {
			row = append(row, secs(s.SnapshotWallSeconds), secs(s.FrozenSeconds), human(s.AddedBytes), secs(s.RestoreWallSeconds), "|",
				fmt.Sprintf("%.2fx", s.SnapshotWallSeconds/d.SnapshotWallSeconds), fmt.Sprintf("%.2fx", s.RestoreWallSeconds/d.RestoreWallSeconds))
		} else {
			row = append(row, "-", "-", "-", "-", "|", "-", "-")
			s3reason = st.S3Reason
		}
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	tw.Flush()
	if s3reason != "" {
		fmt.Fprintf(out, "S3 store: not measured: %s\n", s3reason)
	}

	fmt.Fprintln(out, "\nMIGRATE: cr migrate in netns A -> cr serve in netns B over a veth (stop-and-copy; --lazy) | as cr serve logged it")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tDOWNTIME\tWALL\tDUMP\tTRANSFER\tRESTORE\t|\tRECEIVE\tRESTORE\t|\tSENT\tMB/s END-TO-END\tMB/s TRANSFER\t--lazy\t")
	for _, w := range res.Workloads {
		m := w.Migrate
		if m == nil {
			continue
		}
		lazy := "-"
		if w.Lazy != nil {
			lazy = "not available"
			if w.Lazy.Available {
				lazy = fmt.Sprintf("downtime %s, then %s of memory in %s", secs(w.Lazy.CR.DowntimeSeconds), human(w.Lazy.CR.PageBytes), secs(w.Lazy.CR.PagesSeconds))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t|\t%s\t%s\t|\t%s\t%.0f\t%.0f\t%s\t\n", w.Name, secs(m.CR.DowntimeSeconds), secs(m.WallSeconds),
			secs(m.CR.DumpSeconds), secs(m.CR.TransferSeconds), secs(m.CR.RestoreSeconds),
			secs(m.ServeReceiveSeconds), secs(m.ServeRestoreSeconds), human(m.CR.BytesSent),
			m.EndToEndMBps, m.CR.ThroughputBps/1e6, lazy)
	}
	tw.Flush()
	for _, w := range res.Workloads {
		if w.Lazy != nil && !w.Lazy.Available {
			fmt.Fprintf(out, "--lazy: %s\n", w.Lazy.Reason)
			break
		}
	}

	if res.Runs > 1 {
		writeSpread(out, res)
	}

	fmt.Fprintln(out, "\nTARGETS (tracked, not timed tests; on the medians)")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tTARGET\tWORKLOAD\tVALUE\tLIMIT\tMISSED BY\tDETAIL")
	for _, t := range res.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Status, t.Goal, t.Workload, t.valueString(), formatUnit(t.Limit, t.Unit), t.Miss(), t.Detail)
	}
	tw.Flush()

	for _, w := range res.Workloads {
		for _, msg := range w.Warnings {
			fmt.Fprintf(out, "\nWARNING %s: %s\n", w.Name, msg)
		}
		for _, e := range w.Errors {
			fmt.Fprintf(out, "\nFAILED %s: %s\n", w.Name, e)
		}
	}
}

// writeSpread prints the lowest and highest of the main timings over the
// runs of each workload.
func writeSpread(out io.Writer, res *Results) {
	fmt.Fprintln(out, "\nSPREAD OVER THE RUNS (lowest - highest)")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "WORKLOAD\tCRIU DUMP\tCRIU FROZEN\tCR -LR FROZEN\tCR CHECKPOINT\tCRIU RESTORE\tCR RESTORE\tMIGRATE DOWNTIME\t")
	for _, w := range res.Workloads {
		col := func(get func(*Run) float64) string {
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, r := range w.Runs {
				if v := get(r); v > 0 {
					lo, hi = min(lo, v), max(hi, v)
				}
			}
			if math.IsInf(lo, 1) {
				return "-"
			}
			return secs(lo) + " - " + secs(hi)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", w.Name,
			col(func(r *Run) float64 { return val(r.Raw, func(x *RawResult) float64 { return x.DumpWallSeconds }) }),
			col(func(r *Run) float64 { return val(r.Raw, func(x *RawResult) float64 { return x.FrozenSeconds }) }),
			col(func(r *Run) float64 {
				return val(r.CheckpointLR, func(x *CheckpointResult) float64 { return x.CR.FrozenSeconds })
			}),
			col(func(r *Run) float64 {
				return val(r.Checkpoint, func(x *CheckpointResult) float64 { return x.WallSeconds })
			}),
			col(func(r *Run) float64 { return val(r.Raw, func(x *RawResult) float64 { return x.RestoreWallSeconds }) }),
			col(func(r *Run) float64 { return val(r.Restore, func(x *RestoreResult) float64 { return x.WallSeconds }) }),
			col(func(r *Run) float64 {
				return val(r.Migrate, func(x *MigrateResult) float64 { return x.CR.DowntimeSeconds })
			}))
	}
	tw.Flush()
}

// val reads a number of an optional result.
func val[T any](p *T, get func(*T) float64) float64 {
	if p == nil {
		return 0
	}
	return get(p)
}

// writeOutputs writes results.json, chart.svg and summary.txt.
func writeOutputs(dir string, res *Results, summary string) error {
	b, err := json.MarshalIndent(sanitize(res), "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	files := map[string][]byte{
		"results.json": append(b, '\n'),
		"chart.svg":    []byte(chartSVG(res)),
		"summary.txt":  []byte(summary),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// sanitize replaces values JSON cannot carry (NaN, ±Inf from a division
// by a zero measurement) with 0.
func sanitize(res *Results) *Results {
	for i := range res.Targets {
		if v := res.Targets[i].Value; math.IsNaN(v) || math.IsInf(v, 0) {
			res.Targets[i].Value = 0
		}
	}
	for _, w := range res.Workloads {
		if m := w.Migrate; m != nil && (math.IsNaN(m.EndToEndMBps) || math.IsInf(m.EndToEndMBps, 0)) {
			m.EndToEndMBps = 0
		}
	}
	return res
}
