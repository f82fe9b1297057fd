package cmd

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/images/store"
	"github.com/cr-dev/cr/limits"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
)

// Shell completion beyond command and flag names: container paths from the
// tree as the caller sees it, snapshot ids and paths from the --store given
// on the line, signal names, and the values of enum flags. cobra's
// "completion" command writes the bash, zsh and fish scripts that call
// these (through its hidden __complete command).

// completions lists, for each command path, how its arguments and flags
// complete. addCompletions applies it once the tree of commands is built.
var completions = map[string]func(c *cobra.Command){
	"checkpoint": func(c *cobra.Command) {
		c.ValidArgsFunction = argsThen(completeContainers)
		flagValues(c, "compress", compressions)
	},
	"enter":  func(c *cobra.Command) { c.ValidArgsFunction = completeFirstThenDefault },
	"freeze": func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeContainers) },
	"thaw":   func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeContainers) },
	"kill": func(c *cobra.Command) {
		c.ValidArgsFunction = argsThen(completeContainers)
		_ = c.RegisterFlagCompletionFunc("signal", completeSignals)
	},
	"logs":   func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeContainers) },
	"events": func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeContainers) },
	"stats":  func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeContainers) },
	"ls":     func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeContainers) },
	"ps":     func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeContainers) },
	"set":    func(c *cobra.Command) { c.ValidArgsFunction = completeSet },
	"rename": func(c *cobra.Command) {
		c.ValidArgsFunction = argsThen(completeContainers, completeParents)
	},
	"migrate": func(c *cobra.Command) {
		c.ValidArgsFunction = argsThen(completeContainers, noFiles)
		_ = c.RegisterFlagCompletionFunc("as", completeParents)
	},
	"snapshot": func(c *cobra.Command) {
		c.ValidArgsFunction = argsThen(completeContainers)
		_ = c.RegisterFlagCompletionFunc("store", completeDirs)
	},
	"run": func(c *cobra.Command) {
		c.ValidArgsFunction = completeRun
		flagValues(c, "on-empty", onEmptyValues)
		flagValues(c, "until", untilValues)
		flagValues(c, "net", netValues)
		_ = c.RegisterFlagCompletionFunc("cwd", completeDirs)
	},
	"restore": func(c *cobra.Command) {
		c.ValidArgsFunction = completeRestore
		_ = c.RegisterFlagCompletionFunc("store", completeDirs)
		_ = c.RegisterFlagCompletionFunc("as", completeParents)
	},
	"inspect": func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeImageFiles) },
	"images": func(c *cobra.Command) {
		_ = c.RegisterFlagCompletionFunc("store", completeDirs)
	},
	"images ls":      func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeSnapshotPaths) },
	"images prune":   func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeSnapshotPaths) },
	"images inspect": func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeSnapshotIDs) },
	"images rm":      func(c *cobra.Command) { c.ValidArgsFunction = completeSnapshotIDs },
	"images export": func(c *cobra.Command) {
		c.ValidArgsFunction = argsThen(completeSnapshotIDs)
		flagValues(c, "compress", compressions)
	},
	"images verify": func(c *cobra.Command) { c.ValidArgsFunction = noFiles },
	"check":         func(c *cobra.Command) { c.ValidArgsFunction = noFiles },
	"serve":         func(c *cobra.Command) { c.ValidArgsFunction = noFiles },
	"certs tls":     func(c *cobra.Command) { c.ValidArgsFunction = argsThen(completeDirs) },
}

// The values of enum flags, with what each means.
var (
	compressions  = []string{"zstd\tcompressed with zstd (default)", "none\tuncompressed"}
	onEmptyValues = []string{nstree.OnEmptyDelete + "\tthe node goes when its job ends (default)", nstree.OnEmptyKeep + "\tthe node stays, empty, with the exit status",
		nstree.OnEmptyNotify + "\tthe node stays, and its empty event says notify"}
	netValues   = []string{netNone + "\tloopback only (what --net alone means)", network.ModeBridge + "\tan address on cr's bridge"}
	untilValues = []string{nstree.UntilJob + "\tuntil the job exits (default)", nstree.UntilEmpty + "\tuntil its last process exits (daemons)"}
)

// addCompletions attaches the functions of completions to root's commands
// and returns the command paths it found no command for (a test keeps that
// empty).
func addCompletions(root *cobra.Command) (missing []string) {
	for path, f := range completions {
		c, rest, err := root.Find(strings.Fields(path))
		if err != nil || len(rest) > 0 || c == root {
			missing = append(missing, path)
			continue
		}
		f(c)
	}
	return missing
}

type completeFunc = cobra.CompletionFunc

// argsThen completes the n-th positional argument with fs[n]; arguments
// beyond them complete to nothing (not to file names).
func argsThen(fs ...completeFunc) completeFunc {
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) < len(fs) {
			return fs[len(args)](c, args, toComplete)
		}
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
}

func noFiles(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}

func completeDirs(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveFilterDirs
}

func completeImageFiles(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return []cobra.Completion{"cr"}, cobra.ShellCompDirectiveFilterFileExt
}

// flagValues makes a flag complete to a fixed list of values.
func flagValues(c *cobra.Command, flag string, values []string) {
	_ = c.RegisterFlagCompletionFunc(flag, func(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return withPrefix(values, toComplete), cobra.ShellCompDirectiveNoFileComp
	})
}

// withPrefix keeps the candidates ("value" or "value\tdescription") whose
// value starts with prefix.
func withPrefix(cands []string, prefix string) []cobra.Completion {
	var out []cobra.Completion
	for _, c := range cands {
		if v, _, _ := strings.Cut(c, "\t"); strings.HasPrefix(v, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// completeContainers offers the containers the caller can name, as it
// names them (inside /vserver1, /vserver1/pi is /pi; nothing above is
// offered).
func completeContainers(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	e, err := openEnv()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return containerPaths(e.forest, e.viewer, toComplete, false), cobra.ShellCompDirectiveNoFileComp
}

// completeParents offers the containers as parents of a new one: "/lab/",
// without a space after it, so the user types the new name.
func completeParents(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	e, err := openEnv()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return containerPaths(e.forest, e.viewer, toComplete, true), cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}

// containerPaths lists the nodes of f that v can see (not its own root),
// shown as v names them, that start with prefix, in path order; as parents,
// each ends in "/" and the viewer's root itself ("/") comes first.
func containerPaths(f *nstree.Forest, v nstree.Viewer, prefix string, asParents bool) []cobra.Completion {
	var out []cobra.Completion
	if asParents && strings.HasPrefix("/", prefix) {
		out = append(out, "/")
	}
	var paths []string
	for abs := range f.ByPath {
		if !nstree.IsBelow(abs, v.Root) {
			continue
		}
		p, _ := v.Show(abs)
		if asParents {
			p += "/"
		}
		if strings.HasPrefix(p, prefix) {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	return append(out, paths...)
}

// completeFirstThenDefault: a container, then the shell's own completion
// (cr enter PATH -- COMMAND...).
func completeFirstThenDefault(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return completeContainers(c, args, toComplete)
	}
	return nil, cobra.ShellCompDirectiveDefault
}

// completeRun: cr run [PATH] -- COMMAND: a word starting with "/" as the
// first argument is a new container's path, under an existing one.
func completeRun(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 && strings.HasPrefix(toComplete, "/") {
		return completeParents(c, args, toComplete)
	}
	return nil, cobra.ShellCompDirectiveDefault
}

// completeRestore: an image file, or with --store a snapshot id, the path
// of a container with snapshots (its latest), or "latest".
func completeRestore(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	dir, _ := c.Flags().GetString("store")
	if dir == "" {
		return completeImageFiles(c, args, toComplete)
	}
	snaps := storeSnapshots(dir)
	cands := []string{"latest\tthe newest snapshot in the store"}
	cands = append(cands, snapshotPaths(snaps)...)
	cands = append(cands, snapshotIDs(snaps)...)
	return withPrefix(cands, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeSnapshotIDs offers the ids in --store, each described by its
// path and time; ids already on the line are left out (cr images rm ID...).
func completeSnapshotIDs(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	dir, _ := c.Flags().GetString("store")
	var cands []string
	for _, id := range snapshotIDs(storeSnapshots(dir)) {
		if v, _, _ := strings.Cut(id, "\t"); !slices.Contains(args, v) {
			cands = append(cands, id)
		}
	}
	return withPrefix(cands, toComplete), cobra.ShellCompDirectiveNoFileComp
}

// completeSnapshotPaths offers the container paths that have snapshots in
// --store.
func completeSnapshotPaths(c *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	dir, _ := c.Flags().GetString("store")
	return withPrefix(snapshotPaths(storeSnapshots(dir)), toComplete), cobra.ShellCompDirectiveNoFileComp
}

// storeSnapshots lists the store's snapshots, oldest first; nothing when
// there is no store at dir (completion never creates one).
func storeSnapshots(dir string) []*store.Snapshot {
	if dir == "" || store.IsS3(dir) { // no network round trips on a TAB
		return nil
	}
	st, err := store.Open(dir)
	if err != nil {
		return nil
	}
	snaps, err := st.List("")
	if err != nil {
		return nil
	}
	return snaps
}

func snapshotIDs(snaps []*store.Snapshot) []string {
	var out []string
	for _, s := range snaps {
		out = append(out, fmt.Sprintf("%s\t%s %s", s.ID, s.Path, s.Time.Local().Format("2006-01-02 15:04:05")))
	}
	return out
}

func snapshotPaths(snaps []*store.Snapshot) []string {
	n := map[string]int{}
	for _, s := range snaps {
		n[s.Path]++
	}
	var out []string
	for p, k := range n {
		noun := "snapshots"
		if k == 1 {
			noun = "snapshot"
		}
		out = append(out, fmt.Sprintf("%s\t%d %s", p, k, noun))
	}
	slices.Sort(out)
	return out
}

// completeSignals offers signal names as cr kill -s takes them: HUP, TERM,
// USR1, ... each described; in lower case, or with SIG, when typed so.
func completeSignals(_ *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	prefix, rest := "", toComplete
	if len(rest) >= 3 && strings.EqualFold(rest[:3], "SIG") {
		prefix, rest = rest[:3], rest[3:]
	}
	lower := strings.ToLower(prefix+rest) == prefix+rest && strings.ToUpper(prefix+rest) != prefix+rest
	var out []cobra.Completion
	for n := 1; n < 32; n++ {
		sig := unix.Signal(n)
		name := strings.TrimPrefix(unix.SignalName(sig), "SIG")
		if name == "" {
			continue
		}
		if lower {
			name = strings.ToLower(name)
		}
		if strings.HasPrefix(name, rest) {
			out = append(out, prefix+name+"\t"+sig.String())
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completeSet completes cr set's PATH, then the limits' names.
func completeSet(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return completeContainers(c, args, toComplete)
	}
	var out []cobra.Completion
	for _, n := range limits.Names {
		out = append(out, n+"=")
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}
