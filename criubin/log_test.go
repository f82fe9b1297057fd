package criubin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The samples in testdata are real CRIU 4.1.1 logs from this machine (a
// few lines naming the test host's own mounts removed).
func TestLogErrorsSamples(t *testing.T) {
	for _, tc := range []struct {
		file, reason string
		// lines that must be shown, in this order
		want []string
	}{
		{
			file:   "dump-not-session-leader.log",
			reason: "The root process 9785 is not a session leader. Consider using --shell-job option",
			want: []string{
				"Dumping pstree (pid: 9785)", // context
				"Error (criu/pstree.c:300): The root process 9785 is not a session leader.",
				"Error (criu/cr-dump.c:2111): Dumping FAILED.",
			},
		},
		{
			file:   "dump-no-such-pid.log",
			reason: "Unable to detach from 999999: No such process",
			want: []string{
				"Error (compel/src/lib/infect.c:418): Unable to detach from 999999: No such process",
				"Error (criu/cr-dump.c:2111): Dumping FAILED.",
			},
		},
		{
			file:   "restore-pid-in-use.log",
			reason: "Can't fork for 9848: File exists",
			want: []string{
				"Creating process using clone3()",
				"Error (criu/cr-restore.c:1230): Can't fork for 9848: File exists",
				"Error (criu/cr-restore.c:2320): Restoring FAILED.",
			},
		},
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			lines, reason, err := LogErrors(path)
			if err != nil {
				t.Fatal(err)
			}
			if reason != tc.reason {
				t.Errorf("reason = %q, want %q", reason, tc.reason)
			}
			checkLines(t, lines, tc.want)
			// The RLIMIT error every log here has is noise.
			for _, l := range lines {
				if strings.Contains(l, "RLIMIT_NOFILE") {
					t.Errorf("benign error shown: %q", l)
				}
			}
		})
	}
}

// checkLines checks that each of want is in a distinct line of lines, in
// order, that lines is within bounds, and that no line repeats.
func checkLines(t *testing.T, lines, want []string) {
	t.Helper()
	i := 0
	for _, w := range want {
		for i < len(lines) && !strings.Contains(lines[i], w) {
			i++
		}
		if i == len(lines) {
			t.Errorf("lines lack %q (in order):\n%s", w, strings.Join(lines, "\n"))
			return
		}
		i++
	}
	if len(lines) > logMaxLines {
		t.Errorf("%d lines, want at most %d", len(lines), logMaxLines)
	}
	seen := map[string]bool{}
	for _, l := range lines {
		if seen[l] {
			t.Errorf("line shown twice: %q", l)
		}
		seen[l] = true
	}
}

func writeLog(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dump.log")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLogErrorsContextAndDedup(t *testing.T) {
	path := writeLog(t,
		"(00.000001) a",
		"(00.000002) b",
		"(00.000003) c",
		"(00.000004) d",
		"(00.000005)   4242: Error (criu/files.c:10): Can't open file: No such file",
		"(00.000006) e",
		"(00.000007) pie: 4242: Error (criu/pie/restorer.c:20): Task 4242 exited, status=1",
		"(00.000008) f",
		"(00.000009) g",
		"(00.000010) h",
		"(00.000011)   4242: Error (criu/files.c:10): Can't open file: No such file",
		"(00.000012) Error (criu/cr-restore.c:2320): Restoring FAILED.",
	)
	lines, reason, err := LogErrors(path)
	if err != nil {
		t.Fatal(err)
	}
	if reason != "Can't open file: No such file" {
		t.Errorf("reason = %q", reason)
	}
	want := []string{
		"(00.000003) c",
		"(00.000004) d",
		"(00.000005)   4242: Error (criu/files.c:10): Can't open file: No such file",
		"(00.000006) e",
		"(00.000007) pie: 4242: Error (criu/pie/restorer.c:20): Task 4242 exited, status=1",
		// the repeated error is left out, even as context
		"(00.000010) h",
		"(00.000012) Error (criu/cr-restore.c:2320): Restoring FAILED.",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

func TestLogErrorsLimitAndEdgeCases(t *testing.T) {
	var many []string
	for i := range 50 {
		many = append(many, fmt.Sprintf("(00.%06d) Error (criu/x.c:%d): failure %d", i, i, i))
	}
	lines, reason, err := LogErrors(writeLog(t, many...))
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != logMaxLines || lines[0] != many[0] {
		t.Errorf("got %d lines starting %q, want the first %d", len(lines), lines[0], logMaxLines)
	}
	if reason != "failure 0" {
		t.Errorf("reason = %q, want the first error", reason)
	}

	// Only the benign error: then it is all there is to show.
	lines, reason, err = LogErrors(writeLog(t,
		"(00.000001) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted"))
	if err != nil || len(lines) != 1 || !strings.HasPrefix(reason, "rlimit: Can't setup") {
		t.Errorf("benign-only log: %q, %q, %v", lines, reason, err)
	}

	// Only the summary: it is the reason.
	if _, reason, _ := LogErrors(writeLog(t, "(00.1) Error (criu/cr-dump.c:2111): Dumping FAILED.")); reason != "Dumping FAILED." {
		t.Errorf("summary-only reason = %q", reason)
	}

	// No error at all.
	lines, reason, err = LogErrors(writeLog(t, "(00.000001) Dumping finished successfully", "(00.2) Warn  (criu/x.c:1): meh"))
	if err != nil || lines != nil || reason != "" {
		t.Errorf("clean log: %q, %q, %v; want nothing", lines, reason, err)
	}

	if _, _, err := LogErrors(filepath.Join(t.TempDir(), "missing.log")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing log: error %v, want ErrNotExist", err)
	}
}

func TestCRIUErrorFormat(t *testing.T) {
	cause := errors.New("criu exited with status 1")
	for _, tc := range []struct {
		e    *CRIUError
		want string
	}{
		{&CRIUError{Op: "dump", Reason: "it broke", LogPath: "/d/dump.log", Err: cause}, "criu dump failed: it broke (full log: /d/dump.log)"},
		{&CRIUError{Op: "restore", LogPath: "/d/restore.log", Err: cause}, "criu restore failed: criu exited with status 1 (full log: /d/restore.log)"},
		{&CRIUError{Op: "dump", Err: cause}, "criu dump failed: criu exited with status 1"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
		if !errors.Is(tc.e, cause) {
			t.Errorf("%v does not unwrap to its cause", tc.e)
		}
	}

	sample := filepath.Join("testdata", "restore-pid-in-use.log")
	e := NewCRIUError("restore", sample, cause)
	want := "criu restore failed: Can't fork for 9848: File exists (full log: " + sample + ")"
	if e.Error() != want || len(e.Lines) == 0 {
		t.Errorf("NewCRIUError = %q with %d lines, want %q", e, len(e.Lines), want)
	}
	var ce *CRIUError
	if err := fmt.Errorf("restore /a: %w", e); !errors.As(err, &ce) || ce.Op != "restore" {
		t.Errorf("errors.As lost the CRIUError")
	}
}

// TestLogErrorsRealDump makes CRIU fail for real and reads its log: it
// refuses to dump a process that is not a session leader. The process is
// the child of a shell in a session of its own, so its session leader is
// always visible: the test's own session leader may sit outside our pid
// namespace (as under CI), which CRIU reports differently.
func TestLogErrorsRealDump(t *testing.T) {
	criu := realCRIU(t)
	sh := exec.Command("sh", "-c", "sleep 60 & wait")
	sh.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Process.Kill(); sh.Wait() })
	pid := childOf(t, sh.Process.Pid)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })

	dir := t.TempDir()
	out, err := exec.Command(criu, "dump", "-t", fmt.Sprint(pid), "-D", dir, "-o", "dump.log", "-v4").CombinedOutput()
	if err == nil {
		t.Fatalf("criu dump of a non-session-leader succeeded: %s", out)
	}
	logPath := filepath.Join(dir, "dump.log")
	lines, reason, lerr := LogErrors(logPath)
	if lerr != nil {
		t.Fatal(lerr)
	}
	if !strings.Contains(reason, "is not a session leader") || !strings.Contains(reason, fmt.Sprint(pid)) {
		t.Errorf("reason = %q, want CRIU's session leader complaint about %d", reason, pid)
	}
	if strings.Contains(reason, "Error (") || strings.HasPrefix(reason, "(") {
		t.Errorf("reason %q keeps CRIU's prefix", reason)
	}
	checkLines(t, lines, []string{"not a session leader", "Dumping FAILED."})

	e := NewCRIUError("dump", logPath, err)
	if want := "criu dump failed: " + reason + " (full log: " + logPath + ")"; e.Error() != want {
		t.Errorf("CRIUError = %q, want %q", e, want)
	}
	var exit *exec.ExitError
	if !errors.As(e, &exit) {
		t.Errorf("CRIUError does not unwrap to the exec error")
	}
}

// childOf waits for the only child of pid and returns its pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	for range 200 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		var child int
		if _, err := fmt.Sscan(string(b), &child); err == nil {
			return child
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d started no child", pid)
	return 0
}

// Failures in the same second (or nanosecond) never overwrite each
// other's log, and only the newest MaxKeptLogs stay.
func TestKeepLogUniqueAndBounded(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "criu-logs")
	src := filepath.Join(t.TempDir(), "dump.log")
	other := filepath.Join(dir, "notes.txt")
	now := time.Now()
	if a, b := keptName(now, "dump", "/lab"), keptName(now, "dump", "/lab"); a == b {
		t.Errorf("two logs kept at the same instant share the name %s", a)
	}
	var kept []string
	for i := range MaxKeptLogs + 20 {
		if err := os.WriteFile(src, []byte(fmt.Sprintf("log %d\n", i)), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := KeepLog(dir, "dump", "/lab/pi", src)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(p) != dir || !strings.Contains(filepath.Base(p), "-dump-lab_pi-") {
			t.Errorf("kept as %s", p)
		}
		kept = append(kept, p)
		if i == 0 {
			os.WriteFile(other, nil, 0o600)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != MaxKeptLogs+1 {
		t.Errorf("%d files kept, want %d logs and notes.txt", len(ents), MaxKeptLogs)
	}
	for i, p := range kept {
		b, err := os.ReadFile(p)
		switch {
		case i < 20 && err == nil:
			t.Errorf("old log %d (%s) not removed", i, p)
		case i >= 20 && string(b) != fmt.Sprintf("log %d\n", i):
			t.Errorf("log %d: %q, %v", i, b, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file that is not a kept log was removed: %v", err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("log dir: %v, %v", fi, err)
	}
}

func TestFailedKeepsLog(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(t.TempDir(), "restore.log")
	os.WriteFile(src, []byte("(00.1) Error (criu/cr-restore.c:1): pid 7 is busy\n"), 0o600)
	e := Failed("restore", "/lab", src, dir, errors.New("exit 1"))
	if filepath.Dir(e.LogPath) != dir {
		t.Errorf("log kept at %s, want in %s", e.LogPath, dir)
	}
	if want := "criu restore failed: /lab: pid 7 is busy (full log: " + e.LogPath + ")"; e.Error() != want {
		t.Errorf("error %q, want %q", e.Error(), want)
	}
}
