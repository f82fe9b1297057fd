package nstree

import (
	"os"
	"path/filepath"
	"testing"
)

// fakeCgroup makes a stand-in v2 cgroup directory with the given processes
// and freezer state.
func fakeCgroup(t *testing.T, dir, procs string, frozen bool) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	freeze, events := "0", "populated 0\nfrozen 0\n"
	if frozen {
		freeze, events = "1", "populated 0\nfrozen 1\n"
	}
	for name, content := range map[string]string{"cgroup.procs": procs, "cgroup.freeze": freeze, "cgroup.events": events} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A frozen node is frozen whether or not it has processes of its own (the
// parent made on demand for /vs/a has none).
func TestStateOfFrozenNodeWithoutProcesses(t *testing.T) {
	if inChildPidNS() {
		t.Skip("reads cgroup.procs only in the host's pid namespace")
	}
	root := t.TempDir()
	for _, c := range []struct {
		name                 string
		procs                string
		nodeFrozen, leafFroz bool
		want                 string
	}{
		{"frozen, no processes", "", true, true, "frozen"},
		{"frozen, with processes", "42\n", true, true, "frozen"},
		{"thawed, no processes", "", false, false, "empty"},
		{"thawed, with processes", "42\n", false, false, "running"},
		{"leaf frozen on its own", "42\n", false, true, "frozen"},
	} {
		n := &Node{Cgroup: filepath.Join(root, c.name)}
		fakeCgroup(t, n.Cgroup, "", c.nodeFrozen)
		fakeCgroup(t, n.Leaf(), c.procs, c.leafFroz)
		if got := n.State(); got != c.want {
			t.Errorf("%s: state %q, want %q", c.name, got, c.want)
		}
	}
}
