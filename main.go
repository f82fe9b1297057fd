// Command cr checkpoints, restores and migrates trees of Linux containers.
//
// The container init is this binary: the runtime must not keep the cgroup
// files it reads for its GOMAXPROCS default open, as they would be dumped
// with every container (and are out of reach inside a --mount container).
//
//go:debug containermaxprocs=0
package main

import (
	"os"

	"github.com/cr-dev/cr/cmd"
	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/probe"
)

func main() {
	// The container init is cr re-executed; it must not go through the CLI.
	if len(os.Args) > 1 && os.Args[1] == nstree.InitArg {
		os.Exit(nstree.InitMain(os.Args[1:]))
	}
	// So is the action script of a streamed restore's CRIU.
	if len(os.Args) == 3 && os.Args[1] == criubin.HookCommand {
		os.Exit(criubin.RunHook(os.Args[2]))
	}
	// So is the scratch job of cr check's probes.
	if len(os.Args) > 1 && os.Args[1] == probe.JobArg {
		os.Exit(probe.JobMain(os.Args[1:]))
	}
	os.Exit(cmd.Execute())
}
