package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/migrate"
)

// migrateReport is cr migrate --json.
type migrateReport struct {
	Path             string         `json:"path"`
	Host             string         `json:"host"`
	Target           string         `json:"target"`
	Pids             map[string]int `json:"init_pids"`
	Lazy             bool           `json:"lazy"`
	DowntimeSeconds  float64        `json:"downtime_seconds"`
	TotalSeconds     float64        `json:"total_seconds"`
	DumpSeconds      float64        `json:"dump_seconds"`
	TransferSeconds  float64        `json:"transfer_seconds"`
	RestoreSeconds   float64        `json:"restore_seconds"`
	RawBytes         int64          `json:"raw_bytes"`
	BytesSent        int64          `json:"sent_bytes"`
	ArchiveBytes     int64          `json:"archive_bytes"`
	CompressionRatio float64        `json:"compression_ratio"`
	PagesSeconds     float64        `json:"pages_seconds"`
	PageBytes        int64          `json:"page_bytes"`
	PreCopyBytes     int64          `json:"precopy_bytes"`
	PreCopyFiles     int            `json:"precopy_files"`
	PreCopySeconds   float64        `json:"precopy_seconds"`
	ChangedBytes     int64          `json:"fs_changed_bytes"`
	ChangedFiles     int            `json:"fs_changed_files"`
}

// migrateArgs is a cr migrate command line to h with h's credentials.
func migrateArgs(h *host, path string, flags ...string) []string {
	return append(append([]string{"migrate", path, h.addr}, h.creds...), flags...)
}

// sourceStaging lists what the source's staging area holds.
func sourceStaging(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(workDir, "staging"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// sourceRunsOn checks that the source job at path is running, as before a
// failed migration: same pid, same memory, its counter going on.
func sourceRunsOn(t *testing.T, j *job, before Report) {
	t.Helper()
	if l, ok := ls(t)[j.path]; !ok || l.State != "running" {
		t.Fatalf("source %s after the failed migration: %+v, want running", j.path, l)
	}
	now := j.ask(t)
	if now.Pid != before.Pid || now.Counter < before.Counter {
		t.Errorf("source job changed: pid %d -> %d, counter %d -> %d", before.Pid, now.Pid, before.Counter, now.Counter)
	}
	if now.MemSHA != before.MemSHAAtInit {
		t.Errorf("source memory checksum %s, want %s", now.MemSHA, before.MemSHAAtInit)
	}
	if !j.progresses(t, now.Counter) {
		t.Errorf("source job makes no progress after the failed migration")
	}
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("source staging area not cleaned: %v", s)
	}
}

func sortedPids(ps []Proc) string {
	var pids []int
	for _, p := range ps {
		pids = append(pids, p.Pid)
	}
	sort.Ints(pids)
	return fmt.Sprint(pids)
}

// A running job with a counter, children, SysV IPC and 256 MiB of dirtied
// memory moves to the other host and goes on there; nothing is left here.
func TestMigrateRunningJob(t *testing.T) {
	h := newHost(t, "token")
	leaves := countLeaves(t)
	cf := filepath.Join(t.TempDir(), "counter")
	j := startJob(t, "/mig/job", "--mem", "256", "--ipc", "--children", "2", "--counter-file", cf)
	before := j.ask(t)
	if before.MemSHA != before.MemSHAAtInit || before.ShmData == "" || len(before.Children) != 2 {
		t.Fatalf("job not set up: %+v", before)
	}
	pidsBefore := sortedPids(ps(t, "/mig/job"))
	t0 := time.Now()
	out := mustCr(t, append(migrateArgs(h, "/mig"), "--json")...)
	elapsed := time.Since(t0)
	var rep migrateReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("cr migrate --json: %v\n%s", err, out)
	}

	// The report.
	if rep.Path != "/mig" || rep.Target != "/mig" || rep.Host != h.addr {
		t.Errorf("report names %q -> %s:%q", rep.Path, rep.Host, rep.Target)
	}
	if rep.DowntimeSeconds <= 0 || rep.DowntimeSeconds > elapsed.Seconds() ||
		rep.DumpSeconds <= 0 || rep.TransferSeconds <= 0 || rep.RestoreSeconds <= 0 ||
		rep.DumpSeconds+rep.TransferSeconds+rep.RestoreSeconds > rep.DowntimeSeconds+0.01 {
		t.Errorf("report times implausible (elapsed %s): %+v", elapsed, rep)
	}
	if rep.RawBytes < 256<<20 || rep.BytesSent <= 0 || rep.BytesSent >= rep.RawBytes {
		t.Errorf("report sizes: %d raw, %d sent (256 MiB of memory, a quarter zeros: want compression)", rep.RawBytes, rep.BytesSent)
	}
	if want := float64(rep.RawBytes) / float64(rep.ArchiveBytes); rep.CompressionRatio < 0.99*want || rep.CompressionRatio > 1.01*want ||
		rep.BytesSent < rep.ArchiveBytes || rep.BytesSent > rep.ArchiveBytes*101/100 {
		t.Errorf("compression ratio %.3f, want raw/archive = %.3f (%d archive bytes, %d on the wire)", rep.CompressionRatio, want, rep.ArchiveBytes, rep.BytesSent)
	}

	checkMigrated(t, h, j, before, pidsBefore, rep, t0, leaves)
}

// A job with 256 MiB of memory migrates lazily: only its state without its
// memory is sent before it resumes at the destination, the memory follows
// through cr's connection, and the job has it all there.
func TestMigrateLazy(t *testing.T) {
	h := newHost(t, "token")
	leaves := countLeaves(t)
	cf := filepath.Join(t.TempDir(), "counter")
	// A second container: its memory comes through a channel of its own.
	j2 := startJob(t, "/mig/two", "--mem", "32")
	before2 := j2.ask(t)
	j := startJob(t, "/mig/job", "--mem", "256", "--ipc", "--children", "2", "--counter-file", cf)
	before := j.ask(t)
	if before.MemSHA != before.MemSHAAtInit || before.ShmData == "" || len(before.Children) != 2 {
		t.Fatalf("job not set up: %+v", before)
	}
	pidsBefore := sortedPids(ps(t, "/mig/job"))
	t0 := time.Now()
	out := mustCr(t, append(migrateArgs(h, "/mig", "--lazy"), "--json")...)
	var rep migrateReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("cr migrate --json: %v\n%s", err, out)
	}
	if !rep.Lazy || rep.Path != "/mig" || rep.Target != "/mig" {
		t.Errorf("report: %+v", rep)
	}
	// The image sent before the resume lacks the memory, which followed.
	if rep.RawBytes > 64<<20 || rep.ArchiveBytes > 64<<20 || rep.BytesSent < rep.ArchiveBytes+rep.PageBytes {
		t.Errorf("%d bytes staged, %d in the image stream, %d on the wire: the memory was not kept back", rep.RawBytes, rep.ArchiveBytes, rep.BytesSent)
	}
	if rep.PageBytes < 280<<20 || rep.PagesSeconds <= 0 {
		t.Errorf("%d bytes of memory followed in %.3fs, want the jobs' 256 + 32 MiB", rep.PageBytes, rep.PagesSeconds)
	}
	if after2 := h.ask(t, j2, "/mig/two"); after2.MemSHA != before2.MemSHAAtInit || after2.Pid != before2.Pid {
		t.Errorf("second container at the destination: pid %d, memory %s; want pid %d, memory %s", after2.Pid, after2.MemSHA, before2.Pid, before2.MemSHAAtInit)
	}
	if rep.DowntimeSeconds <= 0 || rep.DowntimeSeconds > rep.TotalSeconds {
		t.Errorf("downtime %.3fs of %.3fs in all", rep.DowntimeSeconds, rep.TotalSeconds)
	}
	if !strings.Contains(h.log.String(), "/mig: done (lazy)") {
		t.Errorf("cr serve did not log a lazy migration:\n%s", h.log)
	}
	if s := sourceLazyLogs(t); len(s) != 0 {
		t.Errorf("lazy dump logs left at the source: %v", s)
	}
	checkMigrated(t, h, j, before, pidsBefore, rep, t0, leaves)
}

// sourceLazyLogs lists the lazy dumps' log directories left in the source's
// staging area.
func sourceLazyLogs(t *testing.T) []string {
	var out []string
	for _, n := range sourceStaging(t) {
		if strings.HasPrefix(n, "ckpt-logs-") {
			out = append(out, n)
		}
	}
	return out
}

// checkMigrated checks that the job j, whose state was before (pids inside
// pidsBefore) when the migration started at t0, went to h with everything
// intact, and that the source has nothing left of it.
func checkMigrated(t *testing.T, h *host, j *job, before Report, pidsBefore string, rep migrateReport, t0 time.Time, leaves int) {
	t.Helper()
	// Nothing is left at the source.
	if got := filterPrefix(ls(t), "/mig"); len(got) != 0 {
		t.Errorf("source still has %v", got)
	}
	if n := countLeaves(t); n != leaves {
		t.Errorf("source has %d container cgroups, had %d before the job", n, leaves)
	}
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("source staging area not cleaned: %v", s)
	}

	// The job goes on at the destination.
	dl := h.ls(t)
	if dl["/mig/job"].State != "running" || dl["/mig/job"].Processes != 4 {
		t.Fatalf("destination has %+v, want /mig/job running with 4 processes", dl)
	}
	if _, ok := dl["/mig"]; !ok {
		t.Errorf("destination lacks the subtree's root /mig: %v", dl)
	}
	dps := h.ps(t, "/mig/job")
	if got := sortedPids(dps); got != pidsBefore {
		t.Errorf("pids inside the container: %s before, %s at the destination", pidsBefore, got)
	}
	for _, p := range dps {
		if p.Pid == 1 && p.HostPid != rep.Pids["/mig/job"] {
			t.Errorf("init's host pid %d, the report says %d", p.HostPid, rep.Pids["/mig/job"])
		}
	}
	after := h.ask(t, j, "/mig/job")
	// The counter continues from where it was: it counted at most while the
	// job ran here or there (a 10 ms tick; frozen, it stands still).
	ran := time.Since(t0) - time.Duration(rep.DowntimeSeconds*float64(time.Second))
	if after.Counter < before.Counter || after.Counter > before.Counter+int64(ran/(10*time.Millisecond))+30 {
		t.Errorf("counter %d before, %d after (the job ran for at most %s): reset or jump", before.Counter, after.Counter, ran)
	}
	if d := after.CounterFile - after.Counter; d < -1 || d > 1 {
		t.Errorf("counter file %d disagrees with memory %d after migration", after.CounterFile, after.Counter)
	}
	if after.Pid != before.Pid || fmt.Sprint(after.Children) != fmt.Sprint(before.Children) {
		t.Errorf("pids changed: job %d -> %d, children %v -> %v", before.Pid, after.Pid, before.Children, after.Children)
	}
	if after.ShmID != before.ShmID || after.ShmData != before.ShmData ||
		after.SemID != before.SemID || fmt.Sprint(after.SemValues) != fmt.Sprint(before.SemValues) ||
		after.MsgID != before.MsgID || strings.Join(after.Msgs, "|") != strings.Join(before.Msgs, "|") {
		t.Errorf("IPC objects changed:\nbefore %+v\nafter  %+v", before, after)
	}
	if after.MemSHA != before.MemSHAAtInit || after.MemBytes != 256<<20 {
		t.Errorf("memory checksum at the destination %s, want %s", after.MemSHA, before.MemSHAAtInit)
	}
	if after.Hostname != "job" {
		t.Errorf("hostname at the destination %q", after.Hostname)
	}
	if !h.progresses(t, j, "/mig/job", after.Counter) {
		t.Errorf("counter stopped at the destination at %d", after.Counter)
	}
	if !strings.Contains(h.log.String(), "/mig: done") {
		t.Errorf("cr serve did not log the migration:\n%s", h.log)
	}
	if strings.Contains(h.log.String(), "lazy migrations refused") {
		t.Errorf("cr serve refuses lazy migrations here:\n%s", h.log)
	}
	if s := h.incoming(t); len(s) != 0 {
		t.Errorf("destination staging area not cleaned: %v", s)
	}
	// Killed at the destination, it leaves nothing there either.
	h.mustCr(t, "kill", "/mig")
	h.waitClean(t)
}

// Mutual TLS with certificates from cr certs, and --as: the job lands under
// another path of the destination's tree.
func TestMigrateMutualTLSAs(t *testing.T) {
	h := newHost(t, "mtls")
	j := startJob(t, "/tlsjob", "--children", "1")
	before := j.ask(t)
	mustCr(t, migrateArgs(h, "/tlsjob", "--as", "/moved/here")...)
	if _, ok := ls(t)["/tlsjob"]; ok {
		t.Errorf("source still has /tlsjob")
	}
	dl := h.ls(t)
	if dl["/moved/here"].State != "running" {
		t.Fatalf("destination has %+v, want /moved/here running", dl)
	}
	if _, ok := dl["/tlsjob"]; ok {
		t.Errorf("destination restored at the original path too")
	}
	after := h.ask(t, j, "/moved/here")
	if after.Pid != before.Pid || fmt.Sprint(after.Children) != fmt.Sprint(before.Children) || after.Counter < before.Counter {
		t.Errorf("job changed: %+v before, %+v after", before, after)
	}
	if !h.progresses(t, j, "/moved/here", after.Counter) {
		t.Errorf("job does not run at the destination")
	}
	if !strings.Contains(h.log.String(), "(client)") || !strings.Contains(h.log.String(), "as /moved/here: done") {
		t.Errorf("cr serve log lacks the client certificate's name or the migration:\n%s", h.log)
	}
}

// Refused credentials: the sender says so, the source runs on untouched,
// the destination has nothing.
func TestMigrateAuthRefused(t *testing.T) {
	tok := newHost(t, "token")
	mt := newHost(t, "mtls")
	dir := t.TempDir()
	wrong := filepath.Join(dir, "wrong-token")
	mustCr(t, "certs", "token", wrong)
	other := filepath.Join(dir, "other-ca")
	mustCr(t, "certs", "tls", other, "--host", mt.ip)
	o := func(name string) string { return filepath.Join(other, name) }
	m := func(name string) string { return filepath.Join(mt.tls, name) }

	j := startJob(t, "/auth", "--counter-file", filepath.Join(dir, "counter"))
	before := j.ask(t)
	cases := []struct {
		name    string
		h       *host
		flags   []string
		code    int
		want    string
		dialled bool // the daemon sees (and logs) the attempt
	}{
		{"wrong token", tok, []string{"--token-file", wrong}, 11, "authentication failed", true},
		{"no credentials", tok, nil, 2, "no authentication configured", false},
		{"half of mutual TLS", mt, []string{"--cert", m("client.crt")}, 2, "mutual TLS needs a certificate, a key and a CA file: missing [key CA]", false},
		{"token against mutual TLS", mt, []string{"--token-file", tok.token}, 11, "authentication failed", true},
		{"client certificate of another CA", mt, []string{"--cert", o("client.crt"), "--key", o("client.key"), "--ca", m("ca.crt")}, 11, "authentication failed", true},
		{"server certificate of another CA", mt, []string{"--cert", m("client.crt"), "--key", m("client.key"), "--ca", o("ca.crt")}, 11, "authentication failed", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mark := c.h.log.Len()
			r := cr(t, append([]string{"migrate", "/auth", c.h.addr}, c.flags...)...)
			if r.code != c.code || !strings.Contains(r.err, c.want) {
				t.Errorf("want exit %d and %q, got %s", c.code, c.want, r)
			}
			if c.dialled {
				waitFor(t, 10*time.Second, "cr serve to log the refusal", func() bool {
					return strings.Contains(c.h.log.From(mark), "authentication failed")
				})
			} else {
				time.Sleep(100 * time.Millisecond)
				if l := c.h.log.From(mark); l != "" {
					t.Errorf("cr migrate connected although it had no usable credentials:\n%s", l)
				}
			}
			if l, ok := ls(t)["/auth"]; !ok || l.State != "running" {
				t.Errorf("source after refused credentials: %+v", l)
			}
			c.h.waitClean(t)
		})
	}
	sourceRunsOn(t, j, before)
	if after := j.ask(t); after.CounterFile < before.Counter {
		t.Errorf("counter file %d went back (was %d)", after.CounterFile, before.Counter)
	}
}

// runMigrate starts cr migrate in the background.
func runMigrate(t *testing.T, args ...string) (*exec.Cmd, *bytes.Buffer, chan struct{}) {
	t.Helper()
	c := exec.Command(crBin, args...)
	c.Env = append(os.Environ(), env...)
	c.Dir = workDir
	var stderr bytes.Buffer
	c.Stderr = &stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = c.Process.Kill()
		<-done
	})
	return c, &stderr, done
}

// waitStream waits until the receiver made the staging directory of a
// migration (it accepted BEGIN: the source is dumped and the image is on
// its way), polling often: the stream lasts about a second.
func waitStream(t *testing.T, h *host, done chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for len(h.incoming(t)) == 0 {
		select {
		case <-done:
			t.Fatalf("cr migrate ended before the stream began")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream did not begin")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// The receiver dies in the middle of the stream: the source runs on; the
// restarted receiver removes the crashed migration's leftovers and serves
// again.
func TestMigrateReceiverKilled(t *testing.T) {
	h := newHost(t, "token")
	j := startJob(t, "/rk", "--mem", "512")
	before := j.ask(t)
	c, stderr, done := runMigrate(t, migrateArgs(h, "/rk")...)
	waitStream(t, h, done)
	h.kill(t)
	<-done
	if code := c.ProcessState.ExitCode(); code == 0 || !strings.Contains(stderr.String(), "/rk left running here") {
		t.Fatalf("cr migrate to a killed receiver: exit %d, %s", code, stderr)
	}
	sourceRunsOn(t, j, before)
	if got := h.ls(t); len(got) != 0 {
		t.Errorf("destination has %v after the receiver died mid-stream", got)
	}
	if got := cgroupsUnder(h.cg); len(got) != 0 {
		t.Errorf("destination has cgroups %v", got)
	}
	if len(h.incoming(t)) == 0 {
		t.Errorf("the killed receiver left no staging directory: nothing to clean at restart")
	}
	h.start(t)
	h.waitClean(t) // stale staging directories are removed at start
	mustCr(t, migrateArgs(h, "/rk")...)
	if after := h.ask(t, j, "/rk"); after.Pid != before.Pid || after.MemSHA != before.MemSHAAtInit {
		t.Errorf("job after the second migration: %+v, want pid %d and memory %s", after, before.Pid, before.MemSHAAtInit)
	}
	if _, ok := ls(t)["/rk"]; ok {
		t.Errorf("source still has /rk after the second migration")
	}
}

// The receiver dies while it restores, before the commit: the source runs
// on; the restarted receiver removes the half-restored tree.
func TestMigrateReceiverKilledRestoring(t *testing.T) {
	h := newHost(t, "token")
	j := startJob(t, "/kr", "--mem", "256")
	before := j.ask(t)
	c, stderr, done := runMigrate(t, migrateArgs(h, "/kr")...)
	// The restore is under way once the receiver created the node and
	// marked it "restoring": CRIU works on it then. (A crash while
	// nstree creates a node, a window of microseconds, is not recovered.)
	configs := filepath.Join(h.dir, "state", "c", "*", "config.json")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if restoring(configs) {
			break
		}
		select {
		case <-done:
			t.Fatalf("cr migrate ended before the restore began: %s", stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restore did not begin")
		}
		time.Sleep(2 * time.Millisecond)
	}
	h.kill(t)
	<-done
	if code := c.ProcessState.ExitCode(); code == 0 || !strings.Contains(stderr.String(), "/kr left running here") {
		t.Fatalf("cr migrate to a receiver killed while restoring: exit %d, %s", code, stderr)
	}
	sourceRunsOn(t, j, before)
	mark := h.log.Len()
	h.start(t)
	h.waitClean(t)
	if !strings.Contains(h.log.From(mark), "cr: interrupted restore of /kr: removed what was restored\n") {
		t.Errorf("the restarted cr serve did not say what it removed:\n%s", h.log.From(mark))
	}
	// One cr serve at a time owns the staging area.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	second := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + h.ns, crBin, "serve", "--listen", h.ip + ":7401"}, h.serve...)...)
	second.Env = h.environ()
	out, err := second.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 9 || !strings.Contains(string(out), "another cr serve") {
		t.Errorf("a second cr serve on the same staging area: want exit 9, got %v: %s", err, out)
	}
	mustCr(t, migrateArgs(h, "/kr")...) // the target is free again
	if after := h.ask(t, j, "/kr"); after.Pid != before.Pid || after.MemSHA != before.MemSHAAtInit {
		t.Errorf("job after the second migration: %+v", after)
	}
}

// restoring reports whether a node config matching glob says "restoring".
func restoring(glob string) bool {
	files, _ := filepath.Glob(glob)
	for _, f := range files {
		var c struct {
			Status string `json:"status"`
		}
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &c) == nil && c.Status == "restoring" {
			return true
		}
	}
	return false
}

// The destination cannot restore: refused before anything happens when the
// target exists there; CRIU failing after the stream leaves the source
// running and nothing at the destination.
func TestMigrateRestoreFails(t *testing.T) {
	h := newHost(t, "token")
	cf := filepath.Join(t.TempDir(), "counter")
	j := startJob(t, "/rf", "--mem", "256", "--counter-file", cf)
	before := j.ask(t)

	// The target path exists at the destination.
	h.mustCr(t, "run", "/rf", "--", "sleep", "1000")
	r := cr(t, migrateArgs(h, "/rf")...)
	if r.code != 4 || !strings.Contains(r.err, "migration rejected") || !strings.Contains(r.err, "/rf exists") {
		t.Errorf("migration to an existing path: want exit 4 and a rejection naming /rf, got %s", r)
	}
	if dl := h.ls(t); dl["/rf"].State != "running" || fmt.Sprint(dl["/rf"].Command) != "[sleep 1000]" {
		t.Errorf("the destination's own /rf was touched: %+v", dl["/rf"])
	}
	h.mustCr(t, "kill", "/rf")
	sourceRunsOn(t, j, before)
	h.waitClean(t)

	// CRIU fails at the destination: the job holds the counter file open,
	// and CRIU restores only a file of the size it dumped. The file grows
	// once the dump is done (the receiver accepted the stream).
	before = j.ask(t)
	c, stderr, done := runMigrate(t, migrateArgs(h, "/rf")...)
	waitStream(t, h, done)
	f, err := os.OpenFile(cf, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("grown after the dump\n")
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	<-done
	msg := stderr.String()
	if code := c.ProcessState.ExitCode(); code != 1 || !strings.Contains(msg, "migration failed at destination") ||
		!strings.Contains(msg, "bad size") || !strings.Contains(msg, "/rf left running here") {
		t.Fatalf("migration whose restore fails: want exit 1, the destination's failure with CRIU's reason and the source running, got exit %d: %s", code, msg)
	}
	// CRIU's log is kept at the destination, as the message says, in its
	// cr's state directory.
	if i := strings.Index(msg, "full log: "); i < 0 {
		t.Errorf("the error does not name CRIU's log: %s", msg)
	} else if log := strings.TrimRight(strings.Fields(msg[i+len("full log: "):])[0], ")"); filepath.Dir(log) != filepath.Join(h.dir, "state", "criu-logs") {
		t.Errorf("CRIU's log %s is not in the destination's $CR_STATE_DIR/criu-logs", log)
	} else if b, err := os.ReadFile(log); err != nil || !strings.Contains(string(b), "bad size") {
		t.Errorf("CRIU's kept log %s: %v, without CRIU's reason", log, err)
	}
	sourceRunsOn(t, j, before)
	h.waitClean(t)
	if !strings.Contains(h.log.String(), "failed: restore") {
		t.Errorf("cr serve did not log the failed restore:\n%s", h.log)
	}
}

// Hostile input sent to cr serve directly: refused, nothing written outside
// the staging area, and the daemon keeps serving.
func TestMigrateHostileStreams(t *testing.T) {
	h := newHost(t, "token")
	marker := fmt.Sprintf("cr-e2e-escape-%d", os.Getpid())
	incoming := filepath.Join(h.dir, "staging", "incoming")
	var escapes []string // where an escaping entry would land

	// Through the real protocol, authenticated: bad archives.
	archive := func(entries func(tw *tar.Writer)) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		hdr := []byte(`{"format":"cr-image","version":1}` + "\n")
		_ = tw.WriteHeader(&tar.Header{Name: images.HeaderFile, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(hdr))})
		_, _ = tw.Write(hdr)
		entries(tw)
		_ = tw.Close()
		return b.Bytes()
	}
	file := func(name string, size int) func(tw *tar.Writer) {
		return func(tw *tar.Writer) {
			_ = tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(size)})
			_, _ = tw.Write(bytes.Repeat([]byte("x"), size))
		}
	}
	traversal := func(depth int) []byte {
		name := strings.Repeat("../", depth) + marker
		escapes = append(escapes, filepath.Join(incoming, "incoming-x", name))
		return archive(file(name, 100))
	}
	escapes = append(escapes, "/tmp/"+marker)
	garbage := make([]byte, 256<<10)
	rand.New(rand.NewSource(1)).Read(garbage)
	cases := []struct {
		name string
		size int64
		body []byte
		kind error
		want string
	}{
		{"path traversal ../", 1 << 20, traversal(1), migrate.ErrRemote, "unsafe image entry"},
		{"path traversal ../../../", 1 << 20, traversal(3), migrate.ErrRemote, "unsafe image entry"},
		{"path traversal to /tmp", 1 << 20, traversal(20), migrate.ErrRemote, "unsafe image entry"},
		{"absolute path", 1 << 20, archive(file("/tmp/"+marker, 100)), migrate.ErrRemote, "unsafe image entry"},
		{"symlink out", 1 << 20, archive(func(tw *tar.Writer) {
			_ = tw.WriteHeader(&tar.Header{Name: "d", Typeflag: tar.TypeSymlink, Linkname: "/tmp", Mode: 0o777})
			file("d/"+marker, 100)(tw)
		}), migrate.ErrRemote, "unsafe image entry"},
		{"entry over the declared size", 4096, archive(file("big", 1<<20)), migrate.ErrRemote, "exceeds limits"},
		{"garbage", 1 << 20, garbage, migrate.ErrRemote, "not a cr image"},
		{"zstd garbage", 1 << 20, append([]byte{0x28, 0xb5, 0x2f, 0xfd}, garbage...), migrate.ErrRemote, "corrupt"},
		{"declared size over the limit", 1 << 62, nil, migrate.ErrRejected, "too large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _, err := migrate.Migrate(ctx, h.addr, migrate.Auth{TokenFile: h.token}, migrate.Migration{
				Request: migrate.Request{Root: "/hostile"},
				Prepare: func(context.Context) (int64, error) { return c.size, nil },
				Body: func(_ context.Context, w io.Writer) error {
					_, err := w.Write(c.body)
					return err
				},
			})
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("want %v with %q, got %v", c.kind, c.want, err)
			}
			t.Logf("refused: %v", err)
			h.waitClean(t)
			if !h.running() {
				t.Fatalf("cr serve died:\n%s", h.log)
			}
		})
	}

	// Before authentication: not TLS at all, and frames without HELLO.
	t.Run("garbage instead of TLS", func(t *testing.T) {
		mark := h.log.Len()
		nc, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		_, _ = nc.Write(garbage[:4096])
		_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, err := io.Copy(io.Discard, nc); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the receiver did not close a connection that is not TLS: %v", err)
		}
		waitFor(t, 10*time.Second, "cr serve to log the refusal", func() bool {
			return strings.Contains(h.log.From(mark), "authentication failed")
		})
	})
	unauthenticated := []struct {
		name  string
		frame []byte
	}{
		{"request without authentication", frameBytes(0x10, []byte(`{"root":"/hostile"}`))},
		{"data without authentication", frameBytes(0x20, garbage[:1000])},
		{"oversized hello", []byte{0x01, 0x40, 0, 0, 0}},
	}
	for _, c := range unauthenticated {
		t.Run(c.name, func(t *testing.T) {
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", h.addr,
				&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) // token mode: the certificate proves nothing
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(c.frame); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
			typ, payload, err := readFrame(conn)
			if err != nil || typ != 0x42 || !strings.Contains(string(payload), `"authentication failed"`) {
				t.Errorf("want ERROR authentication failed, got type %#x %q, %v", typ, payload, err)
			}
			if _, _, err := readFrame(conn); err == nil {
				t.Errorf("the receiver sent more after refusing")
			}
		})
	}

	for _, p := range escapes {
		if _, err := os.Lstat(filepath.Clean(p)); err == nil {
			t.Errorf("a hostile entry was written outside the staging area: %s", p)
			_ = os.Remove(p)
		}
	}
	if out, _ := exec.Command("find", h.dir, "-name", marker).Output(); len(out) > 0 {
		t.Errorf("a hostile entry was written: %s", out)
	}
	h.waitClean(t)

	// And the daemon still serves a real migration.
	if !h.running() {
		t.Fatalf("cr serve died:\n%s", h.log)
	}
	j := startJob(t, "/after", "--children", "1")
	before := j.ask(t)
	mustCr(t, migrateArgs(h, "/after")...)
	if after := h.ask(t, j, "/after"); after.Pid != before.Pid || after.Counter < before.Counter {
		t.Errorf("job after migration: %+v, before %+v", after, before)
	}
}

func frameBytes(typ byte, payload []byte) []byte {
	b := make([]byte, 5+len(payload))
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	copy(b[5:], payload)
	return b
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > 64<<10 {
		return hdr[0], nil, fmt.Errorf("frame of %d bytes", n)
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return hdr[0], p, err
}

// --pre-copy is refused with its reason before anything is sent, and so
// are flags that make no sense; the source is untouched.
func TestMigratePreCopyRefused(t *testing.T) {
	h := newHost(t, "token")
	j := startJob(t, "/lazy")
	before := j.ask(t)
	criu, err := criubin.Find("")
	if err != nil {
		t.Fatal(err)
	}
	f, err := criubin.ProbeFeatures(context.Background(), criu)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		flag  string
		has   bool
		needs string
	}{
		{"--pre-copy", f.MemDirtyTrack, "soft-dirty"},
	}
	for _, c := range cases {
		t.Run(c.flag, func(t *testing.T) {
			mark := h.log.Len()
			if c.has {
				wantFail(t, 2, "not implemented", migrateArgs(h, "/lazy", c.flag)...)
			} else {
				wantFail(t, 6, c.needs, migrateArgs(h, "/lazy", c.flag)...)
			}
			time.Sleep(100 * time.Millisecond)
			if l := h.log.From(mark); l != "" {
				t.Errorf("cr migrate %s connected:\n%s", c.flag, l)
			}
			h.waitClean(t)
		})
	}
	wantFail(t, 2, "--fallback goes with --lazy", migrateArgs(h, "/lazy", "--fallback")...)
	sourceRunsOn(t, j, before)
}

// The receiver dies while a lazily migrated job runs there and its memory
// still arrives. The sender cannot know what the receiver had: it keeps the
// source frozen and says so. The receiver's CRIU daemon went with it, so
// the job there lacks memory: the restarted receiver kills and removes it,
// and the source, thawed, goes on with its memory intact.
func TestMigrateLazyReceiverKilled(t *testing.T) {
	h := newHost(t, "token")
	// Slow the link, so that the memory takes seconds to follow.
	if out, err := exec.Command("tc", "qdisc", "add", "dev", h.veth, "root", "tbf", "rate", "40mbit", "burst", "64kb", "latency", "2s").CombinedOutput(); err != nil {
		t.Fatalf("tc: %v\n%s", err, out)
	}
	j := startJob(t, "/lk", "--mem", "64")
	before := j.ask(t)
	c, stderr, done := runMigrate(t, migrateArgs(h, "/lk", "--lazy")...)
	waitFor(t, 60*time.Second, "the job to run at the destination", func() bool {
		select {
		case <-done:
			t.Fatalf("cr migrate ended before the job ran at the destination: %s", stderr)
		default:
		}
		return h.resumed(t, "lk")
	})
	h.kill(t)
	<-done
	if code := c.ProcessState.ExitCode(); code == 0 || !strings.Contains(stderr.String(), "/lk is left frozen here") {
		t.Fatalf("cr migrate to a receiver killed before the last page: exit %d, %s", code, stderr)
	}
	if l := ls(t)["/lk"]; l.State != "frozen" {
		t.Fatalf("source after a lazy migration in doubt: %+v, want frozen", l)
	}
	if s := sourceLazyLogs(t); len(s) != 0 {
		t.Errorf("lazy dump logs left at the source: %v", s)
	}
	h.start(t)
	waitFor(t, 10*time.Second, "the restarted receiver to remove the job", func() bool {
		return strings.Contains(h.log.String(), "cr: interrupted lazy restore of /lk: its memory had not all arrived; killed and removed\n")
	})
	if got := h.ls(t); len(got) != 0 {
		t.Errorf("destination has %v after its restart", got)
	}
	if got := cgroupsUnder(h.cg); len(got) != 0 {
		t.Errorf("destination has cgroups %v", got)
	}
	mustCr(t, "thaw", "/lk")
	sourceRunsOn(t, j, before)
}
