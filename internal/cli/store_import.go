package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/mosquittodb"
)

func init() { storeSubcommands = append(storeSubcommands, newStoreImportMosquitto) }

func newStoreImportMosquitto(stdio Stdio, f *storeFlags) *cobra.Command {
	var merge bool
	var maxSize int64
	cmd := &cobra.Command{
		Use:   "import-mosquitto FILE",
		Short: "Bring retained messages and persistent sessions over from Mosquitto 2.0's mosquitto.db",
		Long: `import-mosquitto reads the persistence file of Mosquitto 2.0 (mosquitto.db,
written with persistence true; stop Mosquitto first so that it saves it) and
adds to the store, in one transaction: retained messages with their
properties, persistent sessions with their subscriptions, and the QoS 1 and 2
messages queued for them or in flight. What it cannot carry over (QoS 0 and
$SYS messages, expired messages, inbound QoS 2 messages awaiting PUBREL) is
counted in the summary. The store is created if it does not exist, with the
same key handling as the broker's. A store that already holds sessions is
refused unless --merge is given; sessions and retained topics already in the
store are kept as they are. See docs/durability.md.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			db, err := mosquittodb.ReadFile(args[0], maxSize)
			if err != nil {
				return err
			}
			cfg, err := f.config(stdio)
			if err != nil {
				return err
			}
			_, statErr := os.Stat(filepath.Join(cfg.Dir, store.DBFile))
			s, err := store.Open(cfg)
			if err != nil {
				return err
			}
			if errors.Is(statErr, os.ErrNotExist) {
				fmt.Fprintf(stdio.Err, "created the store in %s\n", cfg.Dir)
			}
			st := s.Recovered()
			if n := len(st.Sessions); n > 0 && !merge {
				s.Close()
				return fmt.Errorf("store: %s already holds %d sessions; import into a new store, or add --merge to add only what it lacks", cfg.Dir, n)
			}
			retained := make(map[string]bool, len(st.Retained))
			for _, r := range st.Retained {
				retained[r.Topic] = true
			}
			ops, sum := mosquittodb.Convert(db, mosquittodb.ImportOptions{
				Now:          time.Now(),
				NextID:       s.NextID,
				HaveSession:  func(id string) bool { return st.Sessions[id] != nil },
				HaveRetained: func(topic string) bool { return retained[topic] },
			})
			if len(ops) > 0 {
				if err := s.Commit(cmd.Context(), ops...); err != nil {
					s.Close()
					return fmt.Errorf("store: nothing imported: %w", err)
				}
			}
			if err := s.Close(); err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "imported %s into %s\n", args[0], cfg.Dir)
			fmt.Fprintf(stdio.Out, "  sessions       %d\n", sum.Sessions)
			fmt.Fprintf(stdio.Out, "  subscriptions  %d\n", sum.Subscriptions)
			fmt.Fprintf(stdio.Out, "  retained       %d\n", sum.Retained)
			fmt.Fprintf(stdio.Out, "  messages       %d (queued and in flight)\n", sum.Messages)
			fmt.Fprintf(stdio.Out, "  skipped        %d\n", sum.SkippedTotal())
			for _, why := range sum.Reasons() {
				fmt.Fprintf(stdio.Out, "    %6d  %s\n", sum.Skipped[why], why)
			}
			for _, n := range sum.Notes {
				fmt.Fprintf(stdio.Out, "note: %s\n", n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&merge, "merge", false, "import into a store that already holds sessions (what it holds is kept)")
	cmd.Flags().Int64Var(&maxSize, "max-size", mosquittodb.DefaultMaxSize, "refuse files larger than `BYTES`")
	return cmd
}
