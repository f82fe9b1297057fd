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
)

// Version is cr's version, set at build time with -ldflags "-X ...".
var Version = "0.1.0-dev"

// Global holds the flags every command shares.
type Global struct {
	CRIU string // --criu: the CRIU binary to use
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
	var cmds []*cobra.Command
	for _, f := range commands {
		cmds = append(cmds, f(g))
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	for _, c := range cmds {
		addExitStatusHelp(c)
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return usageError{err}
				}
				return nil
			}
		}
		root.AddCommand(c)
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	addCompletions(root)
	return root
}

// addExitStatusHelp ends the help of c and of each of its subcommands with
// the exit-status table.
func addExitStatusHelp(c *cobra.Command) {
	if c.Long == "" {
		c.Long = c.Short
	}
	c.Long += exitStatusHelp
	for _, sub := range c.Commands() {
		addExitStatusHelp(sub)
	}
}

// Execute runs cr with os.Args and returns the process exit status.
func Execute() int {
	root := NewRoot()
	err := root.Execute()
	if err == nil {
		return 0
	}
	if se, ok := err.(exitStatus); ok {
		return int(se)
	}
	fmt.Fprintln(os.Stderr, "Error:", errorText(err))
	var ce *criubin.CRIUError
	if errors.As(err, &ce) && len(ce.Lines) > 0 {
		fmt.Fprintln(os.Stderr, "CRIU said:")
		for _, l := range ce.Lines {
			fmt.Fprintln(os.Stderr, "  "+oneLine(l))
		}
	}
	return ExitCode(err)
}

// exitStatus is returned by commands whose status is another program's
// (cr enter): no message, just the status.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

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
