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
host pid, the pid inside the container's pid namespace, and the command; for
a container on cr's bridge (cr run --net=bridge) also its address.`,
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
	procs := []psEntry{}
	for _, pid := range mustProcs(n) {
		if p, ok := nstree.ProcessInfo(pid); ok {
			procs = append(procs, psEntry{Process: p, Address: n.Network.Addr()})
		}
	}
	if asJSON {
		return writeJSON(out, procs)
	}
	return printProcs(out, procs)
}

// psEntry is one process as cr ps shows it: with the container's bridge
// address, if it has one.
type psEntry struct {
	nstree.Process
	Address string `json:"address,omitempty"`
}

// printProcs prints cr ps's table; the ADDRESS column only for a
// container with an address.
func printProcs(out io.Writer, procs []psEntry) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	addr := len(procs) > 0 && procs[0].Address != ""
	if addr {
		fmt.Fprintln(tw, "HOST PID\tPID\tADDRESS\tCOMMAND")
	} else {
		fmt.Fprintln(tw, "HOST PID\tPID\tCOMMAND")
	}
	for _, p := range procs {
		if addr {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\n", p.HostPid, p.Pid, p.Address, oneLine(p.Command))
		} else {
			fmt.Fprintf(tw, "%d\t%d\t%s\n", p.HostPid, p.Pid, oneLine(p.Command))
		}
	}
	return tw.Flush()
}
