package criubin

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A CRIU query cancelled while a helper it forked still holds its output
// (criu's start-up checks fork such helpers) returns at once, and the
// helper is killed with it: cr restore hung there after a Ctrl-C.
func TestRunCancelledKillsHelpers(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "helper.pid")
	fake := filepath.Join(dir, "criu")
	script := "#!/bin/sh\nsleep 1000 &\necho $! > " + pidFile + "\nexec sleep 1000\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := run(ctx, fake, "cpuinfo", "check")
	if err == nil {
		t.Fatal("a cancelled run succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("run returned %v after it was cancelled", d)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(2 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the helper %d outlived the cancelled run", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
