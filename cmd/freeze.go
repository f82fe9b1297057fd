package cmd

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/events"
)

func init() { register(newFreezeCommand); register(newThawCommand) }

func newFreezeCommand(g *Global) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "freeze PATH",
		Short: "Freeze a container and everything under it",
		Long: `Freeze the whole subtree at PATH atomically with the cgroup freezer (v2
cgroup.freeze where a v2 hierarchy exists, v1 freezer.state otherwise). Returns
once every process is frozen; if that does not happen within --timeout the
freeze is undone and cr fails.`,
		Example: `  cr freeze /vserver1
  cr freeze --timeout 30s /big`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, n, err := openNode(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := e.tree.Freeze(ctx, n); err != nil {
				return err
			}
			e.tree.RecordSubtree(n, events.Frozen, nil)
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the freeze")
	return c
}

func newThawCommand(g *Global) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:     "thaw PATH",
		Short:   "Thaw a frozen container and everything under it",
		Example: `  cr thaw /vserver1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, n, err := openNode(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if n.State() != "frozen" && n.State() != "freezing" {
				return e.tree.Thaw(ctx, n) // nothing to record (a leaf frozen on its own is thawed too)
			}
			if err := e.tree.Thaw(ctx, n); err != nil {
				return err
			}
			e.tree.RecordSubtree(n, events.Thawed, nil)
			return nil
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the thaw")
	return c
}
