package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/store"
	"github.com/moatmq/moat/internal/store/mosquittodb"
)

// importNow is the import's clock: messages whose expiry has passed are
// skipped. Tests set it to the time their fixture file was written.
var importNow = time.Now

func init() { storeSubcommands = append(storeSubcommands, newStoreImportMosquitto) }

func newStoreImportMosquitto(stdio Stdio, f *storeFlags) *cobra.Command {
	var merge bool
	var maxSize int64
	var confFile string
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
store are kept as they are.

A retained message keeps its publisher (client ID, username and the listener
it arrived on) for check_retain_source when -c names the configuration the
broker will run with (the same mosquitto.conf, or Moat YAML): Mosquitto saves
the port the message arrived on, and the listener with that port is taken.
Without it, or for a port no listener has, the publisher is unknown and the
broker does not replay the message while check_retain_source is on. See
docs/durability.md.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			db, err := mosquittodb.ReadFile(args[0], maxSize)
			if err != nil {
				return err
			}
			listeners, err := listenersByPort(confFile)
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
				Now:          importNow(),
				NextID:       s.NextID,
				HaveSession:  func(id string) bool { return st.Sessions[id] != nil },
				HaveRetained: func(topic string) bool { return retained[topic] },
				Listeners:    listeners,
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
			if n := sum.RetainedUnknownPublisher; n > 0 {
				hint := "give -c with the broker's configuration to keep them"
				if confFile != "" {
					hint = "the file names no client, or no listener of " + confFile + " has the port they arrived on"
				}
				fmt.Fprintf(stdio.Out, "    %6d  with an unknown publisher: not replayed while check_retain_source is on (%s)\n", n, hint)
			}
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
	cmd.Flags().StringVarP(&confFile, "config", "c", "", "the broker's configuration `FILE` (mosquitto.conf or Moat YAML): "+
		"retained messages keep their publisher on the listener of the port they arrived on")
	return cmd
}

// listenersByPort maps each listening port of the configuration in path
// to its listener's name, as moat serve names them (the first listener
// of a port, as Mosquitto takes when it restores a message's listener).
// An empty path gives nil.
func listenersByPort(path string) (map[uint16]string, error) {
	if path == "" {
		return nil, nil
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	m := map[uint16]string{}
	for _, l := range cfg.Listeners {
		_, p, err := net.SplitHostPort(l.Address)
		if err != nil {
			continue
		}
		port, err := strconv.ParseUint(p, 10, 16)
		if _, dup := m[uint16(port)]; err != nil || dup {
			continue
		}
		m[uint16(port)] = l.Name
	}
	return m, nil
}
