package cli

import (
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/moatmq/moat/internal/guard"
	"github.com/spf13/cobra"
)

// `moat ban` edits DATA_DIR/bans.json under its lock; a running broker
// reloads the file within its poll interval and disconnects the clients a
// new ban matches.

func init() {
	register(func(stdio Stdio) *cobra.Command {
		var data string
		cmd := &cobra.Command{
			Use:   "ban",
			Short: "Manage the dynamic ban list (addresses, client IDs, usernames, certificates)",
			Long: "Manage the ban list in DATA_DIR/" + guard.BansFileName + ". A running broker picks up changes\n" +
				"within a second and disconnects the live clients a new ban matches.",
		}
		cmd.PersistentFlags().StringVar(&data, "data", "moat-data", "data `DIR` of the broker (holds "+guard.BansFileName+")")
		file := func() guard.File { return guard.File{Path: filepath.Join(data, guard.BansFileName)} }
		cmd.AddCommand(banAddCmd(stdio, file), banListCmd(stdio, file), banRemoveCmd(stdio, file))
		return cmd
	})
}

func banAddCmd(stdio Stdio, file func() guard.File) *cobra.Command {
	var ipv, clientID, username, fingerprint, serial, reason string
	var dur time.Duration
	cmd := &cobra.Command{
		Use:   "add (--ip CIDR | --client-id ID | --username USER | --cert-fingerprint HEX | --serial HEX) [--for DURATION] [--reason TEXT]",
		Short: "Ban an address or prefix, client ID, username or certificate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var kind guard.Kind
			var value string
			n := 0
			for _, sel := range []struct {
				flag string
				kind guard.Kind
				v    string
			}{{"ip", guard.KindIP, ipv}, {"client-id", guard.KindClientID, clientID}, {"username", guard.KindUsername, username},
				{"cert-fingerprint", guard.KindCertFingerprint, fingerprint}, {"serial", guard.KindCertSerial, serial}} {
				if cmd.Flags().Changed(sel.flag) {
					n++
					kind, value = sel.kind, sel.v
				}
			}
			if n != 1 {
				return errors.New("ban: give exactly one of --ip, --client-id, --username, --cert-fingerprint, --serial")
			}
			if dur < 0 {
				return errors.New("ban: --for must be positive (leave it out for a ban without end)")
			}
			b, err := guard.NewManualBan(kind, value, dur, reason, time.Now(), rand.Reader)
			if err != nil {
				return fmt.Errorf("ban: %w", err)
			}
			if err := file().Update(func(cur []guard.Ban) ([]guard.Ban, error) {
				if len(cur) >= guard.DefaultMaxBans {
					return nil, fmt.Errorf("ban: the ban list already holds %d bans; remove some first", len(cur))
				}
				return append(cur, b), nil
			}); err != nil {
				return err
			}
			until := "without end"
			if !b.Expires.IsZero() {
				until = "until " + b.Expires.Format(time.RFC3339)
			}
			fmt.Fprintf(stdio.Out, "ban %s added: %s %s %s\n", b.ID, b.Kind, printable(b.Value), until)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ipv, "ip", "", "ban an IPv4 or IPv6 address or CIDR prefix")
	f.StringVar(&clientID, "client-id", "", "ban an MQTT client identifier")
	f.StringVar(&username, "username", "", "ban a username")
	f.StringVar(&fingerprint, "cert-fingerprint", "", "ban a certificate by its SHA-256 fingerprint (hex, colons allowed)")
	f.StringVar(&serial, "serial", "", "ban a certificate by its serial number (hex; any issuer)")
	f.DurationVar(&dur, "for", 0, "how long the ban lasts (e.g. 30m, 24h); default: without end")
	f.StringVar(&reason, "reason", "", "why (logged with every refusal)")
	return cmd
}

func banListCmd(stdio Stdio, file func() guard.File) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the bans in the data directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bans, err := file().Read()
			if err != nil {
				return err
			}
			now := time.Now()
			tw := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tVALUE\tEXPIRES\tSOURCE\tREASON")
			for _, b := range bans {
				exp := "never"
				switch {
				case !b.Expires.IsZero() && !now.Before(b.Expires):
					exp = "expired"
				case !b.Expires.IsZero():
					exp = b.Expires.Local().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.Kind, printable(b.Value), exp, printable(b.Source), printable(b.Reason))
			}
			return tw.Flush()
		},
	}
}

func banRemoveCmd(stdio Stdio, file func() guard.File) *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a ban (see moat ban list for IDs)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.ToLower(args[0])
			var removed guard.Ban
			err := file().Update(func(cur []guard.Ban) ([]guard.Ban, error) {
				out := cur[:0:0]
				for _, b := range cur {
					if b.ID == id {
						removed = b
						continue
					}
					out = append(out, b)
				}
				if removed.ID == "" {
					return nil, fmt.Errorf("ban: no ban with ID %q (see moat ban list)", printable(args[0]))
				}
				return out, nil
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "ban %s removed: %s %s\n", removed.ID, removed.Kind, printable(removed.Value))
			return nil
		},
	}
}

// printable quotes s when it holds characters that could drive a
// terminal (ban values come from clients).
func printable(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == '\t' {
			return strconv.Quote(s)
		}
	}
	return s
}
