package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notRoot lists the lines of a /proc/PID/cgroup text whose path is not
// "/": inside a container every controller's cgroup is the root of its
// cgroup namespace.
func notRoot(cgroup string) []string {
	var bad []string
	for _, l := range strings.Split(strings.TrimSpace(cgroup), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) != 3 || f[2] != "/" {
			bad = append(bad, l)
		}
	}
	return bad
}

// A restored job sees its own cgroups as the fresh one did: "/" for every
// controller, the v1 controllers of the limits included (on a hybrid host
// they are the node's mirrors), after one restore and after a second
// checkpoint and restore of the restored job.
func TestRestoredCgroupNamespace(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"plain", nil},
		{"limits", []string{"--memory", "128M", "--cpus", "1", "--pids", "100"}},
		{"mount", []string{"--mount"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := "/cgns-" + tc.name
			view := filepath.Join(t.TempDir(), "cgroup")
			// Whenever the file is missing, the job forks a child that reads
			// its own /proc/self/cgroup into it: a new process each time,
			// born after a restore as well, and none otherwise.
			script := `my $f = shift; while (1) {
	if (! -e $f) {
		my $p = fork();
		if (defined $p && $p == 0) { open(my $in, "<", "/proc/self/cgroup") or exit 1; local $/; my $c = <$in>; open(my $out, ">", "$f.tmp") or exit 1; print $out $c; close $out; rename("$f.tmp", $f); exit 0 }
		waitpid($p, 0) if $p;
	}
	select(undef, undef, undef, 0.05);
}`
			args := append(append([]string{"run"}, tc.flags...), path, "--", "/usr/bin/perl", "-e", script, view)
			mustCr(t, args...)
			killAtCleanup(t, path)
			// What the job reads, and what cr enter reads, inside.
			seen := func(when string) {
				t.Helper()
				_ = os.Remove(view)
				var got []byte
				waitFor(t, 10*time.Second, path+"'s job to read its cgroups", func() bool {
					var err error
					got, err = os.ReadFile(view)
					return err == nil && len(got) > 0
				})
				if bad := notRoot(string(got)); len(bad) > 0 {
					t.Errorf("%s: the job's /proc/self/cgroup has %q, want / for every controller:\n%s", when, bad, got)
				}
				out := mustCr(t, "enter", path, "--", "cat", "/proc/self/cgroup")
				if bad := notRoot(out); len(bad) > 0 {
					t.Errorf("%s: cr enter %s -- cat /proc/self/cgroup has %q, want / for every controller:\n%s", when, path, bad, out)
				}
			}
			seen("fresh")
			l := limitsLayout(t)
			for _, round := range []string{"restored", "restored twice"} {
				img := image(t)
				mustCr(t, "checkpoint", path, "-o", img)
				mustCr(t, "restore", img)
				seen(round)
				// And the limits still cover it.
				inLimitedCgroups(t, l, path)
			}
		})
	}
}
