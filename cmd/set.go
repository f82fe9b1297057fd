package cmd

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/limits"
)

// SetOptions are the flags of cr set (it has none yet: the limits are
// NAME=VALUE arguments).
type SetOptions struct{}

func init() { register(newSetCommand) }

func newSetCommand(g *Global) *cobra.Command {
	var o SetOptions
	return &cobra.Command{
		Use:   "set PATH NAME=VALUE...",
		Short: "Set a container's resource limits",
		Long: `Set resource limits of the container at PATH, for its whole subtree, while it
runs. Each NAME=VALUE changes one limit and leaves the others as they are;
"cr ls" shows them. The names (cr run has the same as flags):

  memory=SIZE       memory limit (512M, 1G: bytes, or k, m, g, t)
  memory-high=SIZE  memory throttling threshold (cgroup v2 only)
  cpus=N            CPU time, in CPUs (1.5)
  cpu-weight=N      CPU weight relative to siblings, 1 to 10000
  pids=N            maximum number of processes and threads
  blkio-weight=N    block I/O weight relative to siblings, 10 to 1000
                    (blkio.weight or blkio.bfq.weight on v1, io.weight or
                    io.bfq.weight on v2; refused where the host has none)

Limits nest: a container's limit cannot be above an ancestor's, and an
ancestor's cannot be lowered below a descendant's; either is refused (exit
status 2). From inside a container you can limit the containers below
yours but not your own (exit status 5).`,
		Example: `  cr set /lab memory=1G cpus=2 pids=100
  cr set /lab/pi cpus=0.5
  cr set /lab/batch blkio-weight=50`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSet(cmd.OutOrStdout(), o, args[0], args[1:])
		},
	}
}

func runSet(out io.Writer, _ SetOptions, path string, assign []string) error {
	if len(assign) == 0 {
		return usageError{fmt.Errorf("missing limits: cr set %s NAME=VALUE... (NAME one of %s)", path, strings.Join(limits.Names, ", "))}
	}
	if _, err := limits.ParseAssignments(limits.Limits{}, assign); err != nil {
		return usageError{err}
	}
	e, n, err := openNode(path)
	if err != nil {
		return err
	}
	l, err := e.tree.SetLimits(n.Path, assign)
	if err != nil {
		if errors.Is(err, limits.ErrInvalid) {
			return usageError{err}
		}
		return err
	}
	fmt.Fprintf(out, "%s: %s\n", e.show(n.Path), l)
	return nil
}
