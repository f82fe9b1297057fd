package cmd

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// update rewrites the golden files: go test ./cmd -update
var update = flag.Bool("update", false, "rewrite testdata/**/*.golden")

// golden compares got with testdata/name, or writes it there with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (go test ./cmd -update writes it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test ./cmd -update rewrites it after a wanted change):\n--- got\n%s\n--- want\n%s", p, got, want)
	}
}

// inUTC shows times in UTC for the duration of the test.
func inUTC(t *testing.T) {
	old := time.Local
	time.Local = time.UTC
	t.Cleanup(func() { time.Local = old })
}

// Every command's --help, as a user sees it: testdata/help/cr-images-ls.golden.
func TestHelpGolden(t *testing.T) {
	var paths [][]string
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		paths = append(paths, path)
		for _, s := range c.Commands() {
			if s.Name() != "help" && s.Name() != "completion" {
				walk(s, append(append([]string(nil), path...), s.Name()))
			}
		}
	}
	walk(NewRoot(), nil)
	for _, p := range paths {
		code, out, errOut := runCr(append(p, "--help")...)
		if code != 0 || errOut != "" {
			t.Errorf("cr %s --help: exit %d, stderr %q", strings.Join(p, " "), code, errOut)
		}
		golden(t, filepath.Join("help", strings.Join(append([]string{"cr"}, p...), "-")+".golden"), out)
	}
}

func TestLsGolden(t *testing.T) {
	zero, seven := 0, 7
	created := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	err := printEntries(&b, []Entry{
		{Path: "/lab", Name: "lab", State: "empty", Created: created, AgeSeconds: 3 * 86400, Children: 2},
		{Path: "/lab/pi", Name: "pi", State: "running", Processes: 2, MemoryBytes: 12 << 20, CPUSeconds: 61.237, Created: created, AgeSeconds: 4000,
			Command: []string{"python3", "-c", "import time; time.sleep(1e6)"}},
		{Path: "/lab/db", Name: "db", State: "frozen", Processes: 5, MemoryBytes: 3 << 30, CPUSeconds: 0.004, AgeSeconds: 59, Command: []string{"redis-server"}, Limits: map[string]string{"memory": "4G", "pids": "100"}, Network: "bridge", Address: "10.88.0.2"},
		{Path: "/batch", Name: "batch", State: "empty", Processes: 0, AgeSeconds: 90, Command: []string{"make", "test"}, ExitCode: &seven},
		{Path: "/done", Name: "done", State: "empty", AgeSeconds: 7200, Command: []string{"true"}, ExitCode: &zero},
	})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "ls.golden", b.String())
}

func TestCheckGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		rep  CheckReport
	}{
		{"check-ready.golden", CheckReport{Ready: true, Verdict: "ready: run, checkpoint, restore and migrate work here; soft-dirty tracking missing", Items: []CheckItem{
			{Name: "root", OK: true, Required: true, Value: "yes"},
			{Name: "criu", OK: true, Required: true, Value: "/usr/local/libexec/cr/criu (4.2.1)"},
			{Name: "criu check", OK: true, Required: true, Value: "looks good"},
			{Name: "soft-dirty tracking", Value: "no", Hint: "no iterative pre-copy migration"},
		}}},
		{"check-not-ready.golden", CheckReport{Verdict: "not ready: criu missing", Items: []CheckItem{
			{Name: "root", OK: true, Required: true, Value: "yes"},
			{Name: "criu", Required: true, Value: "not found", Hint: "run scripts/provision.sh or pass --criu"},
		}}},
	} {
		var b bytes.Buffer
		printCheck(&b, tc.rep)
		golden(t, tc.name, b.String())
	}
}

// cr inspect of a real image (testdata/fixture.cr: /fixture, an empty
// node with /fixture/sleeper and /fixture/sleeper/kid, checkpointed by cr
// with CRIU 4.2.1), in text and JSON.
func TestInspectGolden(t *testing.T) {
	inUTC(t)
	t.Setenv("CR_STAGING", t.TempDir())
	rep, err := inspectImage(context.Background(), filepath.Join("testdata", "fixture.cr"))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	printInspect(&b, rep)
	var text bytes.Buffer
	if err := writeTrimmed(&text, b.Bytes()); err != nil {
		t.Fatal(err)
	}
	golden(t, "inspect.golden", text.String())
	var j bytes.Buffer
	if err := writeJSON(&j, rep); err != nil {
		t.Fatal(err)
	}
	golden(t, "inspect.json.golden", j.String())
}

// The messages of the common failures that need no tree, exactly.
func TestErrorsGolden(t *testing.T) {
	var b strings.Builder
	for _, args := range [][]string{
		{"snapshot", "/lab"},
		{"images", "rm", "--store", "/nonexistent"},
		{"images", "ls"},
		{"images", "ls", "--json"},
		{"images", "bogus"},
		{"bogus"},
		{"freeze", "/a", "/b"},
		{"ls", "--bogus"},
		{"run", "/x"},
		{"run", "--on-empty", "never", "/x", "--", "true"},
		{"run", "--until", "forever", "/x", "--", "true"},
		{"checkpoint", "--compress", "xz", "/lab"},
		{"kill", "-s", "NOPE", "/lab"},
		{"migrate", "/lab", "otherhost"},
		{"migrate", "/lab", "otherhost", "--cert", "c.crt"},
		{"certs", "tls", "/nonexistent/dir"},
		{"inspect", "/nonexistent.cr"},
		{"inspect", "--json", "/nonexistent.cr"},
		{"inspect", "testdata"},
	} {
		code, out, errOut := runCr(args...)
		b.WriteString("$ cr " + strings.Join(args, " ") + "\n" + out + errOut)
		b.WriteString("exit " + itoa(code) + "\n\n")
	}
	golden(t, "errors.golden", b.String())
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
