// Command bench measures cr against raw CRIU and against what this machine
// can do, in one run: for each workload it dumps and restores the job with
// the CRIU binary directly (images in tmpfs), checkpoints and restores it
// with cr (one compressed image file), migrates it with cr between two
// network namespaces joined by a veth pair, and measures the ceilings of
// the same run (tmpfs writes, TCP over loopback and over the veth, zstd on
// the workload's own memory). It prints tables and the targets of
// docs/performance.md with PASS or MISS, and writes results.json and
// chart.svg to -out.
//
// It runs as root, in a private cr tree (its own state directories, cgroup
// parents, staging areas and network namespaces), and removes everything it
// created, also when interrupted.
//
//	go run ./bench -cr bin/cr -out bench/out [-quick] [-only mem-1G,trivial]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	CR      string // the cr binary under test
	CRIU    string // the CRIU binary for the raw runs ("" = as cr finds it)
	Out     string // output directory
	TestJob string // a prebuilt e2e/testjob ("" = build it)
	Quick   bool   // skip the 4 GiB workload
	Runs    int    // runs per workload; the median is reported
	From    string // re-report a results.json instead of measuring
	Only    []string
}

func main() {
	var o options
	var only string
	flag.StringVar(&o.CR, "cr", "bin/cr", "cr binary to measure")
	flag.StringVar(&o.CRIU, "criu", "", "CRIU binary for the raw runs (default: the one cr finds)")
	flag.StringVar(&o.Out, "out", "bench/out", "directory for results.json, chart.svg and summary.txt")
	flag.StringVar(&o.TestJob, "testjob", "", "prebuilt e2e/testjob binary (default: build it with go build)")
	flag.BoolVar(&o.Quick, "quick", false, "skip the 4 GiB workload")
	flag.IntVar(&o.Runs, "runs", 4, "runs per workload, half as many for "+bigWorkload+" (the median of each number is reported)")
	flag.StringVar(&o.From, "from", "", "measure nothing: print the tables and write the outputs again from this results.json")
	flag.StringVar(&only, "only", "", "comma-separated workloads to run ("+strings.Join(workloadNames(), ", ")+")")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if o.Runs < 1 {
		fmt.Fprintln(os.Stderr, "bench: -runs must be at least 1")
		os.Exit(2)
	}
	if only != "" {
		o.Only = strings.Split(only, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// run measures everything and writes the outputs. It returns exit status
// 1 when a measurement failed (the outputs are still written).
func run(ctx context.Context, o options) (int, error) {
	if o.From != "" {
		return 0, rereport(o)
	}
	if os.Geteuid() != 0 {
		return 1, errors.New("must run as root (cgroups, namespaces, CRIU)")
	}
	wls, err := selectWorkloads(o.Only, o.Quick)
	if err != nil {
		return 2, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return 1, fmt.Errorf("create output dir: %w", err)
	}
	start := time.Now()
	e, err := newEnv(ctx, o)
	if err != nil {
		return 1, err
	}
	defer func() {
		if leaks := e.Close(); leaks != "" {
			fmt.Fprintln(os.Stderr, "bench: warning: had to remove what was left behind:", leaks)
		}
	}()
	res := &Results{Started: start.UTC().Format(time.RFC3339), Host: hostInfo(ctx, e), Quick: o.Quick, Runs: o.Runs}
	logf("host: %s, %d cores, %s RAM, kernel %s, CRIU %s, cr %s", res.Host.CPU, res.Host.Cores,
		human(res.Host.MemBytes), res.Host.Kernel, res.Host.CRIU, res.Host.CR)

	logf("ceilings: tmpfs, TCP (loopback, veth, TLS over veth), sha256")
	res.Ceilings, err = measureCeilings(ctx, e)
	if err != nil {
		return 1, fmt.Errorf("measure ceilings: %w", err)
	}
	failed := false
	for _, w := range wls {
		if ctx.Err() != nil {
			break
		}
		logf("workload %s: %s", w.Name, w.Desc)
		wr := e.measure(ctx, w, runsFor(w.Name, o.Runs))
		res.Workloads = append(res.Workloads, wr)
		if len(wr.Errors) > 0 {
			failed = true
			for _, msg := range wr.Errors {
				logf("  %s: FAILED: %s", w.Name, msg)
			}
		}
	}
	res.Seconds = time.Since(start).Seconds()
	res.Targets = evaluateTargets(res)

	var sb strings.Builder
	writeTables(&sb, res)
	fmt.Print("\n" + sb.String())
	if ctx.Err() != nil {
		return 130, errors.New("interrupted: the outputs of the last complete run are left as they were")
	}
	if err := writeOutputs(o.Out, res, sb.String()); err != nil {
		return 1, err
	}
	fmt.Printf("\nwrote %s, %s and %s\n", filepath.Join(o.Out, "results.json"),
		filepath.Join(o.Out, "chart.svg"), filepath.Join(o.Out, "summary.txt"))
	if failed {
		return 1, errors.New("some measurements failed (see above)")
	}
	return 0, nil
}

// rereport prints and writes the outputs of an earlier run again, with
// the targets evaluated anew.
func rereport(o options) error {
	b, err := os.ReadFile(o.From)
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("read %s: %w", o.From, err)
	}
	res.Targets = evaluateTargets(&res)
	var sb strings.Builder
	writeTables(&sb, &res)
	fmt.Print(sb.String())
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	return writeOutputs(o.Out, &res, sb.String())
}

// logf prints a progress line to stderr.
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}
