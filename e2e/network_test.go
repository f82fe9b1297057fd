package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cr-dev/cr/freeze"
)

// A --net job holding a TCP listener and a UDP socket checkpoints and
// restores, and both still work afterwards (CRIU 4.1 fails to dump any
// inet socket on this kernel; the network lock must be nftables, as
// iptables-restore is not installed).
func TestCheckpointInetSockets(t *testing.T) {
	j := &job{path: "/sock", report: filepath.Join(t.TempDir(), "report.json")}
	mustCr(t, "run", "--net", j.path, "--", jobBin, "--report", j.report, "--sockets")
	killAtCleanup(t, j.path)
	before := j.ask(t)
	if before.Sockets != "ok" || before.TCPPort == 0 {
		t.Fatalf("the job's sockets before the checkpoint: %q (port %d)", before.Sockets, before.TCPPort)
	}
	img := image(t)
	mustCr(t, "checkpoint", j.path, "-o", img)
	gone(t, j.path)
	mustCr(t, "restore", img)
	after := j.ask(t)
	if after.Sockets != "ok" {
		t.Errorf("the restored job's sockets: %s", after.Sockets)
	}
	if after.TCPPort != before.TCPPort || after.Pid != before.Pid {
		t.Errorf("restored job: port %d pid %d, want port %d pid %d", after.TCPPort, after.Pid, before.TCPPort, before.Pid)
	}
	if !j.progresses(t, after.Counter) {
		t.Errorf("the restored job does not run")
	}
}

type checkReport struct {
	Ready bool `json:"ready"`
	Items []struct {
		Name  string `json:"name"`
		OK    bool   `json:"ok"`
		Value string `json:"value"`
	} `json:"items"`
}

// cr check finds out by checkpointing scratch jobs that plain processes and
// inet sockets can be checkpointed here, and leaves nothing behind, not
// even what a killed check had left.
func TestCheckProbes(t *testing.T) {
	hier := probeHier(t)
	// What a cr check killed during its probes leaves: its private
	// tree's state directory (unlocked: its owner is gone) and the cgroup
	// parent of the same name.
	dead := "0123456789abcdef"
	staleCg := filepath.Join(hier, "cr-probe-"+dead, "x", ".tasks")
	if err := os.MkdirAll(staleCg, 0o755); err != nil {
		t.Fatal(err)
	}
	scratch := filepath.Join(workDir, "staging", "probe")
	staleState := filepath.Join(scratch, "cr-probe-"+dead, "c")
	if err := os.MkdirAll(staleState, 0o700); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out := mustCr(t, "check", "--json")
	took := time.Since(start)
	var rep checkReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("cr check --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, it := range rep.Items {
		v := "fails"
		if it.OK {
			v = "ok"
		}
		got[it.Name] = v + " " + it.Value
	}
	for name, want := range map[string]string{
		"checkpoint: processes":    "ok works:",
		"checkpoint: inet sockets": "ok works:",
		"checkpoint: --mount":      "ok works:",
		"network lock":             "ok nftables",
	} {
		if !strings.HasPrefix(got[name], want) {
			t.Errorf("cr check: %q is %q, want %q...", name, got[name], want)
		}
	}
	if !rep.Ready {
		t.Errorf("cr check: not ready:\n%s", out)
	}
	t.Logf("cr check took %s", took)
	// Nothing left: no probe cgroups (the stale one neither), no scratch
	// state, nothing in the user's tree.
	ents, _ := os.ReadDir(hier)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "cr-probe-") {
			t.Errorf("cr check left cgroup %s", filepath.Join(hier, e.Name()))
		}
	}
	if ents, _ := os.ReadDir(scratch); len(ents) != 0 {
		t.Errorf("cr check left %d entries in %s", len(ents), scratch)
	}
	if l := ls(t); len(l) != 0 {
		t.Errorf("cr check left containers in the tree: %v", l)
	}
	// And --no-probe probes nothing.
	out = mustCr(t, "check", "--no-probe")
	if strings.Contains(out, "checkpoint: ") {
		t.Errorf("cr check --no-probe probed:\n%s", out)
	}
}

// probeHier is the cgroup hierarchy cr keeps its trees in.
func probeHier(t *testing.T) string {
	h, err := freeze.Detect()
	if err != nil {
		t.Fatal(err)
	}
	return h.Mount
}
