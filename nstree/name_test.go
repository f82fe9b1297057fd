package nstree

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	good := []string{"a", "vserver1", "calculate_pi", "A-b.c+d@e:f", strings.Repeat("x", MaxNameLen), "0"}
	for _, n := range good {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want ok", n, err)
		}
	}
	bad := []string{"", ".", "..", ".hidden", "-flag", "a/b", "sp ace", "tab\t", "nl\n", "del\x7f", "ünï", strings.Repeat("x", MaxNameLen+1), "a*"}
	for _, n := range bad {
		if err := ValidateName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", n, err)
		}
	}
}

func TestParsePath(t *testing.T) {
	for in, want := range map[string]string{"": "/", "/": "/", "a": "/a", "/a/b": "/a/b", "a/b/": "/a/b", "/a/b/": "/a/b"} {
		parts, err := ParsePath(in)
		if err != nil || Join(parts...) != want {
			t.Errorf("ParsePath(%q) = %v, %v; want %s", in, parts, err, want)
		}
	}
	for _, in := range []string{"/a//b", "/a/../b", "..", "/./a", "/a/\x00", "//"} {
		if _, err := ParsePath(in); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ParsePath(%q) = %v, want ErrInvalidName", in, err)
		}
	}
}

func TestViewerScoping(t *testing.T) {
	v := Viewer{Root: "/vserver1"}
	for in, want := range map[string]string{"/": "/vserver1", "/vserver_testme": "/vserver1/vserver_testme", "x/y": "/vserver1/x/y"} {
		got, err := v.Resolve(in)
		if err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// Nothing above the root can be named: ".." is not a name.
	for _, in := range []string{"..", "/../other", "a/../../x"} {
		if got, err := v.Resolve(in); err == nil {
			t.Errorf("Resolve(%q) = %q, want an error", in, got)
		}
	}
	for abs, want := range map[string]string{"/vserver1": "/", "/vserver1/a/b": "/a/b"} {
		if got, ok := v.Show(abs); !ok || got != want {
			t.Errorf("Show(%q) = %q, %v; want %q", abs, got, ok, want)
		}
	}
	for _, abs := range []string{"/other", "/vserver10", "/vserver1x/a", "/"} {
		if got, ok := v.Show(abs); ok || v.Contains(abs) {
			t.Errorf("Show(%q) = %q: a path outside the viewer's container was shown", abs, got)
		}
	}
	if got, _ := HostViewer.Show("/a/b"); got != "/a/b" {
		t.Errorf("host viewer shows /a/b as %q", got)
	}
	if !IsBelow("/a/b", "/a") || IsBelow("/a", "/a") || IsBelow("/ab", "/a") || !IsBelow("/x", "/") {
		t.Errorf("IsBelow is wrong")
	}
}

// fakeTree is a Tree over temp directories: state only, no cgroups touched.
func fakeTree(t *testing.T) *Tree {
	tr := &Tree{StateDir: t.TempDir(), CgroupParent: "cr"}
	tr.Hier.Mount, tr.Hier.Version = "/sys/fs/cgroup/unified", 2
	return tr
}

func TestLoadBuildsTree(t *testing.T) {
	tr := fakeTree(t)
	cfgs := []Config{
		{ID: "c1", Name: "vserver1"},
		{ID: "c2", Name: "calculate_pi", Parent: "c1"},
		{ID: "c3", Name: "other", Parent: "c1"},
		{ID: "c4", Name: "randomvserver"},
		{ID: "c5", Name: "calculate_pi", Parent: "c4"},
		{ID: "c6", Name: "orphan", Parent: "missing"}, // parent gone mid-removal: ignored
	}
	for i := range cfgs {
		if err := tr.WriteConfig(&cfgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	f, err := tr.Load()
	if err != nil {
		t.Fatal(err)
	}
	for path, id := range map[string]string{"/vserver1": "c1", "/vserver1/calculate_pi": "c2", "/randomvserver/calculate_pi": "c5"} {
		n, err := f.Lookup(path)
		if err != nil || n.ID != id {
			t.Errorf("Lookup(%s) = %v, %v; want %s", path, n, err, id)
		}
	}
	if n, _ := f.Lookup("/vserver1/calculate_pi"); n.Cgroup != "/sys/fs/cgroup/unified/cr/c1/c2" || n.Leaf() != "/sys/fs/cgroup/unified/cr/c1/c2/.tasks" {
		t.Errorf("cgroup of /vserver1/calculate_pi = %s", n.Cgroup)
	}
	if _, err := f.Lookup("/orphan"); !errors.Is(err, ErrNotFound) {
		t.Errorf("an orphaned config was loaded")
	}
	var names []string
	for _, c := range f.ChildrenOf("/vserver1") {
		names = append(names, c.Name)
	}
	if strings.Join(names, ",") != "calculate_pi,other" {
		t.Errorf("children of /vserver1 = %v", names)
	}
	if got := generatedName(f, "/"); got != "/unnamed1" {
		t.Errorf("generated name = %s", got)
	}
	if err := tr.WriteConfig(&Config{ID: "c7", Name: "unnamed1"}); err != nil {
		t.Fatal(err)
	}
	f, _ = tr.Load()
	if got := generatedName(f, "/"); got != "/unnamed2" {
		t.Errorf("generated name with unnamed1 taken = %s", got)
	}
	if got := generatedName(f, "/vserver1"); got != "/vserver1/unnamed1" {
		t.Errorf("generated name under /vserver1 = %s", got)
	}
}

func TestViewerFromCgroup(t *testing.T) {
	tr := fakeTree(t)
	hybrid := "9:name=systemd:/\n6:freezer:/\n0::/cr/c1/c2/.tasks\n"
	if got := tr.containerOfCgroup(tr.cgroupOf(hybrid)); got != "c2" {
		t.Errorf("container of %q = %q, want c2", hybrid, got)
	}
	if got := tr.containerOfCgroup(tr.cgroupOf("0::/user.slice/x\n")); got != "" {
		t.Errorf("a process outside cr's cgroups is in container %q", got)
	}
	if got := tr.containerOfCgroup(tr.cgroupOf("0::/crx/c1/.tasks\n")); got != "" {
		t.Errorf("a cgroup merely starting with the parent's name is in container %q", got)
	}
	tr.Hier.Version = 1
	if got := tr.containerOfCgroup(tr.cgroupOf("4:memory:/m\n3:cpu,freezer:/cr/c9/.tasks\n")); got != "c9" {
		t.Errorf("v1 freezer line: container %q, want c9", got)
	}
}

func TestInitArgsRoundTrip(t *testing.T) {
	c := InitConfig{Stage: 1, HierVersion: 2, Leaf: "/sys/fs/cgroup/cr/c1/.tasks",
		Hostname: "pi", Mount: true, Cwd: "/tmp", Command: []string{"sh", "-c", "echo -- hi"}}
	got, err := parseInitArgs(c.args())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.Command, "|") != "sh|-c|echo -- hi" || got.Leaf != c.Leaf || !got.Mount || got.Net || got.HierVersion != 2 || got.Stage != 1 {
		t.Errorf("init args round trip: %+v", got)
	}
	if _, err := parseInitArgs([]string{InitArg, "x"}); err == nil {
		t.Errorf("short init args accepted")
	}
}
