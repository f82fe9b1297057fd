package cmd

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/store"
	"github.com/cr-dev/cr/nstree"
)

// complete runs cobra's hidden __complete command, as the shell scripts
// do, and returns the candidates and the directive.
func complete(t *testing.T, args ...string) ([]string, string) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(append([]string{"__complete"}, args...))
	if err := root.Execute(); err != nil {
		t.Fatalf("__complete %q: %v", args, err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, ":") {
		t.Fatalf("__complete %q: no directive in %q", args, out.String())
	}
	return lines[:len(lines)-1], last
}

// Directives as cobra prints them.
const (
	dirNoFiles = ":4"
	dirFileExt = ":8"
	dirDirs    = ":16"
	dirDefault = ":0"
	dirParents = ":6" // no space, no files
)

func wantCompletion(t *testing.T, args []string, want []string, wantDir string) {
	t.Helper()
	got, dir := complete(t, args...)
	if !slices.Equal(got, want) || dir != wantDir {
		t.Errorf("cr __complete %q:\n got %q %s\nwant %q %s", args, got, dir, want, wantDir)
	}
}

// Every command completions names exists, and every command that takes
// arguments completes them.
func TestCompletionsCoverCommands(t *testing.T) {
	root := NewRoot()
	if missing := addCompletions(root); len(missing) > 0 {
		t.Errorf("completions for commands that do not exist: %v", missing)
	}
	var visit func(c *cobra.Command)
	visit = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			if sub.Runnable() && sub.ValidArgsFunction == nil && sub.CommandPath() != "cr certs token" {
				t.Errorf("%s completes no arguments", sub.CommandPath())
			}
			visit(sub)
		}
	}
	visit(root)
}

func TestCompleteSignals(t *testing.T) {
	got, dir := complete(t, "kill", "-s", "")
	for _, want := range []string{"HUP\thangup", "INT\tinterrupt", "KILL\tkilled", "TERM\tterminated", "USR1\tuser defined signal 1"} {
		if !slices.Contains(got, want) {
			t.Errorf("kill -s: %q missing from %q", want, got)
		}
	}
	if len(got) < 28 || dir != dirNoFiles {
		t.Errorf("kill -s: %d signals, directive %s; want all 31 but the unnamed, and no files", len(got), dir)
	}
	wantCompletion(t, []string{"kill", "-s", "US"}, []string{"USR1\tuser defined signal 1", "USR2\tuser defined signal 2"}, dirNoFiles)
	wantCompletion(t, []string{"kill", "--signal", "hu"}, []string{"hup\thangup"}, dirNoFiles)
	wantCompletion(t, []string{"kill", "-s", "SIGTE"}, []string{"SIGTERM\tterminated"}, dirNoFiles)
}

func TestCompleteEnums(t *testing.T) {
	wantCompletion(t, []string{"run", "--on-empty", ""}, []string{"delete\tthe node goes when its job ends (default)", "keep\tthe node stays, empty, with the exit status", "notify\tthe node stays, and its empty event says notify"}, dirNoFiles)
	wantCompletion(t, []string{"run", "--on-empty", "k"}, []string{"keep\tthe node stays, empty, with the exit status"}, dirNoFiles)
	wantCompletion(t, []string{"run", "--until", ""}, []string{"job\tuntil the job exits (default)", "empty\tuntil its last process exits (daemons)"}, dirNoFiles)
	wantCompletion(t, []string{"checkpoint", "--compress", ""}, []string{"zstd\tcompressed with zstd (default)", "none\tuncompressed"}, dirNoFiles)
	wantCompletion(t, []string{"images", "export", "--store", "/x", "--compress", "n"}, []string{"none\tuncompressed"}, dirNoFiles)
	wantCompletion(t, []string{"snapshot", "--store", ""}, nil, dirDirs)
	wantCompletion(t, []string{"inspect", ""}, []string{"cr"}, dirFileExt)
	wantCompletion(t, []string{"restore", ""}, []string{"cr"}, dirFileExt)
	wantCompletion(t, []string{"check", ""}, nil, dirNoFiles)
}

// containerPaths: only what the viewer can name, as it names it.
func TestContainerPathsInScope(t *testing.T) {
	f := &nstree.Forest{ByPath: map[string]*nstree.Node{}}
	for _, p := range []string{"/a", "/a/b", "/a/b/c", "/a/d", "/ab", "/z"} {
		f.ByPath[p] = &nstree.Node{Path: p}
	}
	for _, tc := range []struct {
		root, prefix string
		parents      bool
		want         []string
	}{
		{"/", "", false, []string{"/a", "/a/b", "/a/b/c", "/a/d", "/ab", "/z"}},
		{"/", "/a/", false, []string{"/a/b", "/a/b/c", "/a/d"}},
		{"/a", "", false, []string{"/b", "/b/c", "/d"}}, // not /a itself, not /ab nor /z
		{"/a", "/b", false, []string{"/b", "/b/c"}},
		{"/a/b", "", false, []string{"/c"}},
		{"/a/b/c", "", false, nil},
		{"/a", "", true, []string{"/", "/b/", "/b/c/", "/d/"}},
		{"/a", "/d", true, []string{"/d/"}},
	} {
		got := containerPaths(f, nstree.Viewer{Root: tc.root}, tc.prefix, tc.parents)
		if !slices.Equal(got, tc.want) {
			t.Errorf("viewer %s, %q (parents %v): %q, want %q", tc.root, tc.prefix, tc.parents, got, tc.want)
		}
	}
}

// The same through __complete, from a tree on disk.
func TestCompleteContainers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: cr reads its tree only as root")
	}
	t.Setenv("CR_STATE_DIR", t.TempDir())
	t.Setenv("CR_CGROUP_PARENT", "cr-complete-test")
	tr, err := nstree.Open()
	if err != nil {
		t.Skipf("no cgroup hierarchy: %v", err)
	}
	for _, c := range []nstree.Config{
		{ID: "c1", Name: "lab"}, {ID: "c2", Name: "pi", Parent: "c1"}, {ID: "c3", Name: "web"},
	} {
		if err := tr.WriteConfig(&c); err != nil {
			t.Fatal(err)
		}
	}
	wantCompletion(t, []string{"freeze", ""}, []string{"/lab", "/lab/pi", "/web"}, dirNoFiles)
	wantCompletion(t, []string{"kill", "-s", "HUP", "/l"}, []string{"/lab", "/lab/pi"}, dirNoFiles)
	wantCompletion(t, []string{"ls", "/lab/"}, []string{"/lab/pi"}, dirNoFiles)
	wantCompletion(t, []string{"freeze", "/lab", ""}, nil, dirNoFiles) // one path only
	wantCompletion(t, []string{"rename", "/lab/pi", "/w"}, []string{"/web/"}, dirParents)
	wantCompletion(t, []string{"run", "/la"}, []string{"/lab/", "/lab/pi/"}, dirParents)
	wantCompletion(t, []string{"run", "sl"}, nil, dirDefault)
	wantCompletion(t, []string{"enter", "/lab", "--", ""}, nil, dirDefault)
	wantCompletion(t, []string{"migrate", "/web", ""}, nil, dirNoFiles)
}

func TestCompleteSnapshots(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	st, _, err := store.OpenOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	if err := os.MkdirAll(filepath.Join(staging, "checkpoint"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(staging, "checkpoint", "pages-1.img"), []byte("pages"), 0o600); err != nil {
		t.Fatal(err)
	}
	var ids []string
	at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.Local)
	for i, root := range []string{"/lab", "/lab", "/web"} {
		m := &images.Manifest{Root: root, Containers: []images.Container{{Path: "/", Dir: "checkpoint", Command: []string{"job"}}}}
		s, err := st.Add(context.Background(), staging, m, at.Add(time.Duration(i)*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, s.ID)
	}
	desc := func(i int, root string) string {
		return ids[i] + "\t" + root + " " + at.Add(time.Duration(i)*time.Hour).Format("2006-01-02 15:04:05")
	}
	byID := []string{desc(0, "/lab"), desc(1, "/lab"), desc(2, "/web")}
	got, d := complete(t, "images", "rm", "--store", dir, "")
	slices.Sort(got)
	want := slices.Clone(byID)
	slices.Sort(want)
	if !slices.Equal(got, want) || d != dirNoFiles {
		t.Errorf("images rm: %q %s, want %q", got, d, want)
	}
	// An id already on the line is not offered again; a prefix narrows.
	got, _ = complete(t, "images", "rm", "--store", dir, ids[0], ids[1][:3])
	if slices.Contains(got, byID[0]) || !slices.Contains(got, byID[1]) {
		t.Errorf("images rm %s %s: %q", ids[0], ids[1][:3], got)
	}
	wantCompletion(t, []string{"images", "ls", "--store", dir, ""}, []string{"/lab\t2 snapshots", "/web\t1 snapshot"}, dirNoFiles)
	wantCompletion(t, []string{"images", "prune", "--store", dir, "/w"}, []string{"/web\t1 snapshot"}, dirNoFiles)
	got, _ = complete(t, "restore", "--store", dir, "")
	for _, w := range append([]string{"latest\tthe newest snapshot in the store", "/lab\t2 snapshots", "/web\t1 snapshot"}, byID...) {
		if !slices.Contains(got, w) {
			t.Errorf("restore --store: %q missing from %q", w, got)
		}
	}
	wantCompletion(t, []string{"restore", "--store", dir, "/l"}, []string{"/lab\t2 snapshots"}, dirNoFiles)
	// Completing never creates a store.
	missing := filepath.Join(t.TempDir(), "mistyped")
	wantCompletion(t, []string{"restore", "--store", missing, ""}, []string{"latest\tthe newest snapshot in the store"}, dirNoFiles)
	wantCompletion(t, []string{"images", "inspect", "--store", missing, ""}, nil, dirNoFiles)
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("completion created %s: %v", missing, err)
	}
}
