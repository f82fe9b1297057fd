package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Event is a line of cr events --json.
type Event struct {
	Time     string `json:"time"`
	Type     string `json:"type"`
	Path     string `json:"path"`
	ID       string `json:"id"`
	ExitCode *int   `json:"exit_code"`
	Signal   string `json:"signal"`
	Count    int64  `json:"count"`
	OnEmpty  string `json:"on_empty"`
	Image    string `json:"image"`
	Store    string `json:"store"`
	Snapshot string `json:"snapshot"`
}

// eventsOf runs cr events --json with args and parses its lines, checking
// their times.
func eventsOf(t *testing.T, crf func(...string) string, args ...string) []Event {
	t.Helper()
	var evs []Event
	for _, line := range strings.Split(strings.TrimSpace(crf(append([]string{"events", "--json"}, args...)...)), "\n") {
		if line == "" {
			continue
		}
		var ev Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("cr events --json: %v: %s", err, line)
		}
		if _, err := time.Parse(time.RFC3339Nano, ev.Time); err != nil || !strings.HasSuffix(ev.Time, "Z") {
			t.Errorf("event time %q is not RFC 3339 UTC: %v", ev.Time, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func events(t *testing.T, args ...string) []Event {
	t.Helper()
	return eventsOf(t, func(a ...string) string { return mustCr(t, a...) }, args...)
}

func types(evs []Event) string {
	var s []string
	for _, e := range evs {
		s = append(s, e.Type)
	}
	return strings.Join(s, " ")
}

// A job's life, in order, from the journal alone.
func TestEventsLifecycle(t *testing.T) {
	start(t, "/evl", "sleep", "1000")
	start(t, "/evother", "sleep", "1000")
	mustCr(t, "freeze", "/evl")
	mustCr(t, "thaw", "/evl")
	img := image(t)
	mustCr(t, "checkpoint", "--leave-running", "/evl", "-o", img)
	mustCr(t, "kill", "-s", "TERM", "/evl")
	waitFor(t, 20*time.Second, "/evl to go", func() bool { _, ok := ls(t)["/evl"]; return !ok })
	evs := events(t, "/evl")
	if got, want := types(evs), "started frozen thawed checkpointed exited empty removed"; got != want {
		t.Fatalf("cr events /evl: %q, want %q\n%+v", got, want, evs)
	}
	for _, e := range evs {
		if e.Path != "/evl" || e.ID != evs[0].ID || e.ID == "" {
			t.Errorf("event %+v: want path /evl and the node's id", e)
		}
	}
	if e := evs[3]; e.Image != img {
		t.Errorf("checkpointed: image %q, want %q", e.Image, img)
	}
	if e := evs[4]; e.ExitCode == nil || *e.ExitCode != 143 || e.Signal != "SIGTERM" {
		t.Errorf("exited: %+v, want exit 143 by SIGTERM", e)
	}
	if e := evs[5]; e.OnEmpty != "delete" || e.ExitCode == nil || *e.ExitCode != 143 {
		t.Errorf("empty: %+v", e)
	}
	// The text form; --since; another container's events are not /evl's.
	out := mustCr(t, "events", "/evl")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 7 || !strings.HasSuffix(lines[4], "  exited        /evl  exit_code=143 signal=SIGTERM") {
		t.Errorf("cr events /evl:\n%s", out)
	}
	if evs := events(t, "--since", "1h"); !strings.Contains(types(evs), "started started") {
		t.Errorf("cr events --since 1h: %s", types(evs))
	}
	if evs := events(t, "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); len(evs) != 0 {
		t.Errorf("events from the future: %+v", evs)
	}
	wantFail(t, 2, `invalid --since "yesterday"`, "events", "--since", "yesterday")
}

// Inside a container, cr events shows only what is below it, named as it
// names it.
func TestEventsViewer(t *testing.T) {
	start(t, "/evv", "sleep", "1000")
	start(t, "/evv/inner", "sleep", "1000")
	start(t, "/evvx", "sleep", "1000")
	mustCr(t, "freeze", "/evv/inner")
	mustCr(t, "thaw", "/evv/inner")
	inside := func(a ...string) string {
		r := cr(t, append([]string{"enter", "/evv", "--", crBin}, a...)...)
		if r.code != 0 {
			t.Fatalf("cr %v inside /evv: %s", a, r)
		}
		return r.out
	}
	evs := eventsOf(t, inside)
	var got []string
	for _, e := range evs {
		got = append(got, e.Type+" "+e.Path)
	}
	if want := "started /inner,frozen /inner,thawed /inner"; strings.Join(got, ",") != want {
		t.Errorf("cr events inside /evv: %q, want %q", strings.Join(got, ","), want)
	}
}

// A job over its memory limit is OOM-killed, and the journal says so
// before it says that the job exited; in a --mount container too, whose
// init sees only its own leaf's counters.
func TestEventsOOM(t *testing.T) {
	t.Run("plain", func(t *testing.T) { testEventsOOM(t, "/evoom", true) })
	t.Run("mount", func(t *testing.T) { testEventsOOM(t, "/evoomm", false, "--mount") })
}

func testEventsOOM(t *testing.T, path string, wantMax bool, flags ...string) {
	args := append([]string{"run", "--memory", "64M", "--on-empty", "keep"}, flags...)
	mustCr(t, append(args, path, "--", jobBin, "--report", filepath.Join(t.TempDir(), "r"), "--mem", "128")...)
	killAtCleanup(t, path)
	waitFor(t, 60*time.Second, "the job to be killed", func() bool {
		return strings.Contains(types(events(t, path)), "empty")
	})
	evs := events(t, path)
	var oom, exited int = -1, -1
	for i, e := range evs {
		switch e.Type {
		case "oom_kill":
			oom = i
			if e.Count < 1 {
				t.Errorf("oom_kill count %d", e.Count)
			}
		case "exited":
			exited = i
			if e.Signal != "SIGKILL" || e.ExitCode == nil || *e.ExitCode != 137 {
				t.Errorf("exited: %+v, want killed by SIGKILL", e)
			}
		}
	}
	if oom < 0 || exited < 0 || oom > exited {
		t.Errorf("cr events %s: %s: want oom_kill before exited", path, types(evs))
	}
	if wantMax && !strings.Contains(types(evs), "memory_max") {
		t.Errorf("cr events %s: %s: no memory_max", path, types(evs))
	}
}

// cr stats --json reports the memory a job uses, its pids and CPU time.
func TestStatsMemory(t *testing.T) {
	startJob(t, "/stm", "--mem", "64")
	var rss int64
	var job Proc
	for _, p := range ps(t, "/stm") {
		if strings.Contains(p.Command, "testjob") {
			job = p
		}
	}
	if job.HostPid == 0 {
		t.Fatalf("no test job in cr ps /stm: %+v", ps(t, "/stm"))
	}
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(job.HostPid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			rss = kb << 10
		}
	}
	f.Close()
	out := mustCr(t, "stats", "--json", "/stm")
	var st struct {
		Path   string  `json:"path"`
		Time   string  `json:"time"`
		CPU    float64 `json:"cpu_percent"`
		Memory struct {
			UsageBytes int64 `json:"usage_bytes"`
			PeakBytes  int64 `json:"peak_bytes"`
		} `json:"memory"`
		Pids struct {
			Current int64 `json:"current"`
		} `json:"pids"`
		CPUStats struct {
			Usage float64 `json:"usage_seconds"`
		} `json:"cpu"`
	}
	if n := strings.Count(out, "\n"); n != 1 {
		t.Fatalf("cr stats --json /stm printed %d lines:\n%s", n, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if st.Path != "/stm" || st.Memory.UsageBytes < rss*9/10 || st.Memory.UsageBytes > rss*11/10 || st.Memory.PeakBytes < st.Memory.UsageBytes {
		t.Errorf("cr stats: %+v; the job's RSS is %d", st, rss)
	}
	if st.Pids.Current < 2 || st.CPUStats.Usage <= 0 {
		t.Errorf("cr stats: pids %d, cpu %v s", st.Pids.Current, st.CPUStats.Usage)
	}
	table := mustCr(t, "stats", "/stm")
	if !strings.HasPrefix(table, "PATH  STATE    CPU%  CPU") || !strings.Contains(table, "\n/stm  running  ") {
		t.Errorf("cr stats /stm:\n%s", table)
	}
	// --watch with --json: a line per refresh until interrupted.
	ctx, cancel := context.WithTimeout(context.Background(), 1100*time.Millisecond)
	defer cancel()
	c := exec.CommandContext(ctx, crBin, "stats", "--watch", "--json", "--interval", "200ms", "/stm")
	c.Env, c.Dir = append(os.Environ(), env...), workDir
	watched, _ := c.Output()
	var last time.Time
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(watched)), "\n") {
		var w struct {
			Path string    `json:"path"`
			Time time.Time `json:"time"`
			CPU  float64   `json:"cpu_percent"`
		}
		if err := json.Unmarshal([]byte(line), &w); err != nil || w.Path != "/stm" || !w.Time.After(last) {
			t.Errorf("cr stats --watch --json line %q: %v", line, err)
		}
		last = w.Time
		n++
	}
	if n < 3 || n > 6 {
		t.Errorf("cr stats --watch --interval 200ms printed %d lines in 1.1 s:\n%s", n, watched)
	}
	wantFail(t, 2, "invalid --interval 1ms", "stats", "--watch", "--interval", "1ms")
}

// --on-empty notify keeps the node and records its empty event.
func TestOnEmptyNotify(t *testing.T) {
	mustCr(t, "run", "--on-empty", "notify", "/notif", "--", "sh", "-c", "exit 3")
	killAtCleanup(t, "/notif")
	waitFor(t, 20*time.Second, "/notif's job to exit", func() bool {
		e := ls(t)["/notif"]
		return e.ExitCode != nil
	})
	time.Sleep(500 * time.Millisecond)
	e, ok := ls(t)["/notif"]
	if !ok || e.State != "empty" || *e.ExitCode != 3 {
		t.Fatalf("after its job exited, /notif is %+v (present %v), want kept, empty, exit 3", e, ok)
	}
	evs := events(t, "/notif")
	if types(evs) != "started exited empty" {
		t.Fatalf("cr events /notif: %s", types(evs))
	}
	if e := evs[2]; e.OnEmpty != "notify" || e.ExitCode == nil || *e.ExitCode != 3 {
		t.Errorf("empty event %+v", e)
	}
}

// --on-empty-exec runs its command once, with the container's path and
// exit status, outside the node (which goes meanwhile).
func TestOnEmptyExec(t *testing.T) {
	out := filepath.Join(t.TempDir(), "hook")
	mustCr(t, "run", "--on-empty-exec", `echo "$# $1 $2 $CR_PATH $CR_EXIT_STATUS $CR_ON_EMPTY" >> `+out+`; sleep 2`, "/hook", "--", "sh", "-c", "exit 5")
	killAtCleanup(t, "/hook")
	waitFor(t, 20*time.Second, "the command to run", func() bool {
		_, err := os.Stat(out)
		return err == nil
	})
	// The node does not wait for the command: it is empty and goes.
	if e, ok := ls(t)["/hook"]; ok {
		t.Errorf("/hook is still there while its command runs: %+v", e)
	}
	waitFor(t, 20*time.Second, "the command to end", func() bool {
		return strings.Contains(types(events(t, "/hook")), "empty_exec")
	})
	b, _ := os.ReadFile(out)
	if got := string(b); got != "2 /hook 5 /hook 5 delete\n" {
		t.Errorf("the command wrote %q", got)
	}
	evs := events(t, "/hook")
	if got := types(evs); got != "started exited empty removed empty_exec" {
		t.Errorf("cr events /hook: %s", got)
	}
	if e := evs[len(evs)-1]; e.ExitCode == nil || *e.ExitCode != 0 {
		t.Errorf("empty_exec %+v", e)
	}
	log, _ := os.ReadFile(filepath.Join(workDir, "state", "on-empty-exec.log"))
	if !strings.Contains(string(log), "/hook: on-empty-exec: echo ") {
		t.Errorf("on-empty-exec.log:\n%s", log)
	}
}

// --blkio-weight and cr set blkio-weight=N write the weight the host has.
func TestBlkioWeight(t *testing.T) {
	l := limitsLayout(t)
	if !l.V2["io"] && l.V1["io"] == "" {
		t.Skip("no io or blkio controller on this host")
	}
	start(t, "/bw", "sleep", "1000")
	r := cr(t, "run", "--blkio-weight", "300", "/bw/c", "--", "sleep", "1000")
	if r.code == 6 && strings.Contains(r.err, "blkio-weight needs") {
		t.Skipf("no weight file here: %s", r.err)
	}
	if r.code != 0 {
		t.Fatalf("cr run --blkio-weight: %s", r)
	}
	got, err := l.Read(nodeRel(t, "/bw/c"))
	if err != nil || got.BlkioWeight != 300 {
		t.Errorf("read back %+v, %v; want blkio weight 300", got, err)
	}
	if out := mustCr(t, "set", "/bw/c", "blkio-weight=50"); out != "/bw/c: blkio-weight=50\n" {
		t.Errorf("cr set printed %q", out)
	}
	if got, _ := l.Read(nodeRel(t, "/bw/c")); got.BlkioWeight != 50 {
		t.Errorf("after cr set: %+v", got)
	}
	wantFail(t, 2, `blkio-weight "5" (want 10 to 1000)`, "set", "/bw/c", "blkio-weight=5")
	inLimitedCgroups(t, l, "/bw/c")
	// The weight travels in the image and is set again before the
	// restored job resumes.
	img := image(t)
	mustCr(t, "checkpoint", "/bw/c", "-o", img)
	if _, ok := ls(t)["/bw/c"]; ok {
		t.Fatal("/bw/c still there after its checkpoint")
	}
	mustCr(t, "restore", img)
	if got, err := l.Read(nodeRel(t, "/bw/c")); err != nil || got.BlkioWeight != 50 {
		t.Errorf("after restore: %+v, %v; want blkio weight 50", got, err)
	}
	inLimitedCgroups(t, l, "/bw/c")
}

// --on-empty-exec travels in the image: the restored container runs it.
func TestOnEmptyExecRestored(t *testing.T) {
	out := filepath.Join(t.TempDir(), "hook")
	mustCr(t, "run", "--on-empty", "notify", "--on-empty-exec", `echo "$1 $2" >> `+out, "/hookck", "--", "sleep", "1000")
	killAtCleanup(t, "/hookck")
	img := image(t)
	mustCr(t, "checkpoint", "/hookck", "-o", img)
	mustCr(t, "restore", "--as", "/hookck2", img)
	killAtCleanup(t, "/hookck2")
	mustCr(t, "kill", "-s", "TERM", "/hookck2")
	waitFor(t, 20*time.Second, "the command to run", func() bool {
		b, _ := os.ReadFile(out)
		return len(b) > 0
	})
	time.Sleep(200 * time.Millisecond)
	if b, _ := os.ReadFile(out); string(b) != "/hookck2 143\n" {
		t.Errorf("the restored container's command wrote %q", b)
	}
	if e, ok := ls(t)["/hookck2"]; !ok || e.State != "empty" {
		t.Errorf("/hookck2 under notify: %+v (present %v), want kept and empty", e, ok)
	}
}
