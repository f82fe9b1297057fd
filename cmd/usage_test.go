package cmd

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/nstree"
)

// runCr runs cr's command line in the test process.
func runCr(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = execute(NewRoot(), args, &o, &e)
	return code, o.String(), e.String()
}

// Usage errors exit 2 from every command, whatever cobra or cr found
// wrong, and say what: none of these touch the tree, so they need no root.
func TestUsageErrorsExit2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // the whole of stderr
	}{
		{[]string{"snapshot", "/lab"}, "Error: required flag(s) \"store\" not set\n"},
		{[]string{"images", "rm", "--store", "/nonexistent"}, "Error: requires at least 1 arg(s), only received 0\n"},
		{[]string{"images", "inspect", "--store", "/nonexistent", "a", "b"}, "Error: accepts 1 arg(s), received 2\n"},
		{[]string{"images", "verify", "--store", "/nonexistent", "extra"}, "Error: unknown command \"extra\" for \"cr images verify\"\n"},
		{[]string{"images", "bogus"}, "Error: unknown command \"bogus\" for \"cr images\" (see cr images --help)\n"},
		{[]string{"certs", "token"}, "Error: accepts 1 arg(s), received 0\n"},
		{[]string{"certs", "token", "a", "b"}, "Error: accepts 1 arg(s), received 2\n"},
		{[]string{"certs", "tls", "--bogus", "d"}, "Error: unknown flag: --bogus\n"},
		{[]string{"bogus"}, "Error: unknown command \"bogus\" for \"cr\" (see cr --help)\n"},
		{[]string{"freeze", "/a", "/b"}, "Error: accepts 1 arg(s), received 2\n"},
		{[]string{"check", "extra"}, "Error: unknown command \"extra\" for \"cr check\"\n"},
		{[]string{"ls", "--bogus"}, "Error: unknown flag: --bogus\n"},
		{[]string{"ls", "-q", "-v"}, "Error: if any flags in the group [quiet verbose] are set none of the others can be; [quiet verbose] were all set\n"},
		{[]string{"run", "/x"}, "Error: missing command: cr run /x -- CMD [ARGS...]\n"},
		{[]string{"run", "/x", "--"}, "Error: missing command: cr run /x -- CMD [ARGS...]\n"},
	} {
		code, out, errOut := runCr(tc.args...)
		if tc.want == "" {
			if code == ExitUsage {
				t.Errorf("cr %s: exit 2 (%s), want a command", strings.Join(tc.args, " "), errOut)
			}
			continue
		}
		if code != ExitUsage || errOut != tc.want || out != "" {
			t.Errorf("cr %s: exit %d, stdout %q, stderr %q; want exit 2 and stderr %q", strings.Join(tc.args, " "), code, out, errOut, tc.want)
		}
	}
}

// Under --json a failure is one JSON object on stderr, and stdout stays
// empty.
func TestJSONErrors(t *testing.T) {
	code, out, errOut := runCr("images", "ls", "--json")
	if code != ExitUsage || out != "" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	var e JSONError
	dec := json.NewDecoder(strings.NewReader(errOut))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("stderr %q is not a JSON error: %v", errOut, err)
	}
	want := JSONErrorBody{Message: "--store DIR or s3://BUCKET/PREFIX is required", Code: 2, Kind: "usage"}
	if e.Error.Message != want.Message || e.Error.Code != want.Code || e.Error.Kind != want.Kind {
		t.Errorf("got %+v, want %+v", e.Error, want)
	}
	if got := errOut; got != `{"error":{"message":"--store DIR or s3://BUCKET/PREFIX is required","code":2,"kind":"usage"}}`+"\n" {
		t.Errorf("stderr %q", got)
	}
}

func TestRenameTarget(t *testing.T) {
	host := nstree.HostViewer
	inside := nstree.Viewer{Root: "/vs"}
	for _, tc := range []struct {
		v         nstree.Viewer
		abs, arg  string
		want, err string
	}{
		{host, "/a/b", "c", "/a/c", ""},
		{host, "/a", "c", "/c", ""},
		{host, "/a/b", "/a/c", "/a/c", ""},
		{host, "/a/b", "a/c", "/a/c", ""},
		{host, "/a/b", "/c", "", "/c: a container cannot move under another parent; give a name, or a path in /a"},
		{host, "/a/b", "/a/b/c", "", "/a/b/c: a container cannot move under another parent; give a name, or a path in /a"},
		{host, "/a/b", ".x", "", `invalid name: ".x": a name may not start with "."`},
		{host, "/a/b", "/", "", `"/": give the container a name`},
		{inside, "/vs/a/b", "c", "/vs/a/c", ""},
		{inside, "/vs/a/b", "/a/c", "/vs/a/c", ""},
		{inside, "/vs/a", "/c", "/vs/c", ""},
		{inside, "/vs/a/b", "/c", "", "/c: a container cannot move under another parent; give a name, or a path in /a"},
	} {
		got, err := renameTarget(tc.v, tc.abs, tc.arg)
		msg := ""
		if err != nil {
			msg = err.Error()
			if ExitCode(err) != ExitUsage {
				t.Errorf("renameTarget(%s, %q): exit %d, want 2", tc.abs, tc.arg, ExitCode(err))
			}
		}
		if got != tc.want || msg != tc.err {
			t.Errorf("renameTarget(%s, %q) = %q, %q; want %q, %q", tc.abs, tc.arg, got, msg, tc.want, tc.err)
		}
	}
}

// Every command and subcommand's --help, as a user sees it, has examples
// and the exit-status table.
func TestEverySubcommandHelp(t *testing.T) {
	var walk func(c *cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			if s.Name() == "help" || s.Name() == "completion" {
				continue
			}
			args := append(strings.Fields(strings.TrimPrefix(s.CommandPath(), "cr ")), "--help")
			code, out, errOut := runCr(args...)
			if code != 0 || errOut != "" {
				t.Errorf("cr %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
			}
			if !strings.Contains(out, "\nExamples:\n  cr ") {
				t.Errorf("cr %s has no examples", strings.Join(args, " "))
			}
			if !strings.Contains(out, exitStatusHelp) {
				t.Errorf("cr %s lacks the exit-status table", strings.Join(args, " "))
			}
			n++
			walk(s)
		}
	}
	walk(NewRoot())
	if n < 25 {
		t.Errorf("only %d commands visited", n)
	}
}
