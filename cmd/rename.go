package cmd

import (
	"github.com/spf13/cobra"
)

func init() { register(newRenameCommand) }

func newRenameCommand(g *Global) *cobra.Command {
	return &cobra.Command{
		Use:   "rename OLD NEW",
		Short: "Rename a container or subtree",
		Long: `Give the container at OLD the path NEW. It may be running or frozen; no
process is moved or disturbed, and its children move with it. Only the last
name can change (cr rename /a/b /a/c); a name already taken is refused.`,
		Example: `  cr rename /unnamed1 /calculate_pi`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, n, err := openNode(args[0])
			if err != nil {
				return err
			}
			dst, err := e.viewer.Resolve(args[1])
			if err != nil {
				return usageError{err}
			}
			if dst == e.viewer.Root {
				return usageError{errRootTarget(args[1])}
			}
			return e.tree.Rename(n.Path, dst)
		},
	}
}
