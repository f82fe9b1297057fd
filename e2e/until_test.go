package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Under the default mode (--until job) a job that daemonizes takes its
// daemon with it: the container ends when the first process exits, with
// that process's exit status.
func TestUntilJobEndsDaemon(t *testing.T) {
	report := filepath.Join(t.TempDir(), "report.json")
	mustCr(t, "run", "--on-empty", "keep", "/dj", "--", jobBin, "--report", report, "--daemonize")
	killAtCleanup(t, "/dj")
	waitFor(t, 30*time.Second, "/dj to end", func() bool { return ls(t)["/dj"].State == "empty" })
	e := ls(t)["/dj"]
	if e.Processes != 0 || e.ExitCode == nil || *e.ExitCode != 0 || e.Until != "job" {
		t.Errorf("/dj after its job exited: %+v, want no processes, exit code 0, until job", e)
	}
	// The daemon did start (the job exits only after its first report)
	// and was killed with the container.
	if _, err := os.Stat(report); err != nil {
		t.Errorf("the daemon never reported: %v", err)
	}
	if out := mustCr(t, "logs", "/dj"); !strings.Contains(out, "daemon ") || !strings.Contains(out, " started") {
		t.Errorf("cr logs /dj: %q, want the job's \"daemon N started\"", out)
	}
}

// Under --until empty the container outlives its job while the daemon
// runs, keeps the job's exit status, and ends (applying the on-empty
// policy) when its last process is gone.
func TestUntilEmptyKeepsDaemon(t *testing.T) {
	j := &job{path: "/de", report: filepath.Join(t.TempDir(), "report.json")}
	mustCr(t, "run", "--until", "empty", "--on-empty", "keep", j.path, "--", jobBin, "--report", j.report, "--daemonize")
	killAtCleanup(t, j.path)
	j.waitReady(t)
	waitFor(t, 30*time.Second, "the job's exit status in /de", func() bool { return ls(t)[j.path].ExitCode != nil })
	e := ls(t)[j.path]
	if e.State != "running" || e.Processes != 2 || *e.ExitCode != 0 || e.Until != "empty" {
		t.Fatalf("/de after its job exited: %+v, want running, 2 processes (init and daemon), exit code 0, until empty", e)
	}
	r := j.ask(t)
	if r.PPid != 1 {
		t.Errorf("the daemon's parent is %d, want the container's init (1)", r.PPid)
	}
	if !j.progresses(t, r.Counter) {
		t.Errorf("the daemon does not run")
	}
	mustCr(t, "kill", "-s", "KILL", j.path)
	waitFor(t, 30*time.Second, "/de to end after its daemon", func() bool { return ls(t)[j.path].State == "empty" })
	if e := ls(t)[j.path]; e.Processes != 0 || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Errorf("/de after its daemon was killed: %+v, want no processes and the job's exit code 0", e)
	}

	// --on-empty delete: the node goes when the last process does, not
	// when the job exits.
	mustCr(t, "run", "--until", "empty", "/dd", "--", "sh", "-c", "sleep 2 & exit 3")
	killAtCleanup(t, "/dd")
	waitFor(t, 10*time.Second, "the job's exit status in /dd", func() bool {
		e, ok := ls(t)["/dd"]
		return !ok || e.ExitCode != nil
	})
	e, ok := ls(t)["/dd"]
	if !ok || e.State != "running" || *e.ExitCode != 3 {
		t.Fatalf("/dd after sh exited: %+v (exists %v), want running with exit code 3 while sleep runs", e, ok)
	}
	waitFor(t, 10*time.Second, "/dd to go after sleep", func() bool { _, ok := ls(t)["/dd"]; return !ok })
}

// redisCli runs redis-cli in the network namespace of the container whose
// init has host pid init.
func redisCli(t *testing.T, init int, args ...string) string {
	t.Helper()
	a := append([]string{"--net=/proc/" + strconv.Itoa(init) + "/ns/net", "redis-cli", "-h", "127.0.0.1", "-p", "6379"}, args...)
	out, err := exec.Command("nsenter", a...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func initPid(t *testing.T, path string) int {
	t.Helper()
	for _, p := range ps(t, path) {
		if p.Pid == 1 {
			return p.HostPid
		}
	}
	t.Fatalf("%s has no init", path)
	return 0
}

// redis-server --daemonize yes (the launcher exits once the server has
// forked) in an --until empty container is checkpointed with its server
// and restored with its 100k keys; the image and the restored container
// keep the mode.
// redisSample are the keys the redis tests read back.
var redisSample = []string{"key:1", "key:2", "key:777", "key:31337", "key:50000", "key:99999", "key:100000"}

// startRedis starts redis-server --daemonize yes in an --until empty
// container at path with its own network, loads 100k keys and returns
// what MGET of redisSample gives.
func startRedis(t *testing.T, path string) string {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed (scripts/provision.sh installs it)")
	}
	dir := t.TempDir()
	mustCr(t, "run", "--until", "empty", "--net", path, "--", "redis-server", "--daemonize", "yes",
		"--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no", "--logfile", "",
		"--dir", dir, "--pidfile", filepath.Join(dir, "redis.pid"))
	killAtCleanup(t, path)
	waitFor(t, 30*time.Second, "redis-server to daemonize", func() bool {
		e := ls(t)[path]
		return e.ExitCode != nil && e.Processes == 2
	})
	if e := ls(t)[path]; e.State != "running" || *e.ExitCode != 0 || e.Until != "empty" {
		t.Fatalf("%s after redis-server daemonized: %+v, want running, exit code 0, until empty", path, e)
	}
	pid := initPid(t, path)
	if got := redisCli(t, pid, "PING"); got != "PONG" {
		t.Fatalf("redis PING: %q", got)
	}
	load := `for i=1,100000 do redis.call('SET', 'key:'..i, 'value:'..(i*7919 % 1000003)) end return redis.call('DBSIZE')`
	if got := redisCli(t, pid, "EVAL", load, "0"); got != "100000" {
		t.Fatalf("loading 100000 keys: %q", got)
	}
	want := redisCli(t, pid, append([]string{"MGET"}, redisSample...)...)
	if strings.Count(want, "value:") != len(redisSample) {
		t.Fatalf("MGET before the checkpoint: %q", want)
	}
	return want
}

// redis-server --daemonize yes (the launcher exits once the server has
// forked) in an --until empty container is checkpointed with its server
// and restored with its 100k keys; the image and the restored container
// keep the mode.
func TestUntilEmptyRedisCheckpoint(t *testing.T) {
	const path = "/redis"
	want := startRedis(t, path)
	sample := redisSample
	before := insidePids(t, path)
	if len(before) != 2 {
		t.Fatalf("%s has processes %v, want the init and redis-server", path, before)
	}

	img := image(t)
	mustCr(t, "checkpoint", path, "-o", img)
	gone(t, path)
	rep := inspectJSON(t, mustCr(t, "inspect", "--json", img))
	if len(rep.Containers) != 1 || rep.Containers[0].Until != "empty" {
		t.Errorf("cr inspect: containers %+v, want one with until empty", rep.Containers)
	}
	if out := mustCr(t, "inspect", img); !strings.Contains(out, ", until empty") {
		t.Errorf("cr inspect does not show the mode:\n%s", out)
	}

	mustCr(t, "restore", img)
	if e := ls(t)[path]; e.State != "running" || e.Until != "empty" || e.Processes != 2 {
		t.Errorf("restored %s: %+v, want running, until empty, 2 processes", path, e)
	}
	if after := insidePids(t, path); !slices.Equal(after, before) {
		t.Errorf("restored pids %v, want %v", after, before)
	}
	pid := initPid(t, path)
	if got := redisCli(t, pid, "DBSIZE"); got != "100000" {
		t.Errorf("DBSIZE after restore: %q, want 100000", got)
	}
	if got := redisCli(t, pid, append([]string{"MGET"}, sample...)...); got != want {
		t.Errorf("MGET after restore:\n%s\nwant:\n%s", got, want)
	}
	if got := redisCli(t, pid, "SET", "after", "restore"); got != "OK" {
		t.Errorf("SET after restore: %q", got)
	}
	// The restored init still lives until empty: a graceful shutdown of
	// the server ends the container (and the default policy removes it).
	_ = exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(pid)+"/ns/net", "redis-cli", "-p", "6379", "SHUTDOWN", "NOSAVE").Run()
	waitFor(t, 30*time.Second, path+" to go after its server", func() bool { _, ok := ls(t)[path]; return !ok })
}

// The same server migrates to another host, where a client in its network
// namespace finds every key, and where the container still lives until
// its server is gone.
func TestUntilEmptyRedisMigrate(t *testing.T) {
	h := newHost(t, "token")
	const path = "/mredis"
	want := startRedis(t, path)
	before := insidePids(t, path)
	mustCr(t, migrateArgs(h, path)...)
	gone(t, path)
	if e := h.ls(t)[path]; e.State != "running" || e.Until != "empty" || e.Processes != 2 {
		t.Errorf("migrated %s: %+v, want running, until empty, 2 processes", path, e)
	}
	var after []int
	var pid int
	for _, p := range h.ps(t, path) {
		after = append(after, p.Pid)
		if p.Pid == 1 {
			pid = p.HostPid
		}
	}
	slices.Sort(after)
	if !slices.Equal(after, before) || pid == 0 {
		t.Fatalf("migrated pids %v, want %v", after, before)
	}
	if got := redisCli(t, pid, "DBSIZE"); got != "100000" {
		t.Errorf("DBSIZE after migration: %q, want 100000", got)
	}
	if got := redisCli(t, pid, append([]string{"MGET"}, redisSample...)...); got != want {
		t.Errorf("MGET after migration:\n%s\nwant:\n%s", got, want)
	}
	_ = exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(pid)+"/ns/net", "redis-cli", "-p", "6379", "SHUTDOWN", "NOSAVE").Run()
	waitFor(t, 30*time.Second, path+" to go at the destination after its server", func() bool { _, ok := h.ls(t)[path]; return !ok })
}
