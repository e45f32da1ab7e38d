package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/admin"
)

// `moat admin token` manages the bearer tokens of the admin API in
// DATA_DIR/admin-tokens.json; a running broker picks changes up at the
// next request.

func init() {
	register(func(stdio Stdio) *cobra.Command {
		var data string
		cmd := &cobra.Command{
			Use:   "admin",
			Short: "Manage access to the admin API, metrics and dashboard",
		}
		cmd.PersistentFlags().StringVar(&data, "data", "moat-data", "data `DIR` of the broker (holds "+admin.TokensFileName+")")
		path := func() string { return filepath.Join(data, admin.TokensFileName) }
		tok := &cobra.Command{
			Use:   "token",
			Short: "Create, list and revoke admin API tokens",
		}
		tok.AddCommand(adminTokenCreateCmd(stdio, path), adminTokenListCmd(stdio, path), adminTokenRevokeCmd(stdio, path))
		cmd.AddCommand(tok)
		return cmd
	})
}

func adminTokenCreateCmd(stdio Stdio, path func() string) *cobra.Command {
	var role string
	cmd := &cobra.Command{
		Use:   "create NAME --role viewer|operator",
		Short: "Create a token and print it once on stdout",
		Long: "Create an admin API token named NAME and print it once on stdout; only its SHA-256 is stored.\n" +
			"A viewer token reads; an operator token may also kick clients, edit bans, delete retained\n" +
			"messages, revoke certificates and reload the configuration.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("role") {
				return errors.New("admin: --role viewer or --role operator is required")
			}
			r, err := admin.ParseRole(role)
			if err != nil {
				return err
			}
			tok, err := admin.CreateToken(path(), args[0], r, time.Now(), nil)
			if err != nil {
				return err
			}
			fmt.Fprintln(stdio.Out, tok)
			fmt.Fprintf(stdio.Err, "admin: token %s (%s) created in %s; it is shown only this once\n", args[0], r, path())
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "viewer (read-only) or operator (may change state)")
	return cmd
}

func adminTokenListCmd(stdio Stdio, path func() string) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the tokens (names and roles; tokens themselves are not stored)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			recs, err := admin.ReadTokens(path())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tCREATED")
			for _, r := range recs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, r.Role, r.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
}

func adminTokenRevokeCmd(stdio Stdio, path func() string) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a token (a running broker refuses it at once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := admin.RevokeToken(path(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "admin: token %s revoked\n", args[0])
			return nil
		},
	}
}
