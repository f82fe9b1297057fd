package cmd

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cr-dev/cr/nstree"
)

// hostileText are names and commands, read back from the tree's state or
// from a container's /proc, that would forge or hide lines on a terminal.
var hostileText = []string{"/a\nforged  running  1", "/\x1b[8mhidden", "/rlo\u202etxt.exe", "/nul\x00x", "/cr\rover"}

func assertOneLineEach(t *testing.T, what, out string, rows int) {
	t.Helper()
	if n := strings.Count(out, "\n"); n != rows+1 {
		t.Errorf("%s printed %d lines, want %d:\n%s", what, n, rows+1, out)
	}
	for _, r := range out {
		if r == '\x1b' || r == '\r' || r == 0 || r == '\u202e' {
			t.Errorf("%s printed %q raw:\n%q", what, r, out)
		}
	}
}

// TestLsEscapes: cr ls prints a node whose name or command could forge a
// line escaped, one line per node.
func TestLsEscapes(t *testing.T) {
	for _, h := range hostileText {
		var b bytes.Buffer
		if err := printEntries(&b, []Entry{{Path: h, State: "running", Command: []string{"sh", h}}}); err != nil {
			t.Fatal(err)
		}
		assertOneLineEach(t, "cr ls", b.String(), 1)
	}
	var b bytes.Buffer
	printEntries(&b, []Entry{{Path: "/lab/pi", State: "running", Command: []string{"python3", "pi.py"}}})
	if !strings.Contains(b.String(), "/lab/pi ") || !strings.Contains(b.String(), "python3 pi.py") {
		t.Errorf("a plain entry is printed differently:\n%s", b.String())
	}
}

// TestPsEscapes: so does cr ps with a process that set its own argv.
func TestPsEscapes(t *testing.T) {
	for _, h := range hostileText {
		var b bytes.Buffer
		if err := printProcs(&b, []psEntry{{Process: nstree.Process{HostPid: 10, Pid: 1, Command: "sleep " + h}, Address: "10.88.0.2"}}); err != nil {
			t.Fatal(err)
		}
		assertOneLineEach(t, "cr ps", b.String(), 1)
	}
}

// TestErrorEscapes: an error message naming a node from the tree's state
// cannot hide or rewrite text on the terminal.
func TestErrorEscapes(t *testing.T) {
	for _, h := range hostileText {
		got := errorText(errors.New("remove " + h + ": busy"))
		for _, r := range got {
			if r == '\x1b' || r == '\r' || r == 0 || r == '\u202e' {
				t.Errorf("error text %q keeps %q", got, r)
			}
		}
	}
	if got := errorText(errors.New("left frozen\nrun cr thaw /lab")); got != "left frozen\nrun cr thaw /lab" {
		t.Errorf("cr's own multi-line message changed: %q", got)
	}
}

// TestInspectEndlessPipe: cr inspect of a pipe that feeds empty zstd
// blocks forever ends, with a bad image.
func TestInspectEndlessPipe(t *testing.T) {
	t.Setenv("CR_STAGING", t.TempDir())
	fifo := filepath.Join(t.TempDir(), "endless.cr")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	go func() {
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer w.Close()
		w.Write([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00})
		blocks := make([]byte, 3<<12) // raw blocks of size 0, never the last
		for {
			n, err := w.Write(blocks)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	done := make(chan error, 1)
	go func() {
		_, err := inspectImage(context.Background(), fifo)
		done <- err
	}()
	select {
	case err := <-done:
		if ExitCode(err) != ExitImage {
			t.Fatalf("inspect of endless empty blocks: %v (exit %d), want exit %d", err, ExitCode(err), ExitImage)
		}
		t.Logf("refused after %d bytes: %v", sent.Load(), err)
	case <-time.After(30 * time.Second):
		t.Fatalf("inspect still reading after 30s and %d bytes", sent.Load())
	}
}
