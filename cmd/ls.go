package cmd

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/limits"
	"github.com/cr-dev/cr/nstree"
)

// LsOptions are the flags of cr ls.
type LsOptions struct {
	Recursive bool
	JSON      bool
}

// Entry is one container as cr ls shows it.
type Entry struct {
	Path        string    `json:"path"`
	Name        string    `json:"name"`
	ID          string    `json:"id"`
	State       string    `json:"state"`
	Processes   int       `json:"processes"`
	MemoryBytes int64     `json:"memory_bytes"`
	CPUSeconds  float64   `json:"cpu_seconds"`
	Created     time.Time `json:"created"`
	AgeSeconds  float64   `json:"age_seconds"`
	Command     []string  `json:"command,omitempty"`
	OnEmpty     string    `json:"on_empty"`
	Until       string    `json:"until"` // "job" or "empty"
	// Network is "host" (the host's own), "none" (loopback only) or
	// "bridge"; Address is the bridge address.
	Network string `json:"network"`
	Address string `json:"address,omitempty"`
	// Publish are its published ports (cr run --publish), HOSTPORT:PORT/PROTO.
	Publish  []string `json:"publish,omitempty"`
	ExitCode *int     `json:"exit_code,omitempty"`
	Children int      `json:"children"`
	// Limits are the node's own resource limits by name (cr set); its
	// ancestors' apply too.
	Limits map[string]string `json:"limits,omitempty"`
}

func init() { register(newLsCommand) }

func newLsCommand(g *Global) *cobra.Command {
	var o LsOptions
	c := &cobra.Command{
		Use:   "ls [PATH]",
		Short: "List containers with their live state",
		Long: `List the containers under PATH (default: your root) with their state
(running, frozen, empty), process count, memory in use, CPU time, age and
command. Given a container, ls shows it and its children; -r shows the whole
subtree. Paths are shown as you see them: inside /vserver1, /vserver1 is "/".`,
		Example: `  cr ls
  cr ls -r /lab
  cr ls --json | jq -r '.[].path'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := ""
			if len(args) == 1 {
				p = args[0]
			}
			return runLs(cmd.OutOrStdout(), o, p)
		},
	}
	c.Flags().BoolVarP(&o.Recursive, "recursive", "r", false, "list the whole subtree")
	c.Flags().BoolVar(&o.JSON, "json", false, "print JSON")
	return c
}

func runLs(out io.Writer, o LsOptions, p string) error {
	e, err := openEnv()
	if err != nil {
		return err
	}
	nodes, err := e.listNodes(p, o.Recursive)
	if err != nil {
		return err
	}
	entries := make([]Entry, 0, len(nodes))
	now := time.Now()
	for _, n := range nodes {
		u := nstree.UsageOf(mustProcs(n))
		entries = append(entries, Entry{
			Path: e.show(n.Path), Name: n.Name, ID: n.ID, State: n.State(),
			Processes: u.Processes, MemoryBytes: u.RSSBytes, CPUSeconds: u.CPU.Seconds(),
			Created: n.Created, AgeSeconds: now.Sub(n.Created).Seconds(),
			Command: n.Command, OnEmpty: n.OnEmpty, Until: untilOf(n.Until), ExitCode: n.ExitCode, Children: len(n.Children),
			Limits: n.NodeLimits().Map(), Network: networkOf(n), Address: n.Network.Addr(), Publish: publishOf(n),
		})
	}
	if o.JSON {
		return writeJSON(out, entries)
	}
	return printEntries(out, entries)
}

// listNodes is what cr ls and cr stats show for the path p the viewer
// gave ("" for its root): the node and its children, or with recursive
// its whole subtree; the root's children (or subtrees).
func (e *env) listNodes(p string, recursive bool) ([]*nstree.Node, error) {
	abs, err := e.viewer.Resolve(p)
	if err != nil {
		return nil, usageError{err}
	}
	var nodes []*nstree.Node
	add := func(n *nstree.Node) {
		if recursive {
			n.Walk(func(m *nstree.Node) { nodes = append(nodes, m) })
		} else {
			nodes = append(nodes, n)
		}
	}
	if abs != e.viewer.Root {
		n, err := e.forest.Lookup(abs)
		if err != nil {
			return nil, fmt.Errorf("%w: %s", nstree.ErrNotFound, p)
		}
		nodes = append(nodes, n)
		for _, c := range n.Children {
			add(c)
		}
	} else {
		for _, c := range e.forest.ChildrenOf(abs) {
			add(c)
		}
	}
	return nodes, nil
}

// printEntries prints cr ls's table.
func printEntries(out io.Writer, entries []Entry) error {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSTATE\tPROCS\tMEM\tCPU\tAGE\tLIMITS\tADDRESS\tCOMMAND")
	for _, en := range entries {
		cmd := oneLine(strings.Join(en.Command, " "))
		if en.ExitCode != nil {
			cmd += fmt.Sprintf(" (exited %d)", *en.ExitCode)
		}
		lim, _ := limits.FromMap(en.Limits)
		addr := en.Address
		if addr == "" {
			addr = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", nstree.Quote(en.Path), en.State, en.Processes, humanBytes(en.MemoryBytes),
			time.Duration(en.CPUSeconds*float64(time.Second)).Round(10*time.Millisecond), humanAge(en.AgeSeconds), strings.ReplaceAll(lim.String(), " ", ","), addr, cmd)
	}
	tw.Flush() // a bytes.Buffer does not fail
	return writeTrimmed(out, b.Bytes())
}

func publishOf(n *nstree.Node) []string {
	if n.Network == nil {
		return nil
	}
	return n.Network.Publish
}

// networkOf names a container's network: "host", "none" or "bridge".
func networkOf(n *nstree.Node) string {
	switch {
	case n.Network != nil:
		return n.Network.Mode
	case slices.Contains(n.Namespaces, "net"):
		return "none"
	}
	return "host"
}

// untilOf names a container's mode; configs written before there were
// modes have none.
func untilOf(u string) string {
	if u == "" {
		return nstree.UntilJob
	}
	return u
}

func mustProcs(n *nstree.Node) []int {
	p, _ := nstree.Procs(n.Leaf())
	return p
}

// plural is "1 container", "2 containers".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func humanBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func humanAge(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
