package images

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metadata "github.com/checkpoint-restore/checkpointctl/lib"
	"github.com/checkpoint-restore/go-criu/v7/crit"
)

// findTool returns the first of paths that is an executable file, or the
// name found in PATH; it skips the test when there is none.
func findTool(t *testing.T, name string, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found (looked in %v and PATH)", name, paths)
	}
	return p
}

func checkpointctlPath(t *testing.T) string {
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if home, err := os.UserHomeDir(); err == nil {
			gopath = filepath.Join(home, "go")
		}
	}
	return findTool(t, "checkpointctl", os.Getenv("CHECKPOINTCTL"), filepath.Join(gopath, "bin", "checkpointctl"))
}

// criuVersion returns CRIU's version as a number: 4.1.1 is 40101.
func criuVersion(t *testing.T, criu string) int {
	t.Helper()
	out, err := exec.Command(criu, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", criu, err)
	}
	for line := range strings.Lines(string(out)) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version: ")
		if !ok {
			continue
		}
		var n int
		for i, part := range strings.SplitN(v+".0.0", ".", 4)[:3] {
			d, err := strconv.Atoi(part)
			if err != nil {
				t.Fatalf("criu version %q", v)
			}
			n += d * []int{10000, 100, 1}[i]
		}
		return n
	}
	t.Fatalf("no version in %q", out)
	return 0
}

// dumpSleep starts a sleep in its own session and dumps it with CRIU into
// staging, the way cr lays out a root container: images in checkpoint/,
// dump.log and stats-dump at the top. It returns the sleep's pid and
// command.
func dumpSleep(t *testing.T, criu, staging string) (int, []string) {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	images := filepath.Join(staging, metadata.CheckpointDirectory)
	if err := os.Mkdir(images, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(criu, "dump", "-t", strconv.Itoa(cmd.Process.Pid),
		"-D", images, "-W", staging, "-o", metadata.DumpLogFile, "-v4", "--leave-running").CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(staging, metadata.DumpLogFile))
		if len(log) > 4000 {
			log = log[len(log)-4000:]
		}
		t.Fatalf("criu dump: %v\n%s\ndump.log ends:\n%s", err, out, log)
	}
	return cmd.Process.Pid, cmd.Args
}

// TestCheckpointctl builds a single-container image from a real CRIU dump and
// checks that checkpointctl v1.6.0 shows and inspects it.
func TestCheckpointctl(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("CRIU needs root")
	}
	criu := findTool(t, "criu", os.Getenv("CR_CRIU"), "/usr/local/libexec/cr/criu")
	cctl := checkpointctlPath(t)

	staging := t.TempDir()
	pid, args := dumpSleep(t, criu, staging)
	kernel, arch, features := HostInfo()
	m := &Manifest{
		Created:     time.Now().UTC(),
		CRVersion:   "test",
		CRIUVersion: criuVersion(t, criu),
		Kernel:      kernel,
		Arch:        arch,
		CPUFeatures: features,
		Root:        "/sleeper",
		Containers: []Container{{
			Path: "/", Dir: metadata.CheckpointDirectory, Command: args, Cwd: "/",
			Namespaces: []string{"pid", "ipc", "uts"}, Created: time.Now().Add(-time.Minute).UTC(), InitPid: pid,
		}},
	}
	if err := WriteCheckpointctlFiles(staging, m, "calc_pi"); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "sleeper.img")
	if _, err := WriteFile(context.Background(), img, staging, m, WriteOptions{}); err != nil {
		t.Fatal(err)
	}

	// The real CRIU images survive the round trip.
	dst := t.TempDir()
	if _, err := ExtractFile(context.Background(), img, dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	assertSameTree(t, staging, dst)

	config, _, err := metadata.ReadContainerCheckpointConfigDump(staging)
	if err != nil {
		t.Fatal(err)
	}
	var imagesSize int64
	for _, f := range m.Files {
		if strings.HasPrefix(f.Name, metadata.CheckpointDirectory+"/") {
			imagesSize += f.Size
		}
	}

	out := run(t, cctl, "show", img)
	row := ""
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "calc_pi ") {
			row = line
		}
	}
	if row == "" {
		t.Fatalf("checkpointctl show has no row for calc_pi:\n%s", out)
	}
	for _, want := range []string{config.ID[:12], " " + ManagerName + " ", m.Containers[0].Created.Format(time.RFC3339), metadata.ByteToString(imagesSize)} {
		if !strings.Contains(row, want) {
			t.Errorf("checkpointctl show row lacks %q:\n%s", want, out)
		}
	}

	stats, err := crit.GetDumpStats(staging)
	if err != nil {
		t.Fatal(err)
	}
	if stats.GetPagesWritten() == 0 {
		t.Fatal("CRIU wrote no pages")
	}
	out = run(t, cctl, "inspect", "--stats", "--ps-tree", img)
	for _, want := range []string{
		"calc_pi",
		"CRIU dump statistics",
		fmt.Sprintf("Pages scanned: %d", stats.GetPagesScanned()),
		fmt.Sprintf("Pages written: %d", stats.GetPagesWritten()),
		fmt.Sprintf("[%d]  sleep", pid),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("checkpointctl inspect lacks %q:\n%s", want, out)
		}
	}

	// The JSON view carries the metadata annotations cr writes.
	out = run(t, cctl, "inspect", "--metadata", "--format", "json", img)
	var nodes []struct {
		ContainerName string `json:"container_name"`
		Runtime       string `json:"runtime"`
		Metadata      struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("checkpointctl inspect json: %v\n%s", err, out)
	}
	if len(nodes) != 1 {
		t.Fatalf("checkpointctl inspect json: %d nodes:\n%s", len(nodes), out)
	}
	n := nodes[0]
	if n.ContainerName != "calc_pi" || n.Runtime != ManagerName {
		t.Errorf("checkpointctl inspect json: name %q runtime %q", n.ContainerName, n.Runtime)
	}
	for k, v := range map[string]string{
		metadata.CheckpointAnnotationEngine:      ManagerName,
		metadata.CheckpointAnnotationCriuVersion: strconv.Itoa(m.CRIUVersion),
		metadata.CheckpointAnnotationHostKernel:  kernel,
		metadata.CheckpointAnnotationHostArch:    arch,
	} {
		if n.Metadata.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, n.Metadata.Annotations[k], v)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	t.Logf("%s %s:\n%s", filepath.Base(name), strings.Join(args, " "), out)
	return string(out)
}

func TestWriteCheckpointctlFilesRejectsTrees(t *testing.T) {
	m := testManifest()
	err := WriteCheckpointctlFiles(t.TempDir(), m, "x")
	if !errors.Is(err, ErrNotSingle) {
		t.Fatalf("got %v, want ErrNotSingle", err)
	}
}
