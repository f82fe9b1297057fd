// Command cr checkpoints, restores and migrates trees of Linux containers.
package main

import (
	"os"

	"github.com/cr-dev/cr/cmd"
	"github.com/cr-dev/cr/nstree"
)

func main() {
	// The container init is cr re-executed; it must not go through the CLI.
	if len(os.Args) > 1 && os.Args[1] == nstree.InitArg {
		os.Exit(nstree.InitMain(os.Args[1:]))
	}
	os.Exit(cmd.Execute())
}
