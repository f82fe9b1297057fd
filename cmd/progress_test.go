package cmd

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestProgressLine(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		elapsed     time.Duration
		want        string
	}{
		{1 << 20, 4 << 20, time.Second, "writing lab.cr: 1.0MiB of 4.0MiB (25%), 1.0MiB/s"},
		{5 << 20, 4 << 20, 2 * time.Second, "writing lab.cr: 5.0MiB of 4.0MiB (100%), 2.5MiB/s"}, // an estimate passed
		{3 << 30, 0, 2 * time.Second, "writing lab.cr: 3.0GiB, 1.5GiB/s"},                        // no total known
		{0, 10, 0, "writing lab.cr: 0B of 10B (0%)"},
	} {
		if got := progressLine("writing lab.cr", tc.done, tc.total, tc.elapsed); got != tc.want {
			t.Errorf("progressLine(%d, %d, %s) = %q, want %q", tc.done, tc.total, tc.elapsed, got, tc.want)
		}
	}
}

// openPty returns both ends of a new pseudo-terminal.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(filepath.Join("/dev/pts", strconv.Itoa(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// Progress goes to a terminal only, and never with -q or --json.
func TestProgressOnlyOnATerminal(t *testing.T) {
	master, slave := openPty(t)
	p := newProgress(slave, &Global{}, false)
	p.phase("dumping /lab", 4<<20)
	p.update(1 << 20)
	p.done()
	// The terminal may hand the output over in more than one read: read
	// until the line is cleared at the end, or the deadline.
	buf := make([]byte, 4096)
	_ = master.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got string
	for !strings.HasSuffix(got, "/s\r\x1b[K") {
		n, err := master.Read(buf)
		if err != nil {
			t.Fatalf("%v after %q", err, got)
		}
		got += string(buf[:n])
	}
	if !strings.HasPrefix(got, "\r\x1b[Kdumping /lab: 1.0MiB of 4.0MiB (25%), ") || !strings.HasSuffix(got, "/s\r\x1b[K") {
		t.Errorf("the terminal got %q", got)
	}
	for _, tc := range []struct {
		name string
		g    Global
		json bool
	}{{"-q", Global{Quiet: true}, false}, {"--json", Global{}, true}} {
		if newProgress(slave, &tc.g, tc.json).on {
			t.Errorf("progress shown with %s", tc.name)
		}
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if newProgress(f, &Global{}, false).on {
		t.Error("progress shown on a file")
	}
}

// -q leaves only errors; -v says more.
func TestQuietAndVerbose(t *testing.T) {
	dir := t.TempDir()
	code, out, errOut := runCr("certs", "token", "-q", filepath.Join(dir, "a"))
	if code != 0 || out != "" || errOut != "" {
		t.Errorf("cr certs token -q: exit %d, stdout %q, stderr %q; want nothing", code, out, errOut)
	}
	code, out, _ = runCr("certs", "token", filepath.Join(dir, "b"))
	if code != 0 || out != "wrote "+filepath.Join(dir, "b")+"\n" {
		t.Errorf("cr certs token: exit %d, stdout %q", code, out)
	}
	code, _, errOut = runCr("-q", "certs", "token", filepath.Join(dir, "b"))
	if code == 0 || !strings.HasPrefix(errOut, "Error: ") {
		t.Errorf("cr -q certs token on an existing file: exit %d, stderr %q; want the error", code, errOut)
	}
	var b strings.Builder
	(&Global{Verbose: true}).verbosef(&b, "dumped %s in %s", "/lab", "1s")
	(&Global{}).verbosef(&b, "not shown")
	if b.String() != "cr: dumped /lab in 1s\n" {
		t.Errorf("verbosef wrote %q", b.String())
	}
}
