package cmd

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/cr-dev/cr/criubin"
	"github.com/cr-dev/cr/events"
	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/migrate"
	"github.com/cr-dev/cr/network"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/restore"
	"github.com/cr-dev/cr/rootfs"
)

// AuthOptions are the authentication flags of cr serve and cr migrate.
type AuthOptions struct {
	TokenFile, Cert, Key, CA, ServerName string
}

// AddFlags adds the authentication flags.
func (a *AuthOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&a.TokenFile, "token-file", "", "`FILE` holding the shared secret (mode 0600, at least 16 bytes; cr certs token FILE makes one)")
	f.StringVar(&a.Cert, "cert", "", "mutual TLS: this side's certificate")
	f.StringVar(&a.Key, "key", "", "mutual TLS: this side's private key")
	f.StringVar(&a.CA, "ca", "", "mutual TLS: the CA that signs the other side's certificate")
	f.StringVar(&a.ServerName, "server-name", "", "mutual TLS: the name in the server's certificate (default: HOST)")
}

func (a AuthOptions) auth() (migrate.Auth, error) {
	au := migrate.Auth{TokenFile: a.TokenFile, CertFile: a.Cert, KeyFile: a.Key, CAFile: a.CA, ServerName: a.ServerName}
	if err := au.Validate(); err != nil {
		return au, usageError{err}
	}
	return au, nil
}

// ServeOptions are the flags of cr serve.
type ServeOptions struct {
	Listen        string
	Auth          AuthOptions
	MaxConcurrent int
	MaxBytes      int64
}

func init() {
	register(newServeCommand)
}

func newServeCommand(g *Global) *cobra.Command {
	var o ServeOptions
	c := &cobra.Command{
		Use:   "serve --token-file FILE | --cert C --key K --ca CA",
		Short: "Receive migrations from other hosts",
		Long: `Run in the foreground (for systemd or a shell to supervise), accept
migrations sent by cr migrate, restore them, and log one line per migration.

Authentication is mandatory: a shared token (--token-file on both sides; it
is never sent: each side proves it knows it with an HMAC bound to the TLS
session) or mutual TLS (--cert, --key and the --ca that signs clients; see
cr certs). An unauthenticated client is refused before any image byte is
accepted. Streams are bounded (--max-bytes), confined to the staging area and
verified; a broken or hostile stream leaves nothing behind. After a crash,
cr serve removes at start what it left: images half received, and the nodes
of a restore that had not finished (unless processes run in them). One cr
serve at a time uses a staging area ($CR_STAGING/serve holds its lock).

Lazy migrations (cr migrate --lazy) are accepted when this host's kernel
has userfaultfd with non-cooperative events (cr serve says at start if it
has not): the job resumes here before its memory arrives, the memory follows
through the same connection, and if it cannot all arrive the job is killed
here, also at the next start after a crash.

See docs/cr-serve.service for a systemd unit.`,
		Example: `  cr certs token /etc/cr/token             # then copy it to the sending host
  cr serve --listen :7400 --token-file /etc/cr/token
  cr serve --cert server.crt --key server.key --ca ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), g, o)
		},
	}
	c.Flags().StringVar(&o.Listen, "listen", ":7400", "address to listen on")
	o.Auth.AddFlags(c.Flags())
	c.Flags().IntVar(&o.MaxConcurrent, "max-concurrent", 2, "migrations received at once")
	c.Flags().Int64Var(&o.MaxBytes, "max-bytes", images.DefaultMaxBytes, "largest image accepted, in bytes once extracted")
	return c
}

func runServe(ctx context.Context, g *Global, o ServeOptions) error {
	au, err := o.Auth.auth()
	if err != nil {
		return err
	}
	e, err := openEnv()
	if err != nil {
		return err
	}
	if e.viewer.Root != "/" {
		return fmt.Errorf("%w: cr serve runs on the host, not inside a container", nstree.ErrOutside)
	}
	criu, ver, err := criuEnv(g)
	if err != nil {
		return err
	}
	ctx, cancel := interruptible(ctx)
	defer cancel()
	st, err := openServeState(stagingDir(e.tree))
	if err != nil {
		return err
	}
	defer st.Close()
	staging := filepath.Join(stagingDir(e.tree), "incoming")
	lazyErr := lazyRestorable(ctx, criu)
	nc, err := hostNetwork(e.tree)
	if err != nil {
		return err
	}
	ropts := restore.Options{CRIU: criu, CRIUVersion: ver.Code(), StagingDir: st.workDir(), Network: nc}
	// CRIU's action script, for restores made while the image arrives.
	ropts.Exe, _ = os.Executable()
	cfg := migrate.ServerConfig{
		Listen: o.Listen, Auth: au, StagingDir: staging,
		Limits: images.Limits{MaxBytes: o.MaxBytes}, MaxConcurrent: o.MaxConcurrent, Log: os.Stderr,
		Check: func(req migrate.Request) error {
			f, err := e.tree.Load()
			if err != nil {
				return err
			}
			if _, ok := f.ByPath[req.Target()]; ok {
				return fmt.Errorf("%w: %s exists here", migrate.ErrTargetExists, req.Target())
			}
			if err := checkNetworks(nc, e.tree, req.Networks); err != nil {
				return err
			}
			if err := checkPublished(nc, e.tree, req.Published); err != nil {
				return err
			}
			return restore.CheckContract(ctx, e.tree, ropts, restore.Contract{Arch: req.Arch, CRIUVersion: req.CRIUVersion,
				Lowers: req.Lowers, Files: req.Files, CPUInfo: req.CPUInfo})
		},
		Lazy: func() error { return lazyErr },
		// A stop-and-copy migration is restored while it arrives.
		Streamed: ropts.Exe != "",
		// File systems are pre-copied into the staging area.
		PreCopy: func() error { return nil },
		HasLower: func(d string) bool {
			_, err := rootfs.Cache{Dir: e.tree.RootfsCache}.Lookup(d)
			return err == nil
		},
		Restorer: migrate.RestorerFunc(func(ctx context.Context, job *migrate.Job) (migrate.RestoreInfo, error) {
			o := ropts
			if job.Lazy {
				o.Pages = job.Pages
			}
			o.PreCopied = job.PreCopy
			ready := func(r *restore.Result) error {
				return job.Ready(migrate.RestoreInfo{Paths: r.Containers, Pids: r.Pids})
			}
			var res *restore.Result
			var err error
			if job.Image != nil {
				o.Limits = job.Limits
				target := func(m *images.Manifest) (string, error) { return restore.Target(m, job.As), nil }
				res, err = restore.FromStream(ctx, e.tree, job.Image, "received image", target, o, ready)
			} else {
				res, err = restore.FromDir(ctx, e.tree, job.Dir, job.Manifest, restore.Target(job.Manifest, job.As), o, ready)
			}
			if err != nil {
				return migrate.RestoreInfo{}, err
			}
			e.tree.RecordPaths(res.Containers, events.MigratedIn, nil)
			info := migrate.RestoreInfo{Paths: res.Containers, Pids: res.Pids, Elapsed: res.Elapsed}
			if job.Lazy {
				job.Resumed(info)
				if err := res.WaitPages(ctx); err != nil {
					return migrate.RestoreInfo{}, err
				}
			}
			return info, nil
		}),
	}
	if lazyErr != nil {
		log.Printf("lazy migrations refused: %v", lazyErr)
	}
	return migrate.ListenAndServe(ctx, cfg)
}

// lazyRestorable says why this host cannot restore lazily, or nil: CRIU's
// lazy-pages daemon needs userfaultfd with the non-cooperative events.
func lazyRestorable(ctx context.Context, criu string) error {
	f, err := criubin.ProbeFeatures(ctx, criu)
	switch {
	case err != nil:
		return err
	case !f.UserFaultFD:
		return errors.New("this kernel lacks userfaultfd")
	case !f.UffdNoncoop:
		return errors.New("this kernel's userfaultfd lacks non-cooperative events (fork, remap)")
	}
	return nil
}

// errServeBusy: another cr serve uses the same staging area.
var errServeBusy = errors.New("another cr serve uses this staging area")

// serveState is cr serve's own part of the staging area, STAGING/serve,
// held by one cr serve at a time (a lock): the restores' work directories,
// emptied at start. (What the restores of a cr serve that died left in the
// tree is removed by restore's journal, as for cr restore.)
type serveState struct {
	dir  string
	lock *os.File
}

func openServeState(staging string) (*serveState, error) {
	dir := filepath.Join(staging, "serve")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create staging area: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock staging area: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", errServeBusy, staging)
		}
		return nil, fmt.Errorf("lock staging area: %w", err)
	}
	s := &serveState{dir: dir, lock: f}
	work := s.workDir()
	if err := os.RemoveAll(work); err != nil {
		s.Close()
		return nil, fmt.Errorf("clean staging area: %w", err)
	}
	if err := os.Mkdir(work, 0o700); err != nil {
		s.Close()
		return nil, fmt.Errorf("create staging area: %w", err)
	}
	return s, nil
}

// Close releases the staging area.
func (s *serveState) Close() { s.lock.Close() }

// workDir is where the restores' work directories go.
func (s *serveState) workDir() string { return filepath.Join(s.dir, "work") }

// checkNetworks refuses bridge addresses this host cannot give: its bridge
// must have the same subnet, and the addresses must be free here.
func checkNetworks(nc *network.Config, t *nstree.Tree, addrs []string) error {
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return err
		}
		if err := nc.Check(p); err != nil {
			return fmt.Errorf("%w (a container's address is %s)", err, p.Addr())
		}
		if o := nc.Owner(p.Addr()); o != "" && t.Alive(o) {
			return fmt.Errorf("%w: %s is in use by another container here", network.ErrAddrInUse, p.Addr())
		}
	}
	return nil
}

// checkPublished refuses host ports another container publishes here.
func checkPublished(nc *network.Config, t *nstree.Tree, ports []string) error {
	for _, s := range ports {
		p, err := network.ParsePort(s)
		if err != nil {
			return err
		}
		if o := nc.PortOwner(p); o != "" && t.Alive(o) {
			return fmt.Errorf("%w: host port %d/%s is published by another container here", network.ErrAddrInUse, p.Host, p.Proto)
		}
	}
	return nil
}
