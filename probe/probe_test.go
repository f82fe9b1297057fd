package probe

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/scratch"
)

// A private tree a killed probe left (its state directory unlocked) is
// removed with its cgroups by the next probe; one whose probe still runs
// (locked) is left alone.
func TestScratchTreeRemovesAbandoned(t *testing.T) {
	o := Options{Scratch: t.TempDir(), Hier: freeze.Hierarchy{Version: 2, Mount: t.TempDir()}}
	dead := scratchPrefix + "0123456789abcdef"
	for _, d := range []string{filepath.Join(o.Scratch, dead, "c"), filepath.Join(o.Hier.Mount, dead, "x", ".tasks")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	live, err := scratch.MkdirOnly(o.Scratch, scratchPrefix)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Remove()
	liveCg := filepath.Join(o.Hier.Mount, filepath.Base(live.Path), "x")
	os.MkdirAll(liveCg, 0o700)

	tr, cleanup, err := scratchTree(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(o.Scratch, dead), filepath.Join(o.Hier.Mount, dead)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	for _, p := range []string{live.Path, liveCg} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("a live probe's %s removed: %v", p, err)
		}
	}
	if tr.CgroupParent != filepath.Base(tr.StateDir) || filepath.Dir(tr.StateDir) != o.Scratch {
		t.Errorf("private tree %+v", tr)
	}
	cleanup()
	if _, err := os.Stat(tr.StateDir); !os.IsNotExist(err) {
		t.Errorf("cleanup left %s: %v", tr.StateDir, err)
	}
}
