package cmd

import (
	"fmt"
	"path"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/nstree"
)

func init() { register(newRenameCommand) }

func newRenameCommand(g *Global) *cobra.Command {
	return &cobra.Command{
		Use:   "rename PATH NEW",
		Short: "Rename a container or subtree",
		Long: `Rename the container at PATH. NEW is either a bare name, which renames it
in place (cr rename /a/b c makes it /a/c), or a path with the same parent
(cr rename /a/b /a/c). It may be running or frozen; no process is moved or
disturbed, and its children move with it. A container cannot move under
another parent; a name already taken is refused.`,
		Example: `  cr rename /lab/pi pi-old          # now /lab/pi-old
  cr rename /unnamed1 /calculate_pi`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRename(args[0], args[1])
		},
	}
}

func runRename(old, new string) error {
	e, n, err := openNode(old)
	if err != nil {
		return err
	}
	dst, err := renameTarget(e.viewer, n.Path, new)
	if err != nil {
		return err
	}
	return e.tree.Rename(n.Path, dst)
}

// renameTarget is the absolute path that NEW names for the node at abs: a
// bare name is its sibling, a path must have the same parent.
func renameTarget(v nstree.Viewer, abs, new string) (string, error) {
	if !strings.Contains(new, "/") {
		if err := nstree.ValidateName(new); err != nil {
			return "", usageError{err}
		}
		return path.Join(path.Dir(abs), new), nil
	}
	dst, err := v.Resolve(new)
	if err != nil {
		return "", usageError{err}
	}
	if dst == v.Root {
		return "", usageError{errRootTarget(new)}
	}
	if path.Dir(dst) != path.Dir(abs) {
		parent, _ := v.Show(path.Dir(abs))
		return "", usageError{fmt.Errorf("%s: a container cannot move under another parent; give a name, or a path in %s", new, parent)}
	}
	return dst, nil
}
