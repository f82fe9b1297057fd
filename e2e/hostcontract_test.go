package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A job on the host's file system holds two files open; the destination
// lacks one and has the other with another size (cr serve there runs in a
// mount namespace of its own, with tmpfs over their directories). The
// migration is refused before the source is frozen, naming both files, and
// the source runs on untouched.
func TestMigrateHostFilesRefused(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	fileA, fileB := filepath.Join(dirA, "a"), filepath.Join(dirB, "b")
	if err := os.WriteFile(fileA, []byte("aaaa"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fileB, []byte("bbbbbbbb"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, "token")
	h.kill(t)
	h.wrap = []string{"unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
		`mount -t tmpfs none "$1" && mount -t tmpfs none "$2" && printf 123 > "$2/b" && shift 2 && exec "$@"`, "sh", dirA, dirB}
	h.start(t)
	start(t, "/hf", "/bin/sh", "-c", `exec 3<"$0" 4<"$1"; exec sleep 1000`, fileA, fileB)
	before := ps(t, "/hf")

	r := cr(t, migrateArgs(h, "/hf")...)
	for _, want := range []string{strconv.Quote(fileA) + " is missing", strconv.Quote(fileB) + " is 3 bytes, 8 at the source"} {
		if r.code == 0 || !strings.Contains(r.err, want) {
			t.Errorf("migration to a host without the job's files: %s\nwant a refusal saying %s", r, want)
		}
	}
	if st := ls(t)["/hf"]; st.State != "running" {
		t.Errorf("source after the refusal: %+v, want running", st)
	}
	if after := ps(t, "/hf"); sortedPids(after) != sortedPids(before) || after[0].HostPid != before[0].HostPid {
		t.Errorf("source processes changed: %v -> %v", before, after)
	}
	if l := h.ls(t); len(l) != 0 {
		t.Errorf("the destination has %v after a refusal", l)
	}
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("the source staged %v: it dumped before the refusal", s)
	}
}

// The same contract holds for a --mount container (its mount table a
// copy of the host's): a job holding a host file open is refused before
// the freeze when that file is absent at the destination, the source runs
// on; present there, the same job migrates (what it has on its own tmpfs
// mounts, which CRIU carries, is not asked for).
func TestMigrateMountHostFilesRefused(t *testing.T) {
	dir, keep := t.TempDir(), t.TempDir()
	file, kept := filepath.Join(dir, "a"), filepath.Join(keep, "k")
	for _, f := range []string{file, kept} {
		if err := os.WriteFile(f, []byte("aaaa"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := newHost(t, "token")
	h.kill(t)
	h.wrap = []string{"unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
		`mount -t tmpfs none "$1" && shift && exec "$@"`, "sh", dir}
	h.start(t)
	own := t.TempDir() // a tmpfs of the job's own, mounted in its namespace
	script := `exec 3<"$0"; mount -t tmpfs none "$1" && echo x > "$1/f" && exec 4<"$1/f"; echo ready; exec sleep 1000`
	run := func(path, f string) []Proc {
		mustCr(t, "run", "--mount", path, "--", "/bin/sh", "-c", script, f, own)
		killAtCleanup(t, path)
		waitFor(t, 10*time.Second, path+" to open its files", func() bool { return strings.Contains(cr(t, "logs", path).out, "ready") })
		return ps(t, path)
	}
	before := run("/hfm", file)
	r := cr(t, migrateArgs(h, "/hfm")...)
	want := "migration rejected: image not restorable here: files missing on this host: " + strconv.Quote(file) + " is missing"
	if r.code == 0 || !strings.Contains(r.err, want) || strings.Contains(r.err, own) {
		t.Errorf("migration of a --mount job to a host without its file: %s\nwant a refusal saying %s, and nothing of its own tmpfs", r, want)
	}
	if st := ls(t)["/hfm"]; st.State != "running" {
		t.Errorf("source after the refusal: %+v, want running", st)
	}
	if after := ps(t, "/hfm"); sortedPids(after) != sortedPids(before) {
		t.Errorf("source processes changed: %v -> %v", before, after)
	}
	if s := sourceStaging(t); len(s) != 0 {
		t.Errorf("the source staged %v: it dumped before the refusal", s)
	}
	if l := h.ls(t); len(l) != 0 {
		t.Errorf("the destination has %v after a refusal", l)
	}

	run("/hfk", kept)
	mustCr(t, migrateArgs(h, "/hfk")...)
	if st := h.ls(t)["/hfk"]; st.State != "running" {
		t.Errorf("/hfk at the destination: %+v, want running", st)
	}
	h.mustCr(t, "kill", "/hfk")
}

// cr restore checks the same contract against its own host before it
// creates anything: a file the image's job had open, now missing or of
// another size, is refused by name; so it is for a --mount job (and
// what it holds on a tmpfs of its own, which the image carries, is not
// asked for).
func TestRestoreHostFilesRefused(t *testing.T) {
	for _, flags := range [][]string{nil, {"--mount"}} {
		t.Run(strings.Join(append([]string{"run"}, flags...), " "), func(t *testing.T) { restoreHostFilesRefused(t, flags) })
	}
}

func restoreHostFilesRefused(t *testing.T, flags []string) {
	dir := t.TempDir()
	fileA, fileB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, f := range []string{fileA, fileB} {
		if err := os.WriteFile(f, []byte("12345678"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := `exec 3<"$0" 4<"$1"; exec sleep 1000`
	if flags != nil {
		// A tmpfs of its own, mounted in its namespace.
		script = `mount -t tmpfs none "$2" && echo x > "$2/f" && exec 5<"$2/f"; ` + script
	}
	mustCr(t, append(append([]string{"run"}, flags...), "/hr", "--", "/bin/sh", "-c", script, fileA, fileB, t.TempDir())...)
	killAtCleanup(t, "/hr")
	waitFor(t, 10*time.Second, "the job to open its files", func() bool {
		for _, p := range ps(t, "/hr") {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", p.HostPid)); err == nil && l == fileB {
				return true
			}
		}
		return false
	})
	img := filepath.Join(t.TempDir(), "hr.cr")
	mustCr(t, "checkpoint", "/hr", "-o", img)
	if err := os.Remove(fileA); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fileB, []byte("123"), 0o644); err != nil {
		t.Fatal(err)
	}
	leaves := countLeaves(t)
	r := cr(t, "restore", img)
	want := "Error: image not restorable here: files missing on this host: " + strconv.Quote(fileA) + " is missing; " + strconv.Quote(fileB) + " is 3 bytes, 8 at the source\n"
	if r.code != 8 || r.err != want {
		t.Errorf("restore without the job's files: %s\nwant exit 8 and %q", r, want)
	}
	if _, ok := ls(t)["/hr"]; ok || countLeaves(t) != leaves {
		t.Errorf("a refused restore created /hr")
	}
}
