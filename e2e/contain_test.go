package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startJobWith starts the test workload at path with cr run's flags.
func startJobWith(t testing.TB, flags []string, path string, args ...string) *job {
	t.Helper()
	j := &job{path: path, report: filepath.Join(t.TempDir(), "report.json")}
	runArgs := append(append([]string{"run"}, flags...), path, "--", jobBin, "--report", j.report)
	out := mustCr(t, append(runArgs, args...)...)
	if strings.TrimSpace(out) != path {
		t.Fatalf("cr run printed %q, want %q", out, path)
	}
	killAtCleanup(t, path)
	j.waitReady(t)
	return j
}

// Every namespace option of cr run gives a container that checkpoints and
// restores with its job's state intact.
func TestCheckpointNamespaces(t *testing.T) {
	for _, flags := range [][]string{{"--mount"}, {"--net"}, {"--mount", "--net"}} {
		name := strings.ReplaceAll(strings.Join(flags, ""), "--", "")
		t.Run(name, func(t *testing.T) {
			path := "/ns-" + name
			cf := filepath.Join(t.TempDir(), "counter")
			j := startJobWith(t, flags, path, "--counter-file", cf, "--children", "1", "--mem", "8", "--ipc")
			before := j.ask(t)
			pidsBefore := insidePids(t, path)
			img := image(t)
			mustCr(t, "checkpoint", path, "-o", img)
			gone(t, path)
			mustCr(t, "restore", img)
			after := j.ask(t)
			if after.Pid != before.Pid || fmt.Sprint(after.Children) != fmt.Sprint(before.Children) {
				t.Errorf("pids changed: job %d->%d, children %v->%v", before.Pid, after.Pid, before.Children, after.Children)
			}
			if got := insidePids(t, path); fmt.Sprint(got) != fmt.Sprint(pidsBefore) {
				t.Errorf("pids inside the container: %v before, %v after restore", pidsBefore, got)
			}
			if after.MemSHA != before.MemSHAAtInit {
				t.Errorf("memory checksum after restore %s, want %s", after.MemSHA, before.MemSHAAtInit)
			}
			if after.ShmID != before.ShmID || after.ShmData != before.ShmData || after.MsgID != before.MsgID {
				t.Errorf("IPC objects: shm %d %q, msg %d before; shm %d %q, msg %d after", before.ShmID, before.ShmData, before.MsgID, after.ShmID, after.ShmData, after.MsgID)
			}
			if after.Hostname != path[1:] {
				t.Errorf("hostname after restore = %q", after.Hostname)
			}
			if after.Counter < before.Counter || !j.progresses(t, after.Counter) {
				t.Errorf("counter %d before, %d after restore, and does it progress?", before.Counter, after.Counter)
			}
			if d := after.CounterFile - after.Counter; d < -1 || d > 1 {
				t.Errorf("counter file %d disagrees with memory %d after restore", after.CounterFile, after.Counter)
			}
			// The restored container checkpoints again.
			img2 := image(t)
			mustCr(t, "checkpoint", "--leave-running", path, "-o", img2)
		})
	}
}

// fdTargets lists the targets of a process's open descriptors, by number.
func fdTargets(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[int]string{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		m[n], _ = os.Readlink(filepath.Join(dir, e.Name()))
	}
	return m
}

// cr run hands the job only what cr gives it, not the caller's descriptors.
func TestRunClosesInheritedFds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	tf, err := os.Create(filepath.Join(t.TempDir(), "inherited"))
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	for _, flags := range [][]string{nil, {"--mount"}} {
		path := "/fds" + strings.Join(flags, "")
		path = strings.ReplaceAll(path, "--", "-")
		c := exec.Command(crBin, append(append([]string{"run"}, flags...), path, "--", "sleep", "1000")...)
		c.Env = append(os.Environ(), env...)
		c.ExtraFiles = []*os.File{tf, tf, lf} // fds 3, 4 and 5 (the TCP listener)
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("cr run with inherited fds: %v\n%s", err, out)
		}
		killAtCleanup(t, path)
		sock, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", lf.Fd()))
		file, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", tf.Fd()))
		procs := ps(t, path)
		if len(procs) != 2 {
			t.Fatalf("cr ps %s = %+v", path, procs)
		}
		jobFds := fdTargets(t, procs[1].HostPid)
		var nums []int
		for n := range jobFds {
			nums = append(nums, n)
		}
		slices.Sort(nums)
		if fmt.Sprint(nums) != "[0 1 2]" {
			t.Errorf("%s: the job has fds %v (%v), want only 0, 1 and 2", path, nums, jobFds)
		}
		for n, target := range fdTargets(t, procs[0].HostPid) {
			if target == sock || target == file {
				t.Errorf("%s: the init holds the caller's %s as fd %d", path, target, n)
			}
		}
		mustCr(t, "checkpoint", "--leave-running", path, "-o", image(t))
	}
}

// hostCgroupMounts lists the host's cgroup mount points.
func hostCgroupMounts(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		i := slices.Index(fields, "-")
		if i > 0 && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
			mps = append(mps, fields[4])
		}
	}
	return mps
}

// Root inside a --mount container cannot move itself out of its
// container's cgroup: not into the root of any cgroup hierarchy of the
// host, nor into cr's parent cgroup or its own node's.
func TestCgroupContainment(t *testing.T) {
	list := filepath.Join(t.TempDir(), "targets")
	// The job waits for the list of cgroups to try, tries every one of
	// them as root, says which writes worked, and stays (the same process).
	script := `while [ ! -e "$1" ]; do sleep 0.05; done
for f in $(cat "$1"); do if echo $$ > "$f" 2>/dev/null; then echo "moved by $f"; fi; done
echo tried; exec sleep 1000`
	mustCr(t, "run", "--mount", "/cg/jail", "--", "sh", "-c", script, "sh", list)
	killAtCleanup(t, "/cg")
	procs := ps(t, "/cg/jail")
	if len(procs) < 2 {
		t.Fatalf("cr ps /cg/jail = %+v", procs)
	}
	initPid, jobPid := procs[0].HostPid, procs[1].HostPid
	initCg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", initPid))
	var leaf string
	for _, l := range strings.Split(string(initCg), "\n") {
		if i := strings.Index(l, "/"+cgName+"/"); i >= 0 {
			leaf = l[i:]
		}
	}
	if leaf == "" {
		t.Fatalf("the init is in no cgroup of cr's: %s", initCg)
	}
	// The paths are the host's; inside the container each names the same
	// place, if it can be seen there at all.
	var targets []string
	for _, mp := range hostCgroupMounts(t) {
		for _, dir := range []string{mp, filepath.Join(mp, cgName), filepath.Join(mp, filepath.Dir(leaf))} {
			if p := filepath.Join(dir, "cgroup.procs"); fileExists(p) {
				targets = append(targets, p)
			}
		}
	}
	if err := os.WriteFile(list, []byte(strings.Join(targets, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the job to try", func() bool { return strings.Contains(mustCr(t, "logs", "/cg/jail"), "tried") })
	if logs := mustCr(t, "logs", "/cg/jail"); strings.Contains(logs, "moved") {
		t.Errorf("root inside moved itself:\n%s", logs)
	}
	jobCg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", jobPid))
	if !bytes.Equal(jobCg, initCg) {
		t.Errorf("the job's cgroups after trying %d cgroups:\n%s\nwhere it started (its init's):\n%s", len(targets), jobCg, initCg)
	}
	// Its own view: its container's cgroup is the root of its cgroup namespace.
	if out := mustCr(t, "enter", "/cg/jail", "--", "cat", "/proc/self/cgroup"); !strings.Contains(out, "::/\n") {
		t.Errorf("/proc/self/cgroup inside: %q, want its own cgroup shown as /", out)
	}
	hostNS, _ := os.Readlink("/proc/self/ns/cgroup")
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/cgroup", jobPid)); ns == hostNS {
		t.Errorf("the job shares the host's cgroup namespace %s", ns)
	}
	// Such a container still checkpoints and restores.
	img := image(t)
	mustCr(t, "checkpoint", "/cg", "-o", img)
	mustCr(t, "restore", img)
	if l := ls(t)["/cg/jail"]; l.State != "running" || l.Processes != 2 {
		t.Errorf("/cg/jail after restore: %+v", l)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// A container restored by a cr with other settings (as cr serve on another
// host may have) follows the restoring cr's: its output reaches that
// tree's log, its exit status is recorded there, and its on-empty policy
// applies there.
func TestRestoreOtherSettings(t *testing.T) {
	other := []string{"CR_STATE_DIR=" + filepath.Join(t.TempDir(), "state"), "CR_CGROUP_PARENT=" + cgName + "-other"}
	t.Cleanup(func() {
		for _, mnt := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/freezer"} {
			if dir := filepath.Join(mnt, cgName+"-other"); fileExists(dir) {
				if ents, _ := os.ReadDir(dir); len(subdirs(ents)) > 0 {
					t.Errorf("left behind in %s: %v", dir, subdirs(ents))
				}
				_ = os.Remove(dir)
			}
		}
	})
	lsOther := func() map[string]Entry {
		r := crEnv(t, other, "ls", "--json", "-r")
		var es []Entry
		if r.code != 0 || json.Unmarshal([]byte(r.out), &es) != nil {
			t.Fatalf("cr ls with the other settings: %s", r)
		}
		m := map[string]Entry{}
		for _, e := range es {
			m[e.Path] = e
		}
		return m
	}
	for _, c := range []struct {
		name  string
		flags []string
	}{{"keep", []string{"--on-empty", "keep"}}, {"delete", nil}, {"mount-delete", []string{"--mount"}}} {
		t.Run(c.name, func(t *testing.T) {
			path := "/moved-" + c.name
			release := filepath.Join(t.TempDir(), "release")
			script := `echo before; while [ ! -e "$1" ]; do sleep 0.05; done; echo after; exit 5`
			mustCr(t, append(append([]string{"run"}, c.flags...), path, "--", "sh", "-c", script, "sh", release)...)
			killAtCleanup(t, path)
			t.Cleanup(func() { crEnv(t, other, "kill", path) })
			waitFor(t, 5*time.Second, "the job's first line", func() bool { return mustCr(t, "logs", path) == "before\n" })
			img := image(t)
			mustCr(t, "checkpoint", path, "-o", img)
			if r := crEnv(t, other, "restore", img); r.code != 0 {
				t.Fatalf("restore with the other settings: %s", r)
			}
			if l := lsOther()[path]; l.State != "running" {
				t.Fatalf("%s after restore: %+v", path, l)
			}
			if err := os.WriteFile(release, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if c.name == "keep" {
				var e Entry
				waitFor(t, 10*time.Second, "the job's exit to be recorded", func() bool {
					e = lsOther()[path]
					return e.ExitCode != nil
				})
				if *e.ExitCode != 5 || e.State != "empty" {
					t.Errorf("%s after its job exited: %+v, want empty with exit code 5", path, e)
				}
				if r := crEnv(t, other, "logs", path); r.out != "before\nafter\n" {
					t.Errorf("cr logs after restore = %q, want the output from before and after the move", r.out)
				}
			} else {
				waitFor(t, 10*time.Second, path+" to be removed by its policy", func() bool {
					_, ok := lsOther()[path]
					return !ok
				})
			}
		})
	}
}

func subdirs(ents []os.DirEntry) []string {
	var s []string
	for _, e := range ents {
		if e.IsDir() {
			s = append(s, e.Name())
		}
	}
	return s
}

// openPty opens the master of a new pseudo-terminal.
func openPty(t *testing.T) *os.File {
	t.Helper()
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(m), "ptmx")
}

// cr enter on a terminal gives the shell a terminal of its own, with job
// control: it is the session's controlling terminal and the command the
// shell runs is its foreground process group.
func TestEnterTerminal(t *testing.T) {
	start(t, "/tty", "sleep", "1000")
	master := openPty(t)
	defer master.Close()
	// TIOCGPTPEER opens the slave; its argument is the open flags.
	slaveFd, _, errno := unix.Syscall(unix.SYS_IOCTL, master.Fd(), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY))
	if errno != 0 {
		t.Fatal(errno)
	}
	slave := os.NewFile(slaveFd, "pts")
	c := exec.Command(crBin, "enter", "/tty")
	c.Env = append(os.Environ(), env...)
	c.Stdin, c.Stdout, c.Stderr = slave, slave, slave
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out bytes.Buffer
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			out.Write(buf[:n]) // only this goroutine writes out until done
			if err != nil {
				close(done)
				return
			}
		}
	}()
	// /proc/self/stat of cat: field 7 is its controlling terminal, 5 its
	// process group, 8 the terminal's foreground process group.
	script := "tty; cat /proc/self/stat; echo END$((40+2)); exit 3\n"
	if _, err := master.Write([]byte(script)); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- c.Wait() }()
	var err error
	select {
	case err = <-waited:
	case <-time.After(20 * time.Second):
		_ = c.Process.Kill()
		err = <-waited
		t.Errorf("cr enter on a terminal did not end")
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	got := out.String()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
		t.Errorf("cr enter exit: %v, want status 3", err)
	}
	if strings.Contains(got, "Cannot set tty process group") || strings.Contains(got, "job control turned off") || strings.Contains(got, "not a tty") {
		t.Errorf("the shell has no terminal of its own:\n%s", got)
	}
	if !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "END42") {
		t.Errorf("tty inside printed no terminal:\n%s", got)
	}
	for _, l := range strings.Split(got, "\n") {
		if i := strings.Index(l, ") R "); i >= 0 || strings.Contains(l, "(cat) ") {
			f := strings.Fields(l[strings.LastIndex(l, ")")+1:])
			// f[0] state, f[1] ppid, f[2] pgrp, f[3] session, f[4] tty_nr, f[5] tpgid
			if len(f) < 6 || f[4] == "0" || f[2] != f[5] {
				t.Errorf("cat inside: pgrp %s, tty %s, foreground group %s; want a terminal whose foreground group is cat's:\n%s", f[2], f[4], f[5], l)
			}
			return
		}
	}
	t.Errorf("no stat line of cat in:\n%s", got)
}

// A --mount container started while the host has a named network
// namespace (ip netns add leaves nsfs mounts under /run/netns) still
// checkpoints: those mounts are not part of its mount namespace.
func TestCheckpointMountBesideHostNetns(t *testing.T) {
	name := fmt.Sprintf("cr-e2e-contain-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	j := startJobWith(t, []string{"--mount"}, "/nsfs", "--children", "1")
	before := j.ask(t)
	img := image(t)
	mustCr(t, "checkpoint", "/nsfs", "-o", img)
	mustCr(t, "restore", img)
	if after := j.ask(t); after.Pid != before.Pid || after.Counter < before.Counter {
		t.Errorf("after restore: pid %d counter %d, before: pid %d counter %d", after.Pid, after.Counter, before.Pid, before.Counter)
	}
}
