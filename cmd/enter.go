package cmd

import (
	"github.com/spf13/cobra"
)

func init() { register(newEnterCommand) }

func newEnterCommand(g *Global) *cobra.Command {
	c := &cobra.Command{
		Use:   "enter PATH [--] [CMD [ARGS...]]",
		Short: "Run a command inside a container",
		Long: `Run CMD (default /bin/sh) inside the namespaces and cgroup of the container
at PATH (its cgroup namespace included), attached to your terminal: on a
terminal the command gets a pseudo-terminal of its own, as the controlling
terminal of a session inside the container, so a shell there has job
control. cr exits with the command's status. Inside,
"cr ls" sees the container as "/". A process entered this way is not a
descendant of the container's init, so checkpoint the container after it ends.`,
		Example: `  cr enter /lab/pi
  cr enter /lab/pi -- ps ax`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			e, n, err := openNode(args[0])
			if err != nil {
				return err
			}
			cmd := args[1:]
			if len(cmd) > 0 && cmd[0] == "--" {
				cmd = cmd[1:]
			}
			code, err := e.tree.Enter(n, cmd)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitStatus(code)
			}
			return nil
		},
	}
	c.Flags().SetInterspersed(false)
	return c
}
