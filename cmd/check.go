package cmd

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/freeze"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/probe"
)

// CheckItem is one line of cr check.
type CheckItem struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Required bool   `json:"required"` // without it cr cannot checkpoint at all
	Value    string `json:"value"`
	Hint     string `json:"hint,omitempty"`
}

// CheckReport is what cr check reports (--json).
type CheckReport struct {
	Ready       bool        `json:"ready"`
	Verdict     string      `json:"verdict"`
	CRIUPath    string      `json:"criu_path,omitempty"`
	CRIUVersion string      `json:"criu_version,omitempty"` // "4.2.1"
	Items       []CheckItem `json:"items"`
}

func init() { register(newCheckCommand) }

// CheckOptions are the flags of cr check.
type CheckOptions struct {
	JSON    bool
	NoProbe bool
}

func newCheckCommand(g *Global) *cobra.Command {
	var o CheckOptions
	c := &cobra.Command{
		Use:   "check",
		Short: "Check that this host can run, checkpoint and migrate containers",
		Long: `Report the CRIU binary and version, CRIU's own "criu check" verdict, the
kernel features that matter (userfaultfd for lazy migration, soft-dirty
tracking for pre-copy, pidfd store), how CRIU will lock the network of --net
containers, the cgroup layout and where the freezer is, and the
capabilities of this process, each with a hint when it is missing.

Then it finds out which kinds of job this host can checkpoint by doing it:
tiny scratch jobs (a plain process; a TCP listener and a UDP socket in a
--net container; a --mount container) are started in a private tree of
their own, checkpointed, restored, and asked whether their pid and sockets
survived. This takes about a second; --no-probe skips it. Nothing of the
probes shows in your tree or stays behind.

A one-line verdict ends the report. Exits 6 when something required is
missing (CRIU, root, cgroups, or checkpointing a plain process).`,
		Example: `  cr check
  cr check --json | jq .ready`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCheck(cmd.Context(), cmd.OutOrStdout(), g, o)
		},
	}
	c.Flags().BoolVar(&o.JSON, "json", false, "print JSON")
	c.Flags().BoolVar(&o.NoProbe, "no-probe", false, "do not checkpoint and restore the scratch jobs")
	return c
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func runCheck(ctx context.Context, out io.Writer, g *Global, o CheckOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var items []CheckItem
	add := func(it CheckItem) { items = append(items, it) }
	root := os.Geteuid() == 0
	add(CheckItem{Name: "root", OK: root, Required: true, Value: yesNo(root), Hint: "run cr as root"})

	criuOK := false
	var criuVer criubin.Version
	_ = criubin.PrepareCache()
	var criuVersion string
	path, err := criubin.Find(g.CRIU)
	if err != nil {
		add(CheckItem{Name: "criu", Required: true, Value: "not found", Hint: "run scripts/provision.sh (builds CRIU 4.2.1) or pass --criu"})
	} else if v, err := criubin.GetVersion(path); err != nil {
		add(CheckItem{Name: "criu", Required: true, Value: path + ": " + err.Error(), Hint: "reinstall CRIU with scripts/provision.sh"})
	} else {
		criuVer = v
		ok := v.Code() >= criubin.MinVersion
		criuVersion = v.String()
		add(CheckItem{Name: "criu", OK: ok, Required: true, Value: fmt.Sprintf("%s (%s)", path, v), Hint: "CRIU 4.1 or newer is needed (4.2 to dump inet sockets on kernels since 6.16): run scripts/provision.sh"})
		if ok && root {
			if err := criubin.Check(ctx, path); err != nil {
				add(CheckItem{Name: "criu check", Required: true, Value: err.Error(), Hint: "CRIU does not work on this kernel; run scripts/provision.sh to build 4.2.1"})
			} else {
				criuOK = true
				add(CheckItem{Name: "criu check", OK: true, Required: true, Value: "looks good"})
			}
		}
	}
	h, err := freeze.Detect()
	cgroupsOK := err == nil
	if err != nil {
		add(CheckItem{Name: "cgroups", Required: true, Value: err.Error(), Hint: "mount cgroup2 (or the v1 freezer) under /sys/fs/cgroup"})
	} else {
		layout := "v1"
		switch {
		case h.Version == 2 && h.Hybrid:
			layout = "hybrid"
		case h.Version == 2:
			layout = "v2"
		}
		where := fmt.Sprintf("%s; containers and freezer in cgroup v%d at %s", layout, h.Version, h.Mount)
		if h.V1Freezer != "" && h.Version == 2 {
			where += fmt.Sprintf(" (v1 freezer also at %s)", h.V1Freezer)
		}
		add(CheckItem{Name: "cgroups", OK: true, Required: true, Value: where})
	}
	if criuOK {
		f, err := criubin.ProbeFeatures(ctx, path)
		if err != nil {
			add(CheckItem{Name: "kernel features", Value: err.Error()})
		} else {
			add(CheckItem{Name: "userfaultfd", OK: f.UserFaultFD, Value: yesNo(f.UserFaultFD), Hint: "no lazy (post-copy) migration: the kernel lacks userfaultfd"})
			add(CheckItem{Name: "uffd-noncoop", OK: f.UffdNoncoop, Value: yesNo(f.UffdNoncoop), Hint: "lazy migration only for jobs that do not fork or remap while pages arrive"})
			add(CheckItem{Name: "soft-dirty tracking", OK: f.MemDirtyTrack, Value: yesNo(f.MemDirtyTrack), Hint: "no iterative pre-copy migration: the kernel has no soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY); stop-and-copy and --lazy still work"})
			add(CheckItem{Name: "pidfd store", OK: f.PidfdStore, Value: yesNo(f.PidfdStore), Hint: "pid reuse between pre-dumps cannot be detected"})
		}
		add(netLockItem(ctx, path))
	}
	caps, err := criubin.Capabilities()
	if err == nil {
		var have, miss []string
		for _, c := range []string{"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_CHECKPOINT_RESTORE", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"} {
			if caps[c] {
				have = append(have, c)
			} else {
				miss = append(miss, c)
			}
		}
		v := "all needed"
		if len(miss) > 0 {
			v = "missing " + strings.Join(miss, ", ")
		}
		add(CheckItem{Name: "capabilities", OK: len(miss) == 0, Value: v, Hint: "without CAP_SYS_RESOURCE CRIU cannot grow pipes (lazy migration needs fs.pipe-max-size >= 16 MiB) nor dump jobs that changed their uid"})
		if !caps["CAP_SYS_RESOURCE"] {
			if n, err := criubin.PipeMaxSize(); err == nil {
				ok := n >= 16<<20
				add(CheckItem{Name: "pipe-max-size", OK: ok, Value: humanBytes(int64(n)), Hint: "echo 16777216 > /proc/sys/fs/pipe-max-size (lazy migration needs it without CAP_SYS_RESOURCE)"})
			}
		}
	}
	for _, it := range networkItems() {
		add(it)
	}
	if criuOK && cgroupsOK && !o.NoProbe {
		items = append(items, probeItems(ctx, g, path, criuVer, h)...)
	}
	rep := CheckReport{Ready: true, Items: items, CRIUVersion: criuVersion}
	if criuVersion != "" {
		rep.CRIUPath = path
	}
	var missing []string
	for _, it := range items {
		if it.Required && !it.OK {
			rep.Ready = false
			missing = append(missing, it.Name)
		}
	}
	if rep.Ready {
		rep.Verdict = "ready: run, checkpoint, restore and migrate work here"
		for _, it := range items {
			if !it.OK {
				rep.Verdict += "; " + it.Name + " missing"
			}
		}
	} else {
		rep.Verdict = "not ready: " + strings.Join(missing, ", ") + " missing"
	}
	if o.JSON {
		if err := writeJSON(out, rep); err != nil {
			return err
		}
	} else {
		printCheck(out, rep)
	}
	if !rep.Ready {
		return exitStatus(ExitEnv)
	}
	return nil
}

// printCheck writes the table of cr check and its verdict.
func printCheck(out io.Writer, rep CheckReport) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, it := range rep.Items {
		mark := "ok"
		if !it.OK {
			mark = "--"
			if it.Required {
				mark = "FAIL"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, it.Name, it.Value)
		if !it.OK && it.Hint != "" {
			fmt.Fprintf(tw, "\t\thint: %s\n", it.Hint)
		}
	}
	tw.Flush()
	fmt.Fprintln(out, rep.Verdict)
}

// networkItems say what cr run --net=bridge needs here and what is
// missing: the bridge (CR_BRIDGE, CR_SUBNET), forwarding, nftables. None
// is required: without them only bridge networking is out.
func networkItems() []CheckItem {
	var items []CheckItem
	nc, err := network.FromEnv("")
	if err != nil {
		return []CheckItem{{Name: "bridge", Value: err.Error(), Hint: "fix CR_BRIDGE or CR_SUBNET"}}
	}
	want := netip.PrefixFrom(nc.Gateway(), nc.Subnet.Bits())
	br := CheckItem{Name: "bridge", OK: true}
	switch exists, _, err := nc.BridgeState(); {
	case err != nil:
		br.OK, br.Value = false, err.Error()
		br.Hint = "set CR_BRIDGE to another name"
	case !exists:
		br.Value = fmt.Sprintf("%s with %s: created by the first cr run --net=bridge", nc.Bridge, want)
	default:
		br.Value = fmt.Sprintf("%s with %s", nc.Bridge, want)
		if err := nc.Check(nc.Subnet); err != nil {
			br.OK, br.Value = false, err.Error()
			br.Hint = "set CR_SUBNET to the bridge's subnet, or CR_BRIDGE to another name"
		}
	}
	items = append(items, br)
	fwd, err := network.IPForward()
	it := CheckItem{Name: "ip forwarding", OK: fwd, Value: yesNo(fwd),
		Hint: "bridge containers reach only this host: cr run --nat turns it on for outbound NAT, and a fleet that routes to containers on other hosts needs it (sysctl net.ipv4.ip_forward=1)"}
	if err != nil {
		it.Value = err.Error()
	}
	items = append(items, it)
	it = CheckItem{Name: "nftables", OK: true, Value: "yes (for cr run --nat)"}
	if err := network.NftablesWorks(); err != nil {
		it = CheckItem{Name: "nftables", Value: err.Error(), Hint: "no outbound NAT (cr run --nat): the kernel's nf_tables is missing"}
	} else if on, _ := nc.HasNAT(); on {
		it.Value = fmt.Sprintf("yes; outbound NAT of %s on (table ip %s)", nc.Subnet, nc.Table())
	}
	return append(items, it)
}

// netLockItem says how CRIU will lock the network of --net containers
// while they are dumped and restored, and whether that can work.
func netLockItem(ctx context.Context, criu string) CheckItem {
	l, needsTool := criubin.ChooseNetLock(ctx, criu)
	it := CheckItem{Name: "network lock", OK: !needsTool, Value: string(l)}
	if needsTool {
		it.Value += " (iptables-restore is not installed)"
		it.Hint = "--net containers cannot be checkpointed: CRIU has no nftables lock here and needs iptables-restore (apt-get install iptables)"
	}
	return it
}

// probeItems checkpoints and restores the probe's scratch jobs and says,
// for each kind, whether it worked here.
func probeItems(ctx context.Context, g *Global, criu string, v criubin.Version, h freeze.Hierarchy) []CheckItem {
	exe, err := os.Executable()
	if err != nil {
		return []CheckItem{{Name: "checkpoint probes", Value: err.Error()}}
	}
	t, err := nstree.Open()
	if err != nil {
		return []CheckItem{{Name: "checkpoint probes", Value: err.Error()}}
	}
	res, err := probe.Run(ctx, probe.Options{CRIU: criu, CRIUVersion: v.Code(), CRVersion: Version, Exe: exe,
		BinDir: t.BinDir, Hier: h, Scratch: filepath.Join(stagingDir(t), "probe")}, probe.Kinds)
	var items []CheckItem
	for _, r := range res {
		it := CheckItem{Name: r.Kind.Name, OK: r.OK, Required: r.Kind.Required, Value: "works: " + r.Kind.What}
		if !r.OK {
			it.Value = "fails: " + r.Detail
			it.Hint = "such jobs (" + r.Kind.What + ") cannot be checkpointed here"
		}
		items = append(items, it)
	}
	if err != nil {
		items = append(items, CheckItem{Name: "checkpoint probes", Value: err.Error()})
	}
	return items
}
