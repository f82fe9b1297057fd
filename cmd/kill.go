package cmd

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/nstree"
)

func init() { register(newKillCommand) }

func newKillCommand(g *Global) *cobra.Command {
	var sig string
	var grace time.Duration
	c := &cobra.Command{
		Use:   "kill [-s SIGNAL] PATH",
		Short: "Signal or end a container and everything under it",
		Long: `Without -s: end the subtree at PATH, the "rm -rf" of the tree: SIGTERM to
every process, up to --grace for them to exit, SIGKILL for the rest, then the
nodes are removed. A frozen subtree is killed at once (it cannot act on
SIGTERM). With -s: send that signal to every process of the subtree and leave
the nodes.`,
		Example: `  cr kill /vserver1
  cr kill -s HUP /web
  cr kill --grace 2s /lab`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var o nstree.KillOptions
			o.Grace = grace
			if sig != "" {
				s, err := parseSignal(sig)
				if err != nil {
					return usageError{err}
				}
				o.Signal = s
			}
			e, n, err := openNode(args[0])
			if err != nil {
				return err
			}
			return e.tree.Kill(cmd.Context(), n, o)
		},
	}
	c.Flags().StringVarP(&sig, "signal", "s", "", "signal to send (name like TERM or SIGHUP, or number)")
	c.Flags().DurationVar(&grace, "grace", 10*time.Second, "how long to wait after SIGTERM before SIGKILL")
	return c
}

func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("invalid signal %q", s)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("invalid signal %q", s)
}
