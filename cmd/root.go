// Package cmd is cr's command line: one file per command, each with an
// options struct and a run function that tests can call; flags are turned
// into options here and the library packages never see cobra.
package cmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/restore"
)

// Version is cr's version, set at build time with -ldflags "-X ...".
var Version = "0.1.0-dev"

// Global holds the flags every command shares.
type Global struct {
	CRIU    string // --criu: the CRIU binary to use
	Quiet   bool   // -q: print only errors
	Verbose bool   // -v: also CRIU's log paths and the timing of each phase
}

var commands []func(*Global) *cobra.Command

// register adds a command constructor; each command file calls it from init.
func register(f func(*Global) *cobra.Command) { commands = append(commands, f) }

// NewRoot builds the cr command tree.
func NewRoot() *cobra.Command {
	g := &Global{}
	root := &cobra.Command{
		Use:   "cr",
		Short: "Checkpoint, restore and migrate trees of Linux containers",
		Long: `cr keeps a tree of named containers (/vserver1, /vserver1/calculate_pi),
freezes whole subtrees, checkpoints them with CRIU into one compressed file,
restores them with every pid intact, and moves them to another host.

A process inside a container sees that container as "/" and cannot name
anything above it.`,
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.CRIU, "criu", "", "CRIU binary to use (default: $CR_CRIU, then /usr/local/libexec/cr/criu, then criu on PATH)")
	root.PersistentFlags().BoolVarP(&g.Quiet, "quiet", "q", false, "print only errors (no progress, no report)")
	root.PersistentFlags().BoolVarP(&g.Verbose, "verbose", "v", false, "also print CRIU's log paths and the time of each phase")
	root.MarkFlagsMutuallyExclusive("quiet", "verbose")
	// Required flags and flag groups are checked here, before cobra would,
	// so that their errors are usage errors. -q silences stdout.
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		if err := c.ValidateRequiredFlags(); err != nil {
			return usageError{err}
		}
		if err := c.ValidateFlagGroups(); err != nil {
			return usageError{err}
		}
		if g.Quiet {
			c.SetOut(io.Discard)
		}
		return nil
	}
	var cmds []*cobra.Command
	for _, f := range commands {
		cmds = append(cmds, f(g))
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	for _, c := range cmds {
		root.AddCommand(c)
	}
	setupCommand(root)
	addCompletions(root)
	return root
}

// setupCommand gives c and every command below it the exit-status table in
// its help, usage errors for bad arguments and flags, and, for a command
// that only groups others (cr images), an error for an unknown subcommand.
func setupCommand(c *cobra.Command) {
	if c.HasParent() {
		if c.Long == "" {
			c.Long = c.Short
		}
		c.Long += exitStatusHelp
	}
	if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
		c.Args = cobra.ArbitraryArgs
		c.RunE = func(cmd *cobra.Command, a []string) error {
			if len(a) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %q (see %s --help)", a[0], cmd.CommandPath(), cmd.CommandPath())}
			}
			return cmd.Help()
		}
		// Its arguments are its subcommands, which cobra completes.
		c.ValidArgsFunction = cobra.NoFileCompletions
	}
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	for _, s := range c.Commands() {
		setupCommand(s)
	}
}

// Execute runs cr with os.Args and returns the process exit status.
func Execute() int {
	return execute(NewRoot(), os.Args[1:], os.Stdout, os.Stderr)
}

// execute runs root with args and reports a failure on errOut: as text, or
// under --json as one JSON object (see writeError).
func execute(root *cobra.Command, args []string, out, errOut io.Writer) int {
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(errOut)
	c, err := root.ExecuteC()
	if err == nil {
		return ExitOK
	}
	code := ExitCode(err)
	if _, ok := err.(exitStatus); ok {
		return code
	}
	if f := c.Flags().Lookup("json"); f != nil && f.Value.String() == "true" {
		writeError(errOut, err, code)
		return code
	}
	if ie, ok := err.(interruptedError); ok {
		fmt.Fprintln(errOut, errorText(ie))
		return code
	}
	fmt.Fprintln(errOut, "Error:", errorText(err))
	var ce *criubin.CRIUError
	if errors.As(err, &ce) && len(ce.Lines) > 0 {
		fmt.Fprintln(errOut, "CRIU said:")
		for _, l := range ce.Lines {
			fmt.Fprintln(errOut, "  "+oneLine(l))
		}
	}
	return code
}

// JSONError is what a command run with --json writes to stderr when it
// fails: {"error": {...}}; stdout then has nothing.
type JSONError struct {
	Error JSONErrorBody `json:"error"`
}

// JSONErrorBody describes the failure.
type JSONErrorBody struct {
	Message string `json:"message"` // what cr would print after "Error: "
	Code    int    `json:"code"`    // the exit status
	Kind    string `json:"kind"`    // the exit status's name: "usage", "not_found", "criu", ...
	// CRIU's own explanation, when CRIU failed.
	CRIULines []string `json:"criu_lines,omitempty"`
	CRIULog   string   `json:"criu_log,omitempty"`
}

func writeError(w io.Writer, err error, code int) {
	e := JSONErrorBody{Message: err.Error(), Code: code, Kind: errKind(code)}
	var ce *criubin.CRIUError
	if errors.As(err, &ce) {
		e.CRIULines, e.CRIULog = ce.Lines, ce.LogPath
	}
	b, _ := json.Marshal(JSONError{Error: e})
	fmt.Fprintf(w, "%s\n", b)
}

// env is what most commands need: the tree, loaded, and who is looking.
type env struct {
	tree   *nstree.Tree
	forest *nstree.Forest
	viewer nstree.Viewer
}

func openEnv() (*env, error) {
	if err := nstree.RequireRoot(); err != nil {
		return nil, err
	}
	t, err := nstree.Open()
	if err != nil {
		return nil, err
	}
	f, err := t.Load()
	if err != nil {
		return nil, err
	}
	if f.PendingPrune() {
		t.PruneExited()
		if f, err = t.Load(); err != nil {
			return nil, err
		}
	}
	v, err := t.Viewer(f)
	if err != nil {
		return nil, err
	}
	if v.Root == "/" {
		// What the restores of a cr that died left goes first.
		if msgs := restore.Recover(t); len(msgs) > 0 {
			for _, m := range msgs {
				fmt.Fprintf(os.Stderr, "cr: %s\n", m)
			}
			if f, err = t.Load(); err != nil {
				return nil, err
			}
		}
	}
	return &env{tree: t, forest: f, viewer: v}, nil
}

// node resolves a path the user typed to an existing node in their view.
func (e *env) node(arg string) (*nstree.Node, error) {
	abs, err := e.viewer.Resolve(arg)
	if err != nil {
		return nil, usageError{err}
	}
	if abs == e.viewer.Root {
		if abs == "/" {
			return nil, usageError{fmt.Errorf("%q is the root of the tree, not a container", arg)}
		}
		return nil, fmt.Errorf("%w: %q is your own container", nstree.ErrOutside, arg)
	}
	n, err := e.forest.Lookup(abs)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", nstree.ErrNotFound, arg)
	}
	return n, nil
}

// openNode opens the tree and resolves the node the user named.
func openNode(arg string) (*env, *nstree.Node, error) {
	e, err := openEnv()
	if err != nil {
		return nil, nil, err
	}
	n, err := e.node(arg)
	if err != nil {
		return nil, nil, err
	}
	return e, n, nil
}

// show is how the viewer names abs.
func (e *env) show(abs string) string {
	s, _ := e.viewer.Show(abs)
	return s
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func errRootTarget(arg string) error {
	return fmt.Errorf("%q: give the container a name", arg)
}
