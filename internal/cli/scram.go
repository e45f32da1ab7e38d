package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/authn/scram"
)

func init() { register(newSCRAMCmd) }

func newSCRAMCmd(stdio Stdio) *cobra.Command {
	c := &cobra.Command{
		Use:   "scram",
		Short: "Manage SCRAM credentials for MQTT 5 enhanced authentication",
	}
	var (
		create bool
		mechs  []string
		iter   int
	)
	add := &cobra.Command{
		Use:   "add [-c] [-m MECHANISM]... [--iterations N] FILE USER",
		Short: "Add a user to a SCRAM credentials file, or change the user's password",
		Long: `Derive the SCRAM credentials (salt, StoredKey and ServerKey; never the
password) of USER and write them to FILE, replacing the user's lines for the
same mechanisms and keeping every other line. The file is replaced atomically;
a new file is created with mode 0600.

The password is read from the terminal (twice, not echoed) or, when standard
input is not a terminal, from its first line; never from the command line:
  printf '%s\n' "$PW" | moat scram add FILE USER
It must be printable ASCII.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSCRAMAdd(stdio, args[0], args[1], create, mechs, iter)
		},
	}
	f := add.Flags()
	f.BoolVarP(&create, "create", "c", false, "create FILE if it does not exist")
	f.StringSliceVarP(&mechs, "mechanism", "m", []string{"SCRAM-SHA-256", "SCRAM-SHA-512"}, "mechanisms to write credentials for")
	f.IntVar(&iter, "iterations", scram.DefaultIterations, fmt.Sprintf("PBKDF2 iterations (%d to %d); clients compute them at every connection", scram.MinIterations, scram.MaxIterations))
	c.AddCommand(add)
	return c
}

func runSCRAMAdd(stdio Stdio, path, user string, create bool, mechs []string, iter int) error {
	if err := scram.CheckUsername(user); err != nil {
		return err
	}
	if len(mechs) == 0 {
		return errors.New("scram: no mechanism: give -m SCRAM-SHA-256 and/or -m SCRAM-SHA-512")
	}
	var ms []scram.Mechanism
	for _, name := range mechs {
		m, err := scram.ParseMechanism(strings.TrimSpace(name))
		if err != nil {
			return err
		}
		ms = append(ms, m)
	}
	pw, err := readNewPassword(stdio)
	if err != nil {
		return err
	}
	defer clear(pw)
	creds := make([]scram.Credential, 0, len(ms))
	for _, m := range ms {
		c, err := scram.NewCredential(m, pw, iter, nil)
		if err != nil {
			return err
		}
		creds = append(creds, c)
	}
	if err := scram.AddToFile(path, user, create, creds...); err != nil {
		return err
	}
	fmt.Fprintf(stdio.Err, "moat scram: %s credentials of %q written to %s\n", strings.Join(mechs, " and "), user, path)
	return nil
}
