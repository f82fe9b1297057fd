package cmd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cr-dev/cr/images"
	"github.com/cr-dev/cr/migrate"
	"github.com/cr-dev/cr/nstree"
	"github.com/cr-dev/cr/restore"
)

// AuthOptions are the authentication flags of cr serve and cr migrate.
type AuthOptions struct {
	TokenFile, Cert, Key, CA, ServerName string
}

// AddFlags adds the authentication flags.
func (a *AuthOptions) AddFlags(f *pflag.FlagSet) {
	f.StringVar(&a.TokenFile, "token-file", "", "shared secret (mode 0600, at least 16 bytes; `cr certs token FILE` makes one)")
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
	mapError(migrate.ErrAuth, ExitDenied)
	mapError(migrate.ErrNoAuth, ExitUsage)
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
verified; a broken or hostile stream leaves nothing behind.

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
	staging := filepath.Join(stagingDir(e.tree), "incoming")
	ropts := restore.Options{CRIU: criu, CRIUVersion: ver.Code(), StagingDir: stagingDir(e.tree)}
	cfg := migrate.ServerConfig{
		Listen: o.Listen, Auth: au, StagingDir: staging,
		Limits: images.Limits{MaxBytes: o.MaxBytes}, MaxConcurrent: o.MaxConcurrent, Log: os.Stderr,
		Check: func(req migrate.Request) error {
			f, err := e.tree.Load()
			if err != nil {
				return err
			}
			if _, ok := f.ByPath[req.Target()]; ok {
				return fmt.Errorf("%s exists here", req.Target())
			}
			if req.Lazy {
				return fmt.Errorf("lazy migration is not supported by this receiver")
			}
			return nil
		},
		Restorer: migrate.RestorerFunc(func(ctx context.Context, dir string, m *images.Manifest, as string, ready func(migrate.RestoreInfo) error) (migrate.RestoreInfo, error) {
			target := restore.Target(m, as)
			res, err := restore.FromDir(ctx, e.tree, dir, m, target, ropts, func(r *restore.Result) error {
				return ready(migrate.RestoreInfo{Paths: r.Containers, Pids: r.Pids})
			})
			if err != nil {
				return migrate.RestoreInfo{}, err
			}
			return migrate.RestoreInfo{Paths: res.Containers, Pids: res.Pids, Elapsed: res.Elapsed}, nil
		}),
	}
	return migrate.ListenAndServe(ctx, cfg)
}
