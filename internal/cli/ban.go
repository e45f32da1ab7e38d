package cli

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/guard"
	"github.com/moatmq/moat/internal/store"
	"github.com/spf13/cobra"
)

// `moat ban` changes the ban list where the broker keeps it
// (serve_bans.go): through a running broker's control socket,
// DATA_DIR/bans.sock, when one answers (the change takes effect at once,
// and is stored by the broker, in the durable store or the bans file);
// otherwise, the broker being stopped, in the durable store when the data
// directory holds one, else in DATA_DIR/bans.json.

// banPlace locates the ban list of one data directory.
type banPlace struct {
	stdio      Stdio
	data       string
	storeDir   string // default DATA/store
	keyFile    string
	passFile   string
	configFile string // -c: the broker's configuration, read for the settings below

	storeFromConfig bool   // storeDir is the configuration's persistence location, not --store
	bansFile        string // defense.bans_file; "" means DATA/bans.json
	fileOnly        bool   // the broker keeps its bans in the bans file (persistence off, or bans_file set)
	maxBans         int    // defense.max_bans; 0 means guard.DefaultMaxBans
}

// readConfig takes the data directory, the store's location, the bans
// file and max_bans from the broker's configuration file (-c), so that
// a change made with the broker stopped lands where that broker reads its
// bans and within its limit. Flags given explicitly win.
func (bp *banPlace) readConfig(cmd *cobra.Command) error {
	if bp.configFile == "" {
		return nil
	}
	cfg, err := config.Load(bp.configFile)
	if err != nil {
		return fmt.Errorf("ban: %w", err)
	}
	if !cmd.Flags().Changed("data") && cfg.DataDir != "" {
		bp.data = cfg.DataDir
	}
	if bp.storeDir == "" && cfg.Persistence.Location != "" {
		bp.storeDir, bp.storeFromConfig = cfg.Persistence.Location, true
	}
	bp.bansFile, bp.maxBans = cfg.Defense.BansFile, cfg.Defense.MaxBans
	// As planBanStore decides at start: the store holds the bans only
	// when persistence is on and no bans file is named.
	bp.fileOnly = !cfg.Persistence.Enabled || cfg.Defense.BansFile != ""
	return nil
}

// limit is the most bans the list may hold.
func (bp *banPlace) limit() int {
	if bp.maxBans > 0 {
		return bp.maxBans
	}
	return guard.DefaultMaxBans
}

func (bp *banPlace) control() guard.ControlClient {
	return guard.ControlClient{Path: filepath.Join(bp.data, guard.ControlSocketName)}
}

func (bp *banPlace) file() guard.File {
	path := bp.bansFile
	if path == "" {
		path = filepath.Join(bp.data, guard.BansFileName)
	}
	return guard.File{Path: path, MaxBans: bp.limit()}
}

func (bp *banPlace) storePath() string {
	if bp.storeDir != "" {
		return bp.storeDir
	}
	return filepath.Join(bp.data, "store")
}

// offline returns the ban list of a stopped broker: the durable store
// when the data directory holds one (the caller must call done), else the
// bans file. file is the bans file in both cases (with the store, one not
// yet imported at a start).
func (bp *banPlace) offline() (bs guard.BanStore, where string, done func(), err error) {
	if bp.fileOnly {
		return bp.file(), bp.file().Path, func() {}, nil
	}
	dir := bp.storePath()
	if _, err := os.Stat(filepath.Join(dir, store.DBFile)); err != nil {
		if bp.storeDir != "" && !bp.storeFromConfig {
			return nil, "", nil, fmt.Errorf("ban: no durable store in %s: %w", dir, err)
		}
		return bp.file(), bp.file().Path, func() {}, nil
	}
	cfg := store.Config{Dir: dir}
	kek, pass, err := keySource(bp.stdio, bp.keyFile, envStoreKey, bp.passFile, envStorePassphrase, false, "")
	if err != nil {
		return nil, "", nil, err
	}
	cfg.KEK, cfg.Passphrase = kek, pass
	if kek == nil && pass == nil {
		cfg.KeyFile = filepath.Join(dir, store.KeyFile)
	}
	st, err := store.Open(cfg)
	if errors.Is(err, store.ErrInUse) {
		return nil, "", nil, fmt.Errorf("ban: the durable store %s is held by a running broker that does not answer on %s "+
			"(defense off, or the socket could not be made: see its log); use the admin API (POST /api/v1/bans) or stop the broker", dir, bp.control().Path)
	}
	if err != nil {
		return nil, "", nil, fmt.Errorf("ban: %w", err)
	}
	return newStoreBans(st), "the durable store in " + dir, func() { st.Close() }, nil
}

// pendingImport notes the bans file that a broker with the durable store
// imports at its next start.
func (bp *banPlace) pendingImport(where string) ([]guard.Ban, error) {
	if where == bp.file().Path {
		return nil, nil
	}
	bans, err := bp.file().Read()
	if err != nil || len(bans) == 0 {
		return nil, err
	}
	fmt.Fprintf(bp.stdio.Err, "note: %s holds %d bans the broker imports into the store at its next start\n", bp.file().Path, len(bans))
	return bans, nil
}

func init() {
	register(func(stdio Stdio) *cobra.Command {
		bp := &banPlace{stdio: stdio}
		cmd := &cobra.Command{
			Use:   "ban",
			Short: "Manage the dynamic ban list (addresses, client IDs, usernames, certificates)",
			Long: "Manage the broker's ban list. With the broker running, the change goes through its control\n" +
				"socket (DATA_DIR/" + guard.ControlSocketName + ") and takes effect at once: live clients a new ban matches are\n" +
				"disconnected before the command returns. With the broker stopped, it is made where the broker\n" +
				"keeps its bans: its durable store (DATA_DIR/store, or --store), else DATA_DIR/" + guard.BansFileName + ".",
		}
		cmd.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { return bp.readConfig(cmd) }
		f := cmd.PersistentFlags()
		f.StringVarP(&bp.configFile, "config", "c", "", "the broker's configuration `FILE` (YAML or mosquitto.conf): its data_dir, persistence location, defense.bans_file and defense.max_bans are used")
		f.StringVar(&bp.data, "data", "moat-data", "data `DIR` of the broker (holds "+guard.ControlSocketName+", the store or "+guard.BansFileName+")")
		f.StringVar(&bp.storeDir, "store", "", "the broker's durable store `DIR` when it is not DATA/store (persistence_location); used with the broker stopped")
		f.StringVar(&bp.keyFile, "key-file", "", "the store's key `FILE` when it is not STORE/store.key (or set "+envStoreKey+")")
		f.StringVar(&bp.passFile, "passphrase-file", "", "`FILE` holding the store's passphrase (or set "+envStorePassphrase+")")
		cmd.AddCommand(banAddCmd(bp), banListCmd(bp), banRemoveCmd(bp))
		return cmd
	})
}

func banAddCmd(bp *banPlace) *cobra.Command {
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
			how := "in force now in the running broker"
			got, err := bp.control().Add(b)
			switch {
			case err == nil:
				b = got
			case errors.Is(err, guard.ErrNotReplicated):
				return fmt.Errorf("ban: ban %s %w", got.ID, err)
			case !errors.Is(err, guard.ErrNoControl):
				return fmt.Errorf("ban: the running broker refused: %w", err)
			default:
				bs, where, done, err := bp.offline()
				if err != nil {
					return err
				}
				defer done()
				if err := changeBans(bs, func(cur []guard.Ban) ([]guard.Ban, error) {
					if len(cur) >= bp.limit() {
						return nil, fmt.Errorf("ban: the ban list already holds %d bans; remove some first", len(cur))
					}
					return append(cur, b), nil
				}); err != nil {
					return err
				}
				how = "in " + where + "; in force when the broker starts"
			}
			until := "without end"
			if !b.Expires.IsZero() {
				until = "until " + b.Expires.Format(time.RFC3339)
			}
			fmt.Fprintf(bp.stdio.Out, "ban %s added: %s %s %s\n", b.ID, b.Kind, printable(b.Value), until)
			fmt.Fprintf(bp.stdio.Err, "(%s)\n", how)
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

func banListCmd(bp *banPlace) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the bans (those in force in the running broker, else those stored)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bans, err := bp.control().List()
			if errors.Is(err, guard.ErrNoControl) {
				// Said on stderr, so that a script reading the table is
				// not misled: with no broker answering, what is listed is
				// what is stored, not what is in force (a socket a killed
				// broker left behind answers nothing either).
				fmt.Fprintf(bp.stdio.Err, "note: no running broker answers on %s; these are the stored bans, in force from its next start\n",
					bp.control().Path)
				bs, where, done, oerr := bp.offline()
				if oerr != nil {
					return oerr
				}
				defer done()
				if f, ok := bs.(guard.File); ok {
					bans, err = f.Read() // no lock: a list creates nothing
				} else {
					var unlock func()
					if unlock, err = bs.Lock(); err == nil {
						bans, err = bs.Read()
						unlock()
					}
				}
				if err == nil {
					var pending []guard.Ban
					pending, err = bp.pendingImport(where)
					for _, p := range pending {
						if !slices.ContainsFunc(bans, func(b guard.Ban) bool { return b.ID == p.ID }) {
							bans = append(bans, p)
						}
					}
				}
			}
			if err != nil {
				return err
			}
			now := time.Now()
			tw := tabwriter.NewWriter(bp.stdio.Out, 0, 4, 2, ' ', 0)
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

func banRemoveCmd(bp *banPlace) *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a ban (see moat ban list for IDs)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := strings.ToLower(args[0])
			removed, err := bp.control().Remove(id)
			if errors.Is(err, guard.ErrNotReplicated) {
				return fmt.Errorf("ban: ban %s removed %w", removed.ID, err)
			}
			if err != nil && !errors.Is(err, guard.ErrNoControl) {
				return fmt.Errorf("ban: the running broker refused: %w (see moat ban list)", err)
			}
			if err != nil {
				bs, where, done, err := bp.offline()
				if err != nil {
					return err
				}
				defer done()
				if removed, err = removeBan(bs, id); err != nil {
					return err
				}
				if removed.ID == "" && where != bp.file().Path {
					// Not in the store: perhaps in a bans file still to
					// be imported.
					if removed, err = removeBan(bp.file(), id); err != nil {
						return err
					}
				}
				if removed.ID == "" {
					return fmt.Errorf("ban: no ban with ID %q (see moat ban list)", printable(args[0]))
				}
			}
			fmt.Fprintf(bp.stdio.Out, "ban %s removed: %s %s\n", removed.ID, removed.Kind, printable(removed.Value))
			return nil
		},
	}
}

// removeBan removes the ban with ID id from bs and returns it; the zero
// Ban when bs holds none.
func removeBan(bs guard.BanStore, id string) (guard.Ban, error) {
	var removed guard.Ban
	errNone := errors.New("none")
	err := changeBans(bs, func(cur []guard.Ban) ([]guard.Ban, error) {
		out := cur[:0:0]
		for _, b := range cur {
			if b.ID == id {
				removed = b
				continue
			}
			out = append(out, b)
		}
		if removed.ID == "" {
			return nil, errNone
		}
		return out, nil
	})
	if errors.Is(err, errNone) {
		return guard.Ban{}, nil
	}
	return removed, err
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
