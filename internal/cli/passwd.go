package cli

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/authn/passwd"
)

func init() { register(newPasswdCmd) }

func newPasswdCmd(stdio Stdio) *cobra.Command {
	var create, del, upgrade, batch bool
	c := &cobra.Command{
		Use:   "passwd [-c | -D] FILE USER | -b [-c] FILE USER PASSWORD | -U FILE",
		Short: "Manage a password file (reads and writes mosquitto_passwd files)",
		Long: `Add a user to a password file or change the user's password, delete a user
(-D), or hash the plain-text passwords of a file (-U), as mosquitto_passwd does.

The password is read from the terminal (twice, not echoed) or, when standard
input is not a terminal, from its first line. It is hashed with argon2id
(PBKDF2-SHA512 "$7$" when Go runs in FIPS 140 mode). Files are replaced
atomically; a new file is created with mode 0600.

-b takes the password as an argument for old scripts; it is then visible to
every user of the machine in the process list, so prefer standard input:
  printf '%s\n' "$PW" | moat passwd FILE USER`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPasswd(stdio, args, create, del, upgrade, batch)
		},
	}
	f := c.Flags()
	f.BoolVarP(&create, "create", "c", false, "create a new file, replacing an existing one")
	f.BoolVarP(&del, "delete", "D", false, "delete USER")
	f.BoolVarP(&upgrade, "upgrade", "U", false, "hash the plain-text passwords in FILE (hashed lines are kept)")
	f.BoolVarP(&batch, "batch", "b", false, "take the password from the command line (visible to other users; prefer standard input)")
	return c
}

func runPasswd(stdio Stdio, args []string, create, del, upgrade, batch bool) error {
	want, usage := 2, "FILE USER"
	switch {
	case upgrade && (create || del || batch):
		return errors.New("passwd: -U takes no other flag: moat passwd -U FILE")
	case del && (create || batch):
		return errors.New("passwd: -D cannot be combined with -c or -b: moat passwd -D FILE USER")
	case upgrade:
		want, usage = 1, "-U FILE"
	case batch:
		want, usage = 3, "-b FILE USER PASSWORD"
	}
	if len(args) != want {
		return fmt.Errorf("passwd: want %s, got %d arguments", usage, len(args))
	}
	path := args[0]
	if upgrade {
		return passwdUpgrade(stdio, path)
	}
	user := args[1]
	ed, err := passwd.Edit(path, create)
	if err != nil {
		return err
	}
	if del {
		if err := ed.Delete(user); err != nil {
			return err
		}
		return ed.Write()
	}
	var pw []byte
	if batch {
		fmt.Fprintln(stdio.Err, "moat passwd: warning: a password on the command line is visible to other users in the process list and may stay in the shell history; pipe it to standard input instead")
		pw = []byte(args[2])
	} else if pw, err = readNewPassword(stdio); err != nil {
		return err
	}
	if err := ed.Set(user, pw); err != nil {
		return err
	}
	clear(pw)
	if err := ed.Write(); err != nil {
		return err
	}
	if plain := ed.Plain(); len(plain) > 0 {
		fmt.Fprintf(stdio.Err, "moat passwd: warning: %s still holds %d plain-text passwords, and the broker refuses such a file; hash them with: moat passwd -U %s\n", path, len(plain), path)
	}
	return nil
}

func passwdUpgrade(stdio Stdio, path string) error {
	ed, err := passwd.Edit(path, false)
	if err != nil {
		return err
	}
	hashed, weak, err := ed.Upgrade()
	if err != nil {
		return err
	}
	if len(hashed) > 0 {
		if err := ed.Write(); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdio.Err, "moat passwd: hashed %d plain-text passwords in %s\n", len(hashed), path)
	if len(weak) > 0 {
		fmt.Fprintf(stdio.Err, "moat passwd: %d users have older, cheaper hashes that only a new password can upgrade (moat passwd %s USER): %s\n", len(weak), path, strings.Join(weak, ", "))
	}
	return nil
}

// readNewPassword reads a new password: from the terminal twice without
// echo, or else the first line of standard input.
func readNewPassword(stdio Stdio) ([]byte, error) {
	if f, ok := stdio.In.(*os.File); ok && isTerminal(f) {
		fmt.Fprint(stdio.Err, "Password: ")
		p, err := readNoEcho(f)
		fmt.Fprintln(stdio.Err)
		if err != nil {
			return nil, fmt.Errorf("passwd: reading the password: %w", err)
		}
		fmt.Fprint(stdio.Err, "Reenter password: ")
		p2, err := readNoEcho(f)
		fmt.Fprintln(stdio.Err)
		if err != nil {
			return nil, fmt.Errorf("passwd: reading the password: %w", err)
		}
		if !bytes.Equal(p, p2) {
			return nil, errors.New("passwd: the passwords do not match")
		}
		clear(p2)
		return p, passwd.CheckPassword(p)
	}
	if stdio.In == nil {
		return nil, errors.New("passwd: no password: run on a terminal or pipe it to standard input")
	}
	r := bufio.NewReader(io.LimitReader(stdio.In, passwd.MaxPassword+3))
	s, err := r.ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("passwd: reading the password from standard input: %w", err)
	}
	s = bytes.TrimSuffix(bytes.TrimSuffix(s, []byte{'\n'}), []byte{'\r'})
	if len(s) == 0 {
		return nil, errors.New("passwd: no password on standard input (its first line is the password)")
	}
	return s, passwd.CheckPassword(s)
}
