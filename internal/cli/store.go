package cli

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/store"
)

// Environment variables that carry store keys: key material never goes on
// the command line, where other local users can read it.
const (
	envStoreKey           = "MOAT_STORE_KEY"            // 64 hex digits: the KEK
	envStorePassphrase    = "MOAT_STORE_PASSPHRASE"     // a passphrase the KEK is derived from
	envStoreNewKey        = "MOAT_STORE_NEW_KEY"        // rekey: the new KEK
	envStoreNewPassphrase = "MOAT_STORE_NEW_PASSPHRASE" // rekey: the new passphrase
)

// storeFlags locate a store and its key.
type storeFlags struct {
	dir            string
	keyFile        string
	passphraseFile string
	passphrase     bool // prompt (terminal) or first line of stdin
}

func (f *storeFlags) register(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	p.StringVar(&f.dir, "data", "moat-data/store", "store `DIR` (holds store.db, store.counter and by default store.key)")
	p.StringVar(&f.keyFile, "key-file", "", "`FILE` holding the key-encryption key (32 bytes or 64 hex digits, mode 0600; default DIR/store.key), or set "+envStoreKey)
	p.StringVar(&f.passphraseFile, "passphrase-file", "", "`FILE` holding the passphrase the key-encryption key is derived from, or set "+envStorePassphrase)
	p.BoolVar(&f.passphrase, "passphrase", false, "read the passphrase from the terminal (or the first line of standard input)")
}

// config builds the store configuration; exactly one key source applies.
func (f *storeFlags) config(stdio Stdio) (store.Config, error) {
	cfg := store.Config{Dir: f.dir}
	kek, pass, err := keySource(stdio, f.keyFile, envStoreKey, f.passphraseFile, envStorePassphrase, f.passphrase, "")
	if err != nil {
		return cfg, err
	}
	cfg.KEK, cfg.Passphrase = kek, pass
	if kek == nil && pass == nil {
		cfg.KeyFile = filepath.Join(f.dir, store.KeyFile)
	}
	return cfg, nil
}

// keySource reads at most one of: a key file, a hex key in envKey, a
// passphrase file, a passphrase in envPass, a prompted passphrase. None
// gives (nil, nil): the store's default key file.
func keySource(stdio Stdio, keyFile, envKey, passFile, envPass string, prompt bool, what string) (keyservice.KEKBackend, []byte, error) {
	var set []string
	if keyFile != "" {
		set = append(set, "--"+what+"key-file")
	}
	if os.Getenv(envKey) != "" {
		set = append(set, envKey)
	}
	if passFile != "" {
		set = append(set, "--"+what+"passphrase-file")
	}
	if os.Getenv(envPass) != "" {
		set = append(set, envPass)
	}
	if prompt {
		set = append(set, "--"+what+"passphrase")
	}
	if len(set) > 1 {
		return nil, nil, fmt.Errorf("store: give one key source, not %s", strings.Join(set, " and "))
	}
	switch {
	case keyFile != "":
		if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) && what == "new-" {
			if err := keyservice.GenerateKEKFile(keyFile); err != nil {
				return nil, nil, err
			}
			fmt.Fprintf(stdio.Err, "created key file %s (mode 0600)\n", keyFile)
		}
		k, err := keyservice.LoadKEKFile(keyFile)
		return k, nil, err
	case os.Getenv(envKey) != "":
		b, err := hex.DecodeString(strings.TrimSpace(os.Getenv(envKey)))
		defer clear(b)
		if err != nil || len(b) != 32 {
			return nil, nil, fmt.Errorf("store: %s must hold 64 hex digits (a 32-byte key)", envKey)
		}
		k, err := keyservice.NewLocalKEK(b)
		return k, nil, err
	case passFile != "":
		b, err := os.ReadFile(passFile)
		if err != nil {
			return nil, nil, fmt.Errorf("store: reading passphrase file: %w", err)
		}
		p := bytes.TrimRight(b, "\r\n")
		if len(p) == 0 {
			return nil, nil, fmt.Errorf("store: passphrase file %s is empty", passFile)
		}
		return nil, p, nil
	case os.Getenv(envPass) != "":
		return nil, []byte(os.Getenv(envPass)), nil
	case prompt:
		p, err := promptPassphrase(stdio, "Store "+what+"passphrase: ")
		return nil, p, err
	}
	return nil, nil, nil
}

// promptPassphrase reads a passphrase without echo from a terminal, or
// the first line of a non-terminal standard input.
func promptPassphrase(stdio Stdio, label string) ([]byte, error) {
	if f, ok := stdio.In.(*os.File); ok && isTerminal(f) {
		fmt.Fprint(stdio.Err, label)
		p, err := readNoEcho(f)
		fmt.Fprintln(stdio.Err)
		if err == nil && len(p) == 0 {
			err = errors.New("store: empty passphrase")
		}
		return p, err
	}
	// One byte at a time, so that a second passphrase (rekey) is left for
	// the next read.
	var line []byte
	var err error
	for b := make([]byte, 1); len(line) < 4096; {
		var n int
		n, err = stdio.In.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
		}
		if err != nil {
			break
		}
	}
	p := bytes.TrimRight(line, "\r")
	if len(p) == 0 {
		return nil, fmt.Errorf("store: no passphrase on standard input (%v)", err)
	}
	return p, nil
}

// storeSubcommands adds subcommands of `moat store` kept in files of
// their own; they share the store flags.
var storeSubcommands []func(Stdio, *storeFlags) *cobra.Command

func init() {
	register(func(stdio Stdio) *cobra.Command {
		var f storeFlags
		root := &cobra.Command{
			Use:   "store",
			Short: "Check, compact, export and rekey the broker's durable store",
			Long: `The store keeps persistent sessions, queued and in-flight messages, retained
messages and pending wills, every record sealed with AES-256-GCM. Its data key is
wrapped by a key-encryption key: DIR/store.key by default, or --key-file,
` + envStoreKey + ` (64 hex digits), or a passphrase (--passphrase-file,
` + envStorePassphrase + `, --passphrase). Stop the broker first: the store is
opened exclusively. See docs/durability.md.`,
		}
		f.register(root)
		root.AddCommand(&cobra.Command{
			Use:   "verify",
			Short: "Decrypt and check every record; exit 1 on any problem",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg, err := f.config(stdio)
				if err != nil {
					return err
				}
				rep, err := store.Verify(cfg)
				if err != nil {
					return err
				}
				if rep.Counter > 0 {
					fmt.Fprintf(stdio.Out, "commit %d, %d records\n", rep.Counter, rep.Records)
				}
				kinds := make([]string, 0, len(rep.Counts))
				for k := range rep.Counts {
					kinds = append(kinds, k)
				}
				sort.Strings(kinds)
				for _, k := range kinds {
					fmt.Fprintf(stdio.Out, "  %-13s %d\n", k, rep.Counts[k])
				}
				for _, p := range rep.Problems {
					fmt.Fprintf(stdio.Out, "problem: %s\n", p)
				}
				if len(rep.Problems) > 0 {
					return &exitError{code: 1, err: fmt.Errorf("store: %d problem(s) found in %s", len(rep.Problems), cfg.Dir)}
				}
				fmt.Fprintln(stdio.Out, "ok")
				return nil
			},
		})
		root.AddCommand(&cobra.Command{
			Use:   "compact",
			Short: "Copy the store into a new file without free pages and swap it in atomically",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg, err := f.config(stdio)
				if err != nil {
					return err
				}
				before, after, err := store.Compact(cfg)
				if err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "compacted %s: %d → %d bytes\n", cfg.Dir, before, after)
				return nil
			},
		})
		root.AddCommand(&cobra.Command{
			Use:   "export",
			Short: "Decrypt every record to JSON lines on standard output (payloads in base64)",
			Long: `Export writes one JSON object per record: {"kind": ..., "record": {...}}.
The output holds the decrypted data (payloads, topics, client IDs): treat it
as the secret it is.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg, err := f.config(stdio)
				if err != nil {
					return err
				}
				return store.Export(cfg, stdio.Out)
			},
		})
		var newKeyFile, newPassFile string
		var newPass bool
		rekey := &cobra.Command{
			Use:   "rekey",
			Short: "Re-seal every record under a new data key, optionally under a new key-encryption key",
			Long: `Rekey decrypts every record and seals it under a fresh data key in a new file,
then swaps the file in. Without --new-* options the key-encryption key stays;
--new-key-file FILE (created if missing), ` + envStoreNewKey + `,
--new-passphrase-file FILE, ` + envStoreNewPassphrase + ` or --new-passphrase
change it. Configure the broker with the new key before it starts again.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				cfg, err := f.config(stdio)
				if err != nil {
					return err
				}
				kek, pass, err := keySource(stdio, newKeyFile, envStoreNewKey, newPassFile, envStoreNewPassphrase, newPass, "new-")
				if err != nil {
					return err
				}
				defer clear(pass)
				if err := store.Rekey(cfg, store.NewKey{KEK: kek, Passphrase: pass}); err != nil {
					return err
				}
				switch {
				case kek != nil || pass != nil:
					fmt.Fprintf(stdio.Out, "rekeyed %s: new data key under the new key-encryption key\n", cfg.Dir)
				default:
					fmt.Fprintf(stdio.Out, "rekeyed %s: new data key\n", cfg.Dir)
				}
				return nil
			},
		}
		rekey.Flags().StringVar(&newKeyFile, "new-key-file", "", "`FILE` with the new key-encryption key (created, mode 0600, if missing)")
		rekey.Flags().StringVar(&newPassFile, "new-passphrase-file", "", "`FILE` with the new passphrase")
		rekey.Flags().BoolVar(&newPass, "new-passphrase", false, "read the new passphrase from the terminal (or standard input)")
		root.AddCommand(rekey)
		for _, sub := range storeSubcommands {
			root.AddCommand(sub(stdio, &f))
		}
		return root
	})
}
