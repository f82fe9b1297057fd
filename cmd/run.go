package cmd

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/limits"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
)

// limitFlag is one limit's flag: its text, checked when given.
type limitFlag struct {
	m    map[string]string
	name string
}

func (f limitFlag) String() string { return f.m[f.name] }
func (f limitFlag) Type() string {
	switch f.name {
	case limits.NameMemory, limits.NameMemoryHigh:
		return "size"
	}
	return "n"
}
func (f limitFlag) Set(v string) error {
	var l limits.Limits
	if err := l.Set(f.name, v); err != nil {
		return err
	}
	f.m[f.name] = v
	return nil
}

// netFlag is --net[=MODE]: "" (not given: the host's network), "none"
// (given alone: a namespace with loopback only) or "bridge".
type netFlag struct{ mode *string }

func (f netFlag) String() string { return *f.mode }
func (f netFlag) Type() string   { return "mode" }
func (f netFlag) Set(v string) error {
	switch v {
	case netNone, network.ModeBridge:
		*f.mode = v
		return nil
	case "true": // --net=true, as the flag was a boolean
		*f.mode = netNone
		return nil
	}
	return fmt.Errorf("want none (loopback only) or bridge")
}

const netNone = "none"

// RunOptions are the flags of cr run.
type RunOptions struct {
	Cwd         string
	Env         []string
	Mount       bool
	Net         string // "", netNone or network.ModeBridge
	IP          string
	NAT         bool
	Publish     []string
	OnEmpty     string
	OnEmptyExec string
	Until       string
	Limits      map[string]string // limit name to text, from --memory, --cpus, ...
	Rootfs      string            // the lower of the container's own root
}

func init() { register(newRunCommand) }

func newRunCommand(g *Global) *cobra.Command {
	var o RunOptions
	c := &cobra.Command{
		Use:   "run [PATH] [--] CMD [ARGS...]",
		Short: "Start a job in a new container",
		Long: `Start CMD detached in a new container at PATH and print the container's path.

Without PATH the container gets a generated name (/unnamed1, /unnamed2, ...).
Missing intermediate nodes are created (cr run /lab/pi -- ... creates /lab).
The container has its own pid, ipc and uts namespaces (mount and network with
--mount and --net), its own cgroup, and cr's init as pid 1, which captures the
job's output into the container's log (cr logs).

Without --net the job shares the host's network. --net (or --net=none) gives
it a network namespace with loopback only. --net=bridge puts it on cr's
bridge: an address of its own from the bridge's subnet (--ip ADDR, or the
next free one), a veth pair to the bridge, a default route through it; the
host and its other containers reach it there, and it keeps the address
across checkpoint, restore and migration. The bridge is CR_BRIDGE (default
cr0) with the first address of CR_SUBNET (default 10.88.0.0/16), created
when missing. --nat adds outbound NAT for the subnet (an nftables
masquerade rule in the table ip cr_BRIDGE) and turns IPv4 forwarding on.
--publish HOSTPORT:PORT sends what reaches HOSTPORT on any of the host's own
addresses to PORT of the container (DNAT rules in the same table); a
restore publishes the same ports on its host.

With --rootfs DIR the container has its own root: an overlay whose
read-only lower is DIR (any number of containers can share it) and whose
upper, the container's own changes, is kept by cr with the container, a
fresh /proc, a minimal /dev (null, zero, full, random, urandom, tty, pts,
shm), a private /tmp, and nothing of the host's mounts. CMD and --cwd
(default /) are then paths inside DIR. DIR can be an unpacked OCI image,
the output of debootstrap --variant=minbase, or a static busybox tree.

--memory, --memory-high, --cpus, --cpu-weight, --pids and --blkio-weight
limit the container's whole subtree (see cr set); they cannot exceed an
ancestor's. The job runs with the caller's working directory and
environment unless --cwd/--env say otherwise. PATH is distinguished from
CMD by a leading "/" or by the "--" after it.

The container lives until its job exits (--until job, the default): then
whatever the job left behind is killed, so a job that daemonizes (forks and
exits) takes its daemon with it. With --until empty it lives until the last
process in it is gone, so a daemon keeps it, and is checkpointed, with all
its processes; the exit status it keeps is the job's. --on-empty then says
what happens to the node: delete (it goes), keep (it stays, empty, with its
exit status) or notify (it stays, and its "empty" event in cr events says
notify). Whatever the policy, --on-empty-exec CMD runs once when the
container becomes empty: "/bin/sh -c CMD cr-on-empty-exec PATH STATUS", so
$1 is the container's host path and $2 the job's exit status (also in
CR_PATH, CR_EXIT_STATUS, CR_ID, CR_ON_EMPTY), from the container's init
after it left the container's cgroups (so the node is empty meanwhile,
and can be removed), with its output appended to on-empty-exec.log in
cr's state directory ($CR_STATE_DIR, default /run/cr). The init waits up
to 60 s for it, then kills it. In a --mount container it runs in the
container's mount namespace and cgroup.`,
		Example: `  cr run /lab/pi -- python3 -c 'import time; time.sleep(1e6)'
  cr run -- sleep 1000                     # gets /unnamed1
  cr run --on-empty keep /batch/job1 -- make test
  cr run --until empty --net /db/redis -- redis-server --daemonize yes
  cr run --net=bridge --ip 10.88.0.10 /web -- python3 -m http.server 80
  cr run --env HOME=/tmp --cwd /tmp /x -- env
  cr run --memory 512M --cpus 1.5 --pids 200 /lab/build -- make
  cr run --on-empty notify --on-empty-exec 'logger "$1 exited $2"' /batch/job2 -- make test
  cr run --rootfs /srv/rootfs/bookworm /vm1 -- /bin/sh -c 'sleep 1000'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, given, command := splitRunArgs(args, cmd.ArgsLenAtDash())
			if given && path == "" {
				return usageError{errors.New(`empty path "": give the new container a name, or leave PATH out for a generated one`)}
			}
			return runRun(cmd.OutOrStdout(), o, path, command)
		},
	}
	c.Flags().SetInterspersed(false)
	c.Flags().StringVar(&o.Cwd, "cwd", "", "working directory of the job (default: the current one)")
	c.Flags().StringArrayVar(&o.Env, "env", nil, "environment of the job, KEY=VALUE, repeatable (default: the current one)")
	c.Flags().BoolVar(&o.Mount, "mount", false, "give the container its own mount namespace and /proc")
	c.Flags().StringVar(&o.Rootfs, "rootfs", "", "run on an overlay of the directory `DIR` as the container's own root (implies --mount)")
	nf := c.Flags().VarPF(netFlag{&o.Net}, "net", "", "give the container its own network namespace: none (loopback only, what --net alone means) or bridge (an address on cr's bridge; --net=bridge)")
	nf.NoOptDefVal = netNone
	c.Flags().StringVar(&o.IP, "ip", "", "the container's address on the bridge (with --net=bridge; default: the next free one)")
	c.Flags().StringArrayVar(&o.Publish, "publish", nil, "publish a port: HOSTPORT:PORT[/udp], traffic to HOSTPORT on the host's addresses goes to PORT of the container (with --net=bridge; repeatable)")
	c.Flags().BoolVar(&o.NAT, "nat", false, "masquerade the bridge subnet's outbound traffic (with --net=bridge; turns on IPv4 forwarding)")
	c.Flags().StringVar(&o.OnEmpty, "on-empty", nstree.OnEmptyDelete, "what happens when the container is empty: delete (the node goes), keep or notify (it stays)")
	c.Flags().StringVar(&o.OnEmptyExec, "on-empty-exec", "", "shell command to run once when the container is empty ($1: its path, $2: the exit status)")
	c.Flags().StringVar(&o.Until, "until", nstree.UntilJob, "how long the container lives: job (until the job exits) or empty (until its last process exits)")
	o.Limits = map[string]string{}
	for _, f := range []struct{ name, usage string }{
		{limits.NameMemory, "memory limit of the container's subtree, such as 512M (bytes, or k, m, g, t)"},
		{limits.NameMemoryHigh, "memory throttling threshold, such as 400M (cgroup v2 only)"},
		{limits.NameCPUs, "CPU time limit in CPUs, such as 1.5"},
		{limits.NameCPUWeight, "CPU weight relative to siblings, 1 to 10000 (default 100)"},
		{limits.NamePids, "maximum number of processes and threads"},
		{limits.NameBlkioWeight, "block I/O weight relative to siblings, 10 to 1000 (default 100)"},
	} {
		c.Flags().Var(limitFlag{o.Limits, f.name}, f.name, f.usage)
	}
	return c
}

// splitRunArgs separates [PATH] from CMD: with "--", everything before it
// is the path; without, a first argument starting with "/" is the path
// (so "cr run /x" is a path without a command).
// Flag parsing stops at the first argument, so a "--" after PATH arrives
// as an argument rather than through ArgsLenAtDash. given tells an empty
// PATH ("") from none.
func splitRunArgs(args []string, dash int) (path string, given bool, cmd []string) {
	if dash < 0 {
		for i, a := range args {
			if a == "--" {
				dash = i
				args = append(args[:i:i], args[i+1:]...)
				break
			}
		}
	}
	switch {
	case dash == 1:
		return args[0], true, args[1:]
	case dash == 0:
		return "", false, args
	case dash < 0 && len(args) > 0 && strings.HasPrefix(args[0], "/"):
		return args[0], true, args[1:]
	}
	return "", false, args
}

func runRun(out io.Writer, o RunOptions, path string, command []string) error {
	if len(command) == 0 {
		p := path
		if p == "" {
			p = "[PATH]"
		}
		return usageError{fmt.Errorf("missing command: cr run %s -- CMD [ARGS...]", p)}
	}
	if !nstree.ValidOnEmpty(o.OnEmpty) {
		return usageError{fmt.Errorf("invalid --on-empty %q: want delete, keep or notify", o.OnEmpty)}
	}
	if o.Until != nstree.UntilJob && o.Until != nstree.UntilEmpty {
		return usageError{fmt.Errorf("invalid --until %q: want job or empty", o.Until)}
	}
	for _, kv := range o.Env {
		if !strings.Contains(kv, "=") {
			return usageError{fmt.Errorf("invalid --env %q: want KEY=VALUE", kv)}
		}
	}
	lim, err := limits.FromMap(o.Limits)
	if err != nil {
		return usageError{err}
	}
	var ip netip.Addr
	if o.Net != network.ModeBridge && (o.IP != "" || o.NAT || len(o.Publish) > 0) {
		return usageError{errors.New("--ip, --nat and --publish need --net=bridge")}
	}
	var ports []network.Port
	for _, s := range o.Publish {
		p, err := network.ParsePort(s)
		if err != nil {
			return usageError{err}
		}
		ports = append(ports, p)
	}
	if o.IP != "" {
		if ip, err = netip.ParseAddr(o.IP); err != nil || !ip.Is4() {
			return usageError{fmt.Errorf("invalid --ip %q: want an IPv4 address", o.IP)}
		}
	}
	e, err := openEnv()
	if err != nil {
		return err
	}
	ro := nstree.RunOptions{Command: command, Cwd: o.Cwd, Env: o.Env, Mount: o.Mount, Net: o.Net != "", OnEmpty: o.OnEmpty, OnEmptyExec: o.OnEmptyExec, Until: o.Until, Under: e.viewer.Root, Limits: lim}
	if o.Rootfs != "" {
		if ro.Rootfs, err = filepath.Abs(o.Rootfs); err != nil {
			return usageError{err}
		}
		if st, err := os.Stat(ro.Rootfs); err != nil || !st.IsDir() {
			return usageError{fmt.Errorf("--rootfs %s: not a directory", o.Rootfs)}
		}
		if ro.Cwd == "" {
			ro.Cwd = "/"
		}
		if !strings.HasPrefix(ro.Cwd, "/") {
			return usageError{fmt.Errorf("--cwd %s: with --rootfs, an absolute path inside the root", ro.Cwd)}
		}
	}
	if o.Net == network.ModeBridge {
		nc, err := network.FromEnv(e.tree.StateDir)
		if err != nil {
			return usageError{err}
		}
		if why := nc.Usable(ip); ip.IsValid() && why != "" {
			return usageError{fmt.Errorf("invalid --ip %s: %s", ip, why)}
		}
		ro.Bridge, ro.IP, ro.NAT, ro.Publish = &nc, ip, o.NAT, ports
	}
	if ro.Cwd == "" {
		if ro.Cwd, err = os.Getwd(); err != nil {
			return err
		}
	}
	if st, err := os.Stat(ro.Cwd); ro.Rootfs == "" && (err != nil || !st.IsDir()) {
		return usageError{fmt.Errorf("working directory %s: not a directory", ro.Cwd)}
	}
	if len(ro.Env) == 0 {
		ro.Env = os.Environ()
	}
	if path != "" {
		abs, err := e.viewer.Resolve(path)
		if err != nil {
			return usageError{err}
		}
		if abs == e.viewer.Root {
			return usageError{fmt.Errorf("%q: give the new container a name", path)}
		}
		ro.Path = abs
	}
	abs, err := e.tree.Run(ro)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, e.show(abs))
	return nil
}
