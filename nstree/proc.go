package nstree

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// Process is one process of a container.
type Process struct {
	HostPid int    `json:"host_pid"`
	Pid     int    `json:"pid"` // the pid inside the container's pid namespace
	Command string `json:"command"`
}

// ProcessInfo describes a host pid; ok is false if it is gone.
func ProcessInfo(pid int) (Process, bool) {
	p := Process{HostPid: pid, Pid: pid}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return p, false
	}
	for _, line := range strings.Split(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				p.Pid, _ = strconv.Atoi(f[len(f)-1])
			}
		}
	}
	cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	p.Command = strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
	if strings.HasPrefix(p.Command, "cr-init "+InitArg+" ") {
		p.Command = "cr-init" // its arguments are cr's business, not the user's
	}
	if p.Command == "" {
		c, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		p.Command = "[" + strings.TrimSpace(string(c)) + "]"
	}
	return p, true
}

// Usage is what a set of processes uses.
type Usage struct {
	Processes int           `json:"processes"`
	RSSBytes  int64         `json:"memory_bytes"`
	CPU       time.Duration `json:"cpu_ns"`
}

const clockTicks = 100 // USER_HZ, fixed by the kernel ABI on Linux

// UsageOf sums resident memory and CPU time (including reaped children).
func UsageOf(pids []int) Usage {
	var u Usage
	for _, pid := range pids {
		base := "/proc/" + strconv.Itoa(pid)
		st, err := os.ReadFile(base + "/stat")
		if err != nil {
			continue
		}
		u.Processes++
		s := string(st)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			f := strings.Fields(s[i+1:])
			// fields after ")" start at field 3 (state): utime is field 14.
			var ticks int64
			for _, k := range []int{11, 12, 13, 14} {
				if k < len(f) {
					v, _ := strconv.ParseInt(f[k], 10, 64)
					ticks += v
				}
			}
			u.CPU += time.Duration(ticks) * time.Second / clockTicks
		}
		if status, err := os.ReadFile(base + "/status"); err == nil {
			for _, line := range strings.Split(string(status), "\n") {
				if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
					u.RSSBytes += kb * 1024
				}
			}
		}
	}
	return u
}
