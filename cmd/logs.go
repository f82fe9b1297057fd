package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/spf13/cobra"
)

func init() { register(newLogsCommand) }

func newLogsCommand(g *Global) *cobra.Command {
	var follow bool
	c := &cobra.Command{
		Use:   "logs [-f] PATH",
		Short: "Show a container's captured output",
		Long: `Print what the job of the container at PATH wrote to stdout and stderr. With
-f, keep printing as it writes until the container is gone or cr is
interrupted.`,
		Example: `  cr logs /lab/pi
  cr logs -f /lab/pi`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			e, n, err := openNode(args[0])
			if err != nil {
				return err
			}
			return followFile(cmd.Context(), cmd.OutOrStdout(), e.tree.LogPath(n.ID), follow)
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return c
}

// followFile copies path to out, and with follow keeps copying what is
// appended until the file is removed or ctx ends.
func followFile(ctx context.Context, out io.Writer, path string, follow bool) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !follow {
			return nil // no output yet
		}
	} else if err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	var off int64
	for {
		if f == nil {
			if f, err = os.Open(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("read log: %w", err)
			}
		}
		if f != nil {
			n, err := io.Copy(out, f)
			off += n
			if err != nil {
				return err
			}
		}
		if !follow {
			if f != nil {
				f.Close()
			}
			return nil
		}
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && f != nil {
			f.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
