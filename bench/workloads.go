package main

import (
	"fmt"
	"slices"
	"strconv"
)

// Workload is a job the bench creates: e2e/testjob with some flags. Its
// memory is a quarter zeros, half text-like, a quarter random, from a
// fixed seed, every page dirtied (see e2e/testjob).
type Workload struct {
	Name     string
	Desc     string
	MemMiB   int // --mem
	Children int // --children: the job has Children+1 processes
}

// Args are the job's flags.
func (w Workload) Args() []string {
	var a []string
	if w.MemMiB > 0 {
		a = append(a, "--mem", strconv.Itoa(w.MemMiB))
	}
	if w.Children > 0 {
		a = append(a, "--children", strconv.Itoa(w.Children))
	}
	return a
}

// Processes counts the job's processes, the container's init excluded.
func (w Workload) Processes() int { return w.Children + 1 }

// bigWorkload is the workload -quick skips.
const bigWorkload = "mem-4G"

var workloads = []Workload{
	{Name: "trivial", Desc: "one idle process"},
	{Name: "mem-256M", Desc: "256 MiB of dirtied memory", MemMiB: 256},
	{Name: "mem-1G", Desc: "1 GiB of dirtied memory", MemMiB: 1024},
	{Name: bigWorkload, Desc: "4 GiB of dirtied memory", MemMiB: 4096},
	{Name: "procs-50", Desc: "50 processes", Children: 49},
}

// runsFor is how many runs a workload gets: half as many for the 4 GiB
// one, which takes minutes per run.
func runsFor(name string, runs int) int {
	if name == bigWorkload {
		return max(1, runs/2)
	}
	return runs
}

func workloadNames() []string {
	var n []string
	for _, w := range workloads {
		n = append(n, w.Name)
	}
	return n
}

// selectWorkloads returns the workloads to run, in the fixed order.
func selectWorkloads(only []string, quick bool) ([]Workload, error) {
	for _, n := range only {
		if !slices.Contains(workloadNames(), n) {
			return nil, fmt.Errorf("unknown workload %q (have %v)", n, workloadNames())
		}
	}
	var out []Workload
	for _, w := range workloads {
		if len(only) > 0 && !slices.Contains(only, w.Name) {
			continue
		}
		if quick && w.Name == bigWorkload && !slices.Contains(only, bigWorkload) {
			continue
		}
		out = append(out, w)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no workload selected")
	}
	return out, nil
}
