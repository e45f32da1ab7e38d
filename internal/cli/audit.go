package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/audit"
)

func init() { register(newAuditCmd) }

func newAuditCmd(stdio Stdio) *cobra.Command {
	root := &cobra.Command{
		Use:   "audit",
		Short: "Check the tamper-evident audit log",
	}
	root.AddCommand(newAuditVerify(stdio))
	return root
}

func newAuditVerify(stdio Stdio) *cobra.Command {
	var keyFile string
	var live bool
	cmd := &cobra.Command{
		Use:   "verify FILE...",
		Short: "Check the audit log's hash chain and signed checkpoints",
		Long: `moat audit verify checks one audit log, or several files of one log given
oldest first (audit.log.2 audit.log.1 audit.log): every entry is intact and
chained to the one before, and every entry up to the last checkpoint is
covered by a signature from a key that chains to the trusted public key
(--key, default audit.pub beside the last FILE; keep a copy off the host).

Exit status: 0 when everything is verified; 1 when an entry was changed,
removed, reordered or inserted, a signature does not verify or a key does
not chain to the trusted one (the first bad entry is named as FILE:LINE and
seq); 2 when the end is unverified: entries after the last checkpoint, a
torn last line, or no shutdown checkpoint (the log was cut, or the broker is
still running or crashed). --live accepts an unverified end with a warning,
for a log the broker is still writing.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			if keyFile == "" {
				keyFile = filepath.Join(filepath.Dir(files[len(files)-1]), audit.PubFile)
			}
			keys, err := audit.ReadPublicKeys(keyFile)
			if err != nil {
				return err
			}
			rep, err := audit.Verify(files, audit.VerifyOptions{Keys: keys, Live: live})
			if rep != nil {
				for _, w := range rep.Warnings {
					fmt.Fprintf(stdio.Err, "moat: audit verify: warning: %s\n", w)
				}
			}
			if p, ok := errors.AsType[*audit.Problem](err); ok {
				code := 1
				if p.Tail {
					code = 2
				}
				if rep.LastCheckpointSeq > 0 {
					err = fmt.Errorf("%w (the entries up to seq %d are verified)", err, rep.LastCheckpointSeq)
				}
				return &exitError{code, fmt.Errorf("audit verify: %w", err)}
			}
			if err != nil {
				return fmt.Errorf("audit verify: %w", err)
			}
			if rep.Checkpoints > 0 {
				fmt.Fprintf(stdio.Out, "audit: verified %d entries (seq %d-%d) in %d file(s), %d checkpoints, key epochs %d-%d; last checkpoint seq %d at %s\n",
					rep.Entries, rep.FirstSeq, rep.LastSeq, rep.Files, rep.Checkpoints,
					rep.Epochs[0], rep.Epochs[len(rep.Epochs)-1], rep.LastCheckpointSeq, rep.LastCheckpointTime.Format(time.RFC3339Nano))
			}
			if rep.Unsigned > 0 {
				fmt.Fprintf(stdio.Out, "audit: %d entries after the last checkpoint are unverified\n", rep.Unsigned)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "trusted public key `FILE` (default: audit.pub beside the last log file)")
	cmd.Flags().BoolVar(&live, "live", false, "accept entries after the last checkpoint (a log still being written) with a warning")
	return cmd
}
