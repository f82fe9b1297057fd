package cmd

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/images/criuimg"
	"github.com/cr-dev/cr/limits"
	"github.com/cr-dev/cr/rootfs"
	"github.com/cr-dev/cr/scratch"
)

// InspectReport is what cr inspect reports (--json): the image as a whole
// and every container in it.
type InspectReport struct {
	Image       string             `json:"image"`        // the file inspected
	ImageBytes  int64              `json:"image_bytes"`  // its size
	RawBytes    int64              `json:"raw_bytes"`    // its content, uncompressed
	Entries     int                `json:"entries"`      // files and directories in it
	Format      string             `json:"format"`       // "cr-image"
	Version     int                `json:"version"`      // of the format
	Created     time.Time          `json:"created"`      // when the checkpoint was taken
	CRVersion   string             `json:"cr_version"`   // of the cr that wrote it
	CRIUVersion string             `json:"criu_version"` // "4.1.1"
	Kernel      string             `json:"kernel"`       // of the dumping host
	Arch        string             `json:"arch"`         // of the dumping host (GOARCH)
	Root        string             `json:"root"`         // the checkpointed path in the dumping host's tree
	Stats       *InspectStats      `json:"stats,omitempty"`
	Containers  []InspectContainer `json:"containers"` // in tree order, parents first
}

// InspectStats are the whole checkpoint's timings and sizes (the
// manifest's stats, in seconds).
type InspectStats struct {
	FrozenSeconds float64 `json:"frozen_seconds"`
	DumpSeconds   float64 `json:"dump_seconds"`
	WriteSeconds  float64 `json:"write_seconds"`
	RawBytes      int64   `json:"raw_bytes"`
	ImageBytes    int64   `json:"image_bytes"`
	PagesScanned  int64   `json:"pages_scanned"`
	PagesWritten  int64   `json:"pages_written"`
}

// InspectDump is CRIU's statistics of one container's dump, in seconds.
type InspectDump struct {
	FreezingSeconds    float64 `json:"freezing_seconds"`
	FrozenSeconds      float64 `json:"frozen_seconds"`
	MemdumpSeconds     float64 `json:"memdump_seconds"`
	MemwriteSeconds    float64 `json:"memwrite_seconds"`
	PagesScanned       uint64  `json:"pages_scanned"`
	PagesSkippedParent uint64  `json:"pages_skipped_parent"`
	PagesWritten       uint64  `json:"pages_written"`
	PagesLazy          uint64  `json:"pages_lazy"`
}

// inspectStats reports the dump's statistics; imageBytes, the image's
// size, stands in for the manifest's image_bytes, which a version 2 image
// cannot know (its manifest comes first).
func inspectStats(s *images.Stats, imageBytes int64) *InspectStats {
	if s == nil {
		return nil
	}
	image := s.ImageBytes
	if image == 0 {
		image = imageBytes
	}
	return &InspectStats{FrozenSeconds: microSeconds(s.FrozenMicros), DumpSeconds: microSeconds(s.DumpMicros), WriteSeconds: microSeconds(s.WriteMicros),
		RawBytes: s.RawBytes, ImageBytes: image, PagesScanned: s.PagesScanned, PagesWritten: s.PagesWritten}
}

func inspectDump(d *images.DumpStats) *InspectDump {
	if d == nil {
		return nil
	}
	return &InspectDump{FreezingSeconds: microSeconds(int64(d.FreezingTime)), FrozenSeconds: microSeconds(int64(d.FrozenTime)),
		MemdumpSeconds: microSeconds(int64(d.MemdumpTime)), MemwriteSeconds: microSeconds(int64(d.MemwriteTime)),
		PagesScanned: d.PagesScanned, PagesSkippedParent: d.PagesSkippedParent, PagesWritten: d.PagesWritten, PagesLazy: d.PagesLazy}
}

func microSeconds(us int64) float64 { return float64(us) / 1e6 }

// InspectContainer is one container of an image.
type InspectContainer struct {
	Path       string            `json:"path"`          // relative to the image's root: "/", "/a"
	Original   string            `json:"original_path"` // where it was in the dumping host's tree
	Empty      bool              `json:"empty,omitempty"`
	Command    []string          `json:"command,omitempty"`
	Cwd        string            `json:"cwd,omitempty"`
	Env        []string          `json:"env,omitempty"`
	Namespaces []string          `json:"namespaces,omitempty"`
	OnEmpty    string            `json:"on_empty,omitempty"`
	Until      string            `json:"until,omitempty"`
	Limits     map[string]string `json:"limits,omitempty"`
	// Network is "bridge" with Address (with its prefix length) for a
	// container on cr's bridge.
	Network    string           `json:"network,omitempty"`
	Address    string           `json:"address,omitempty"`
	Publish    []string         `json:"publish,omitempty"`
	Created    time.Time        `json:"created"`
	InitPid    int              `json:"init_pid,omitempty"` // host pid at dump time
	Dump       *InspectDump     `json:"dump,omitempty"`     // CRIU's statistics of its dump
	ImageBytes int64            `json:"image_bytes"`        // its CRIU images, uncompressed
	Memory     InspectMemory    `json:"memory"`             // summed over its processes
	Processes  []InspectProcess `json:"processes"`
	Rootfs     *InspectRootfs   `json:"rootfs,omitempty"` // a --rootfs container's file system
}

// InspectRootfs is the file system part of a --rootfs container's image.
type InspectRootfs struct {
	Lower        string          `json:"lower"`         // the lower's digest
	LowerCarried bool            `json:"lower_carried"` // the image holds the lower (--with-rootfs)
	LowerBytes   int64           `json:"lower_bytes,omitempty"`
	UpperFiles   int             `json:"upper_files"`
	UpperBytes   int64           `json:"upper_bytes"`
	Deleted      int             `json:"deleted"`
	Init         string          `json:"init"` // the init's executable, by name
	Changes      []rootfs.Change `json:"changes"`
}

// InspectMemory sums the memory of a container's processes.
type InspectMemory struct {
	MappedBytes int64 `json:"mapped_bytes"`
	DumpedPages int64 `json:"dumped_pages"`
	DumpedBytes int64 `json:"dumped_bytes"`
}

// InspectProcess is a process as its CRIU images describe it, with its
// command line at dump time (its task name when the image does not record
// one).
type InspectProcess struct {
	Command string `json:"command"`
	criuimg.Process
}

func init() {
	register(newInspectCommand)
}

func newInspectCommand(g *Global) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Show what an image holds, without restoring it",
		Long: `Verify the image (every checksum, the manifest, the format version) and
show what it holds: the subtree of containers, with paths relative to the
checkpointed root, and for each container its processes (pid, parent,
command), their memory (size of the mappings, pages in the image), their open
files and sockets, and CRIU's statistics of the dump; for the image, the
format version, when and by which cr and CRIU it was written, the dumping
host's kernel and architecture, and its sizes.

Nothing is restored and no container tree is needed. The image's metadata is
unpacked into a temporary directory under $CR_STAGING (or the system's
temporary directory) and removed afterwards; page contents are checked but
not written.`,
		Example: `  cr inspect lab.cr
  cr inspect --json lab.cr | jq '.containers[].processes[].files'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := interruptible(cmd.Context())
			defer cancel()
			rep, err := inspectImage(ctx, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), rep)
			}
			var b bytes.Buffer
			printInspect(&b, rep)
			return writeTrimmed(cmd.OutOrStdout(), b.Bytes())
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

// inspectImage verifies the image file at image, unpacks its metadata into a
// temporary directory, reads every container's CRIU images, and removes the
// directory.
func inspectImage(ctx context.Context, image string) (*InspectReport, error) {
	f, err := openImage(image)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	base := os.TempDir()
	if d := os.Getenv("CR_STAGING"); d != "" {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create staging dir: %w", err)
		}
		base = d
	}
	tmp, err := scratch.Mkdir(base, "inspect-")
	if err != nil {
		return nil, fmt.Errorf("create temporary dir: %w", err)
	}
	defer tmp.Remove()
	dir := tmp.Path
	keep := func(name string) bool {
		// CRIU's images that describe the processes, and the upper layers.
		return criuimg.Needs(path.Base(name)) || strings.HasPrefix(name, rootfs.FSDir+"/") && path.Base(name) == "upper.tar"
	}
	m, err := images.ExtractSelected(ctx, f, dir, images.Limits{}, keep)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	rep := &InspectReport{
		Image:       image,
		ImageBytes:  fi.Size(),
		Entries:     len(m.Files),
		Format:      m.Format,
		Version:     m.Version,
		Created:     m.Created,
		CRVersion:   m.CRVersion,
		CRIUVersion: criuVersionString(m.CRIUVersion),
		Kernel:      m.Kernel,
		Arch:        m.Arch,
		Root:        m.Root,
		Stats:       inspectStats(m.Stats, fi.Size()),
		Containers:  []InspectContainer{},
	}
	sizes := make(map[string]int64, len(m.Files))
	for _, f := range m.Files {
		sizes[f.Name] = f.Size
		rep.RawBytes += f.Size
	}
	for _, c := range m.Containers {
		ic, err := inspectContainer(dir, m, c, sizes)
		if err != nil {
			return nil, fmt.Errorf("inspect %s: %w", c.Path, err)
		}
		rep.Containers = append(rep.Containers, ic)
	}
	return rep, nil
}

func inspectContainer(dir string, m *images.Manifest, c images.Container, sizes map[string]int64) (InspectContainer, error) {
	ic := InspectContainer{
		Path: c.Path, Original: path.Join(m.Root, c.Path), Empty: c.Empty,
		Command: c.Command, Cwd: c.Cwd, Env: c.Env, Namespaces: c.Namespaces,
		OnEmpty: c.OnEmpty, Until: c.Until, Limits: c.Limits, Created: c.Created, InitPid: c.InitPid,
		Dump: inspectDump(c.Dump), Processes: []InspectProcess{},
	}
	if c.Network != nil {
		ic.Network, ic.Address, ic.Publish = c.Network.Mode, c.Network.Address, c.Network.Publish
	}
	if c.Dir == "" {
		return ic, nil
	}
	if r := c.Rootfs; r != nil {
		ir := &InspectRootfs{Lower: r.Lower, LowerCarried: r.LowerEntry != "", LowerBytes: sizes[r.LowerEntry],
			UpperFiles: r.UpperFiles, UpperBytes: r.UpperBytes, Deleted: r.Deleted, Init: path.Base(r.Init), Changes: []rootfs.Change{}}
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(r.Upper)))
		if err != nil {
			return ic, err
		}
		ch, err := rootfs.ListLayer(bufio.NewReader(f))
		f.Close()
		if err != nil {
			return ic, fmt.Errorf("%s: %w", r.Upper, err)
		}
		ir.Changes = append(ir.Changes, ch...)
		ic.Rootfs = ir
	}
	for name, size := range sizes {
		if strings.HasPrefix(name, c.Dir+"/") {
			ic.ImageBytes += size
		}
	}
	t, err := criuimg.Read(filepath.Join(dir, filepath.FromSlash(c.Dir)), criuimg.Options{FileSize: func(name string) (int64, bool) {
		s, ok := sizes[c.Dir+"/"+name]
		return s, ok
	}})
	if err != nil {
		return ic, err
	}
	commands := make(map[int]string, len(c.Processes))
	for _, p := range c.Processes {
		commands[p.Pid] = p.Command
	}
	for _, p := range t.Processes {
		cmd := commands[p.Pid]
		if cmd == "" {
			cmd = p.Comm
		}
		ic.Processes = append(ic.Processes, InspectProcess{Process: p, Command: cmd})
		ic.Memory.MappedBytes += p.Memory.MappedBytes
		ic.Memory.DumpedPages += p.Memory.DumpedPages
		ic.Memory.DumpedBytes += p.Memory.DumpedBytes
	}
	return ic, nil
}

// quoteFile returns a file's path as cr inspect prints it: quoted with
// Go's escapes when it holds anything but visible characters.
func quoteFile(p string) string {
	if strings.ContainsFunc(p, func(r rune) bool { return !unicode.IsGraphic(r) || unicode.IsSpace(r) }) {
		return strconv.Quote(p)
	}
	return p
}

const timeLayout = "2006-01-02 15:04:05 MST"

// writeTrimmed writes text without the spaces tabwriter leaves at the ends
// of lines whose last cells are empty.
func writeTrimmed(out io.Writer, text []byte) error {
	lines := bytes.SplitAfter(text, []byte("\n"))
	for _, l := range lines {
		nl := bytes.HasSuffix(l, []byte("\n"))
		l = bytes.TrimRight(l, " \n")
		if nl {
			l = append(l, '\n')
		}
		if _, err := out.Write(l); err != nil {
			return err
		}
	}
	return nil
}

// printInspect writes the human form of r to a buffer.
func printInspect(out *bytes.Buffer, r *InspectReport) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Image:\t%s, %s (%s unpacked, %s)\n", r.Image, humanBytes(r.ImageBytes), humanBytes(r.RawBytes), plural(r.Entries, "entry", "entries"))
	fmt.Fprintf(tw, "Format:\t%s version %d\n", r.Format, r.Version)
	fmt.Fprintf(tw, "Created:\t%s by cr %s with CRIU %s\n", r.Created.Local().Format(timeLayout), oneLine(r.CRVersion), r.CRIUVersion)
	fmt.Fprintf(tw, "Host:\tkernel %s, %s\n", oneLine(r.Kernel), oneLine(r.Arch))
	fmt.Fprintf(tw, "Root:\t%s (%s)\n", r.Root, plural(len(r.Containers), "container", "containers"))
	if s := r.Stats; s != nil {
		var parts []string
		if s.FrozenSeconds > 0 {
			parts = append(parts, "frozen "+dur(s.FrozenSeconds))
		}
		if s.DumpSeconds > 0 {
			parts = append(parts, "dump "+dur(s.DumpSeconds))
		}
		if s.WriteSeconds > 0 {
			parts = append(parts, "write "+dur(s.WriteSeconds))
		}
		parts = append(parts, fmt.Sprintf("pages scanned %d, written %d", s.PagesScanned, s.PagesWritten))
		if s.RawBytes > 0 && s.ImageBytes > 0 {
			parts = append(parts, fmt.Sprintf("%s raw, %s image", humanBytes(s.RawBytes), humanBytes(s.ImageBytes)))
		}
		fmt.Fprintf(tw, "Dump:\t%s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "CONTAINER\tPROCESSES\tMAPPED\tDUMPED\tCOMMAND")
	for _, c := range r.Containers {
		if c.Empty {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t(empty)\n", c.Path)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", c.Path, len(c.Processes),
			humanBytes(c.Memory.MappedBytes), humanBytes(c.Memory.DumpedBytes), oneLine(strings.Join(c.Command, " ")))
	}
	tw.Flush() // a bytes.Buffer does not fail
	for _, c := range r.Containers {
		if !c.Empty {
			printContainer(out, c)
		}
	}
}

func printContainer(out *bytes.Buffer, c InspectContainer) {
	fmt.Fprintf(out, "\n%s (was %s)\n", c.Path, c.Original)
	fmt.Fprintf(out, "  created %s", c.Created.Local().Format(timeLayout))
	if len(c.Namespaces) > 0 {
		fmt.Fprintf(out, ", namespaces %s", strings.Join(c.Namespaces, " "))
	}
	if c.Until == "empty" {
		fmt.Fprintf(out, ", until empty")
	}
	fmt.Fprintf(out, ", CRIU images %s\n", humanBytes(c.ImageBytes))
	if c.Address != "" {
		fmt.Fprintf(out, "  network: %s, address %s", oneLine(c.Network), oneLine(c.Address))
		if len(c.Publish) > 0 {
			fmt.Fprintf(out, ", publish %s", oneLine(strings.Join(c.Publish, " ")))
		}
		fmt.Fprintln(out)
	}
	if len(c.Limits) > 0 {
		lim, err := limits.FromMap(c.Limits)
		s := lim.String()
		if err != nil {
			s = fmt.Sprintf("invalid (%v)", err)
		}
		fmt.Fprintf(out, "  limits: %s\n", oneLine(s))
	}
	if r := c.Rootfs; r != nil {
		lower := "found by digest at restore"
		if r.LowerCarried {
			lower = "in the image, " + humanBytes(r.LowerBytes)
		}
		fmt.Fprintf(out, "  rootfs: lower %s (%s); upper %d files, %s, %d deleted; init %s\n",
			r.Lower, lower, r.UpperFiles, humanBytes(r.UpperBytes), r.Deleted, r.Init)
		const most = 20
		for i, ch := range r.Changes {
			if i == most {
				fmt.Fprintf(out, "    ... and %d more\n", len(r.Changes)-most)
				break
			}
			switch ch.Kind {
			case "file":
				fmt.Fprintf(out, "    %s %s\n", quoteFile(ch.Path), humanBytes(ch.Size))
			case "deleted":
				fmt.Fprintf(out, "    %s deleted\n", quoteFile(ch.Path))
			default:
				fmt.Fprintf(out, "    %s %s\n", quoteFile(ch.Path), ch.Kind)
			}
		}
	}
	if d := c.Dump; d != nil {
		fmt.Fprintf(out, "  dump: frozen %s (freezing %s, memdump %s, memwrite %s), pages scanned %d, written %d",
			dur(d.FrozenSeconds), dur(d.FreezingSeconds), dur(d.MemdumpSeconds), dur(d.MemwriteSeconds),
			d.PagesScanned, d.PagesWritten)
		if d.PagesLazy > 0 {
			fmt.Fprintf(out, ", lazy %d", d.PagesLazy)
		}
		if d.PagesSkippedParent > 0 {
			fmt.Fprintf(out, ", in parent %d", d.PagesSkippedParent)
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PID\tPPID\tTHREADS\tSTATE\tMAPPED\tDUMPED\tCOMMAND")
	for _, p := range c.Processes {
		fmt.Fprintf(tw, "  %d\t%d\t%d\t%s\t%s\t%s\t%s\n", p.Pid, p.PPid, p.Threads, p.State,
			humanBytes(p.Memory.MappedBytes), humanBytes(p.Memory.DumpedBytes), oneLine(p.Command))
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PID\tFD\tKIND\tMODE\tPATH / PEER")
	for _, p := range c.Processes {
		if p.Cwd != "" {
			fmt.Fprintf(tw, "  %d\tcwd\tdir\t\t%s\n", p.Pid, oneLine(p.Cwd))
		}
		for _, f := range p.Files {
			fmt.Fprintf(tw, "  %d\t%d\t%s\t%s\t%s\n", p.Pid, f.Fd, f.Kind, f.Access, oneLine(fileTarget(f)))
		}
	}
	tw.Flush()
}

// fileTarget is what a descriptor refers to, in one column: a path, or a
// socket's addresses.
func fileTarget(f criuimg.File) string {
	s := f.Socket
	if s == nil {
		return f.Path
	}
	var b strings.Builder
	switch s.Family {
	case "unix":
		fmt.Fprintf(&b, "unix %s", s.Type)
		local := s.Local
		if local == "" {
			local = fmt.Sprintf("socket:[%d]", s.Inode)
		}
		fmt.Fprintf(&b, " %s", local)
	case "inet", "inet6":
		proto := s.Protocol
		if s.Family == "inet6" {
			proto += "6"
		}
		fmt.Fprintf(&b, "%s %s", proto, s.Local)
	default:
		b.WriteString(s.Family)
		if s.Type != "" {
			fmt.Fprintf(&b, " %s", s.Type)
		}
		if s.Protocol != "" {
			fmt.Fprintf(&b, " protocol %s", s.Protocol)
		}
	}
	if s.Peer != "" {
		fmt.Fprintf(&b, " -> %s", s.Peer)
	}
	if s.State != "" {
		fmt.Fprintf(&b, " (%s)", s.State)
	}
	return b.String()
}
