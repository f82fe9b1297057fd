package cmd

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cr-dev/cr/migrate"
)

func init() { register(newCertsCommand) }

func newCertsCommand(g *Global) *cobra.Command {
	c := &cobra.Command{
		Use:   "certs",
		Short: "Create credentials for cr serve and cr migrate",
		Long: `cr certs token FILE writes a random shared token (mode 0600) for
--token-file; copy it to both hosts. cr certs tls DIR --host NAME creates a CA
(ca.crt, ca.key), a server pair (server.crt, server.key, for the names given
with --host) and a client pair (client.crt, client.key), all ECDSA P-256,
keys mode 0600. Existing files are never overwritten.`,
		Example: `  cr certs token /etc/cr/token
  cr certs tls /etc/cr/tls --host dest.example.org --host 10.0.0.2
  cr serve --cert /etc/cr/tls/server.crt --key /etc/cr/tls/server.key --ca /etc/cr/tls/ca.crt
  cr migrate /lab dest.example.org --cert client.crt --key client.key --ca ca.crt`,
	}
	tok := &cobra.Command{
		Use:   "token FILE",
		Short: "Write a random shared token",
		Example: `  cr certs token /etc/cr/token
  scp /etc/cr/token desthost:/etc/cr/token
  cr serve --token-file /etc/cr/token                 # on desthost
  cr migrate /lab desthost --token-file /etc/cr/token`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := migrate.WriteToken(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", args[0])
			return nil
		},
	}
	var hosts []string
	tlsCmd := &cobra.Command{
		Use:   "tls DIR --host NAME...",
		Short: "Create a CA, a server and a client certificate",
		Example: `  cr certs tls /etc/cr/tls --host dest.example.org --host 10.0.0.2
  cr serve --cert /etc/cr/tls/server.crt --key /etc/cr/tls/server.key --ca /etc/cr/tls/ca.crt
  cr migrate /lab dest.example.org --cert /etc/cr/tls/client.crt --key /etc/cr/tls/client.key --ca /etc/cr/tls/ca.crt`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCertsTLS(cmd.OutOrStdout(), args[0], hosts)
		},
	}
	tlsCmd.Flags().StringArrayVar(&hosts, "host", nil, "a name or address of the receiving host (repeatable, at least one)")
	c.AddCommand(tok, tlsCmd)
	return c
}

func runCertsTLS(out io.Writer, dir string, hosts []string) error {
	if len(hosts) == 0 {
		return usageError{fmt.Errorf("give the receiver's names with --host")}
	}
	if err := migrate.GenerateCA(dir); err != nil {
		return err
	}
	if err := migrate.GenerateCert(dir, "server", dir, true, hosts); err != nil {
		return err
	}
	if err := migrate.GenerateCert(dir, "client", dir, false, nil); err != nil {
		return err
	}
	for _, f := range []string{"ca.crt", "server.crt", "server.key", "client.crt", "client.key"} {
		fmt.Fprintln(out, filepath.Join(dir, f))
	}
	return nil
}
