package cmd

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/dump"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/criuimg"
	"github.com/cr-dev/cr/images/store"
	"github.com/cr-dev/cr/migrate"
	"github.com/cr-dev/cr/nstree"
)

func TestSplitRunArgs(t *testing.T) {
	cases := []struct {
		args []string
		dash int
		path string
		cmd  string
	}{
		{[]string{"/lab/pi", "--", "sleep", "1"}, -1, "/lab/pi", "sleep 1"}, // "--" after PATH arrives as an argument
		{[]string{"/lab/pi", "sleep", "1"}, 1, "/lab/pi", "sleep 1"},
		{[]string{"sleep", "1"}, 0, "", "sleep 1"},
		{[]string{"/bin/sleep", "1"}, -1, "/bin/sleep", "1"}, // ambiguous without "--": first "/" arg is the path
		{[]string{"sleep", "--", "x"}, -1, "sleep", "x"},
		{[]string{"echo"}, -1, "", "echo"},
		{[]string{"", "--", "sleep", "1"}, -1, "", "sleep 1"}, // an empty PATH is given, and refused
		{[]string{"/x"}, -1, "/x", ""},                        // a path without a command: cr run says so
	}
	for _, c := range cases {
		p, given, cmd := splitRunArgs(append([]string(nil), c.args...), c.dash)
		if p != c.path || strings.Join(cmd, " ") != c.cmd || given != (c.path != "" || c.args[0] == "") {
			t.Errorf("splitRunArgs(%q, %d) = %q, %q; want %q, %q", c.args, c.dash, p, cmd, c.path, c.cmd)
		}
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"TERM": syscall.SIGTERM, "sigkill": syscall.SIGKILL, "HUP": syscall.SIGHUP, "10": syscall.SIGUSR1} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "NOPE", "0", "65", "-1"} {
		if _, err := parseSignal(in); err == nil {
			t.Errorf("parseSignal(%q) accepted", in)
		}
	}
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		err  error
		code int
	}{
		{nil, ExitOK},
		{errors.New("x"), ExitFailure},
		{usageError{errors.New("bad")}, ExitUsage},
		{fmt.Errorf("p: %w", nstree.ErrInvalidName), ExitUsage},
		{fmt.Errorf("%w: /x", nstree.ErrNotFound), ExitNotFound},
		{fmt.Errorf("%w: /x", nstree.ErrExists), ExitExists},
		{nstree.ErrNotRoot, ExitDenied},
		{nstree.ErrOutside, ExitDenied},
		{envError{errors.New("no criu")}, ExitEnv},
		{fmt.Errorf("find: %w", criubin.ErrNotFound), ExitEnv},
		{&criubin.CRIUError{Op: "dump", Err: errors.New("x")}, ExitCRIU},
		{fmt.Errorf("read: %w", images.ErrCorrupt), ExitImage},
		{images.ErrUnsupportedVersion, ExitImage},
		{errNoImage, ExitNotFound},
		{fmt.Errorf("%w: frozen", nstree.ErrState), ExitState},
		{fmt.Errorf("authenticate: %w: the server refused our credentials", migrate.ErrAuth), ExitAuth},
		{fmt.Errorf("x: %w", migrate.ErrNoAuth), ExitUsage},
		{fmt.Errorf("snapshot: %w", store.ErrLocked), ExitLocked},
		{fmt.Errorf("x: %w", dump.ErrBusy), ExitLocked},
		{fmt.Errorf("x: %w", criuimg.ErrBadImage), ExitImage},
		{interruptedError{"/lab left running"}, ExitInterrupted},
		{exitStatus(42), 42},
	}
	for _, c := range cases {
		if got := ExitCode(c.err); got != c.code {
			t.Errorf("ExitCode(%v) = %d, want %d", c.err, got, c.code)
		}
	}
}

// TestEveryCommandDocumentsExitStatus: the help each command prints, at
// every depth (cr images ls, cr certs tls), has examples and the exit-status table.
func TestEveryCommandDocumentsExitStatus(t *testing.T) {
	root := NewRoot()
	var visit func(c *cobra.Command)
	seen := 0
	visit = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if !sub.IsAvailableCommand() || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			seen++
			var b bytes.Buffer
			sub.SetOut(&b)
			if err := sub.Help(); err != nil {
				t.Fatal(err)
			}
			help := b.String()
			if !strings.Contains(help, exitStatusHelp+"\n") {
				t.Errorf("%s --help lacks the EXIT STATUS table:\n%s", sub.CommandPath(), help)
			}
			if sub.Example == "" || !strings.Contains(help, "\nExamples:\n"+sub.Example+"\n") {
				t.Errorf("%s --help has no examples", sub.CommandPath())
			}
			visit(sub)
		}
	}
	visit(root)
	if seen < 25 {
		t.Errorf("visited %d commands; cr has more (the images and certs subcommands)", seen)
	}
}
