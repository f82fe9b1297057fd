package scratch

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// An entry whose owner lives is never swept; once it is released, the
// next sweep (or the next Mkdir of the same prefix) removes it.
func TestSweepRemovesOnlyAbandoned(t *testing.T) {
	dir := t.TempDir()
	live, err := Mkdir(dir, "ckpt-")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Remove()
	os.WriteFile(filepath.Join(live.Path, "pages-1.img"), []byte("x"), 0o600)
	dead, err := Mkdir(dir, "ckpt-")
	if err != nil {
		t.Fatal(err)
	}
	dead.Release()
	other, err := Mkdir(dir, "rst-")
	if err != nil {
		t.Fatal(err)
	}
	other.Release()
	foreign := filepath.Join(dir, "ckpt-notours")
	os.Mkdir(foreign, 0o700)

	if got := Sweep(dir, "ckpt-", Dirs, nil); len(got) != 1 || got[0] != dead.Path {
		t.Errorf("swept %v, want only %s", got, dead.Path)
	}
	for _, p := range []string{live.Path, other.Path, foreign, filepath.Join(live.Path, "pages-1.img")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	// The next Mkdir of rst- sweeps the abandoned rst- entry.
	e, err := Mkdir(dir, "rst-")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Remove()
	if _, err := os.Stat(other.Path); err == nil {
		t.Errorf("Mkdir left the abandoned %s", other.Path)
	}
}

// A symbolic link or a directory named like a file entry is never
// followed nor removed by a file sweep.
func TestSweepLeavesOtherKinds(t *testing.T) {
	dir := t.TempDir()
	target := t.TempDir()
	link := filepath.Join(dir, ".a.tmp-0123456789abcdef")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, ".a.tmp-fedcba9876543210")
	os.Mkdir(sub, 0o700)
	os.WriteFile(filepath.Join(sub, "keep"), nil, 0o600)
	f, err := Create(dir, ".a.tmp-")
	if err != nil {
		t.Fatal(err)
	}
	f.Release()
	got := SweepMatch(dir, func(n string) bool { return strings.HasPrefix(n, ".a.tmp-") }, Files, func(p string, f *os.File) bool {
		fi, _ := f.Stat()
		return fi.Mode().IsRegular()
	})
	if len(got) != 1 || got[0] != f.Path {
		t.Errorf("swept %v, want only %s", got, f.Path)
	}
	for _, p := range []string{link, target, filepath.Join(sub, "keep")} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s was removed", p)
		}
	}
}

func TestIsName(t *testing.T) {
	for name, want := range map[string]bool{
		"ckpt-0123456789abcdef":      true,
		"ckpt-0123456789abcde":       false,
		"ckpt-0123456789abcdef0":     false,
		"ckpt-0123456789ABCDEF":      false,
		"ckpt-logs-0123456789abcdef": false,
		"rst-0123456789abcdef":       false,
	} {
		if got := IsName(name, "ckpt-"); got != want {
			t.Errorf("IsName(%q) = %v, want %v", name, got, want)
		}
	}
}

// A process killed with SIGKILL leaves its entry; the next sweep removes
// it, and never the entry of a process that still runs.
func TestSweepAfterSIGKILL(t *testing.T) {
	if os.Getenv("SCRATCH_HOLD") != "" {
		e, err := Mkdir(os.Getenv("SCRATCH_HOLD"), "ckpt-")
		if err != nil {
			os.Exit(1)
		}
		fmt.Println(e.Path)
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	dir := t.TempDir()
	hold := func() (*exec.Cmd, string) {
		c := exec.Command(os.Args[0], "-test.run=^TestSweepAfterSIGKILL$")
		c.Env = append(os.Environ(), "SCRATCH_HOLD="+dir)
		out, err := c.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4096)
		n, _ := out.Read(b)
		return c, strings.TrimSpace(string(b[:n]))
	}
	killed, kp := hold()
	running, rp := hold()
	defer func() { running.Process.Kill(); running.Wait() }()
	killed.Process.Signal(syscall.SIGKILL)
	killed.Wait()
	got := Sweep(dir, "ckpt-", Dirs, nil)
	if len(got) != 1 || got[0] != kp {
		t.Errorf("swept %v, want only the killed owner's %s", got, kp)
	}
	if _, err := os.Stat(rp); err != nil {
		t.Errorf("the running owner's %s was removed", rp)
	}
}

// Creators racing sweepers always end up with an entry that exists.
func TestCreateRacesSweep(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					Sweep(dir, "x-", Dirs, nil)
					Sweep(dir, "x-", Files, nil)
				}
			}
		}()
	}
	for range 500 {
		e, err := Mkdir(dir, "x-")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(e.Path, "f"), nil, 0o600); err != nil {
			t.Fatalf("a new entry was swept under its owner: %v", err)
		}
		f, err := Create(dir, "x-")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(f.Path); err != nil {
			t.Fatalf("a new file entry was swept under its owner: %v", err)
		}
		e.Remove()
		f.Remove()
	}
	close(stop)
	wg.Wait()
}
