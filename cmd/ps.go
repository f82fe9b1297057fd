package cmd

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/nstree"
)

func init() { register(newPsCommand) }

func newPsCommand(g *Global) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "ps PATH",
		Short: "List the processes of a container",
		Long: `List the processes of the container at PATH (not of its children): the
host pid, the pid inside the container's pid namespace, and the command.`,
		Example: `  cr ps /lab/pi
  cr ps --json /lab/pi`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runPs(cmd.OutOrStdout(), args[0], asJSON) },
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func runPs(out io.Writer, path string, asJSON bool) error {
	_, n, err := openNode(path)
	if err != nil {
		return err
	}
	procs := []nstree.Process{}
	for _, pid := range mustProcs(n) {
		if p, ok := nstree.ProcessInfo(pid); ok {
			procs = append(procs, p)
		}
	}
	if asJSON {
		return writeJSON(out, procs)
	}
	return printProcs(out, procs)
}

// printProcs prints cr ps's table.
func printProcs(out io.Writer, procs []nstree.Process) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST PID\tPID\tCOMMAND")
	for _, p := range procs {
		fmt.Fprintf(tw, "%d\t%d\t%s\n", p.HostPid, p.Pid, oneLine(p.Command))
	}
	return tw.Flush()
}
