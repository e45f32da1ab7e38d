package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/spf13/cobra"
)

// envKeysPassphrase holds the key service passphrase when no file is given.
const envKeysPassphrase = "MOAT_KEYS_PASSPHRASE"

// keyStoreFlags open the key service store.
type keyStoreFlags struct {
	data           string
	kekFile        string
	passphraseFile string
	grace          time.Duration
}

func (f *keyStoreFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.data, "data", "moat-data/keys", "key service directory (holds keys.db)")
	cmd.PersistentFlags().StringVar(&f.kekFile, "kek-file", "", "`FILE` holding the 32-byte key-encryption key (binary or hex, mode 0600; create one with: moat keys genkek FILE)")
	cmd.PersistentFlags().StringVar(&f.passphraseFile, "passphrase-file", "", "`FILE` holding the passphrase the KEK is derived from (argon2id); or set "+envKeysPassphrase)
	cmd.PersistentFlags().DurationVar(&f.grace, "grace", keyservice.DefaultGrace, "how long a superseded epoch stays readable")
}

func (f *keyStoreFlags) open(logger *slog.Logger) (*keyservice.Service, error) {
	cfg := keyservice.Config{Path: filepath.Join(f.data, "keys.db"), Grace: f.grace, Logger: logger}
	pass := os.Getenv(envKeysPassphrase)
	switch {
	case f.kekFile != "" && (f.passphraseFile != "" || pass != ""):
		return nil, errors.New("keys: give either --kek-file or a passphrase (--passphrase-file or " + envKeysPassphrase + "), not both")
	case f.kekFile != "":
		kek, err := keyservice.LoadKEKFile(f.kekFile)
		if err != nil {
			return nil, err
		}
		cfg.KEK = kek
	case f.passphraseFile != "":
		b, err := os.ReadFile(f.passphraseFile)
		if err != nil {
			return nil, fmt.Errorf("keys: reading passphrase file: %w", err)
		}
		cfg.Passphrase = []byte(strings.TrimRight(string(b), "\r\n"))
		clear(b)
	case pass != "":
		cfg.Passphrase = []byte(pass)
	default:
		return nil, errors.New("keys: no key-encryption key: give --kek-file FILE (create one with `moat keys genkek FILE`) or --passphrase-file FILE or set " + envKeysPassphrase)
	}
	if err := os.MkdirAll(f.data, 0o700); err != nil {
		return nil, fmt.Errorf("keys: %w", err)
	}
	s, err := keyservice.Open(cfg)
	clear(cfg.Passphrase)
	return s, err
}

func init() {
	register(func(stdio Stdio) *cobra.Command {
		var sf keyStoreFlags
		logger := slog.New(slog.NewTextHandler(stdio.Err, nil))
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		withStore := func(fn func(s *keyservice.Service, args []string) error) func(*cobra.Command, []string) error {
			return func(cmd *cobra.Command, args []string) error {
				s, err := sf.open(quiet)
				if err != nil {
					return err
				}
				defer s.Close()
				return fn(s, args)
			}
		}
		root := &cobra.Command{
			Use:   "keys",
			Short: "End-to-end key groups, members, rotation and the key service",
			Long: `moat keys manages end-to-end encryption key groups. A group covers an
MQTT topic filter, has writer and reader members (certificate identities)
and numbered epochs. Epoch keys are stored wrapped under a key-encryption
key (KEK) and delivered to members sealed with HPKE (ML-KEM-768 + X25519 by
default). The store is a single file, DIR/keys.db: the administration
commands open it directly, so stop "moat keys serve" before running them.`,
		}
		sf.register(root)

		genkek := &cobra.Command{
			Use:   "genkek FILE",
			Short: "Create a random key-encryption key file (mode 0600)",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := keyservice.GenerateKEKFile(args[0]); err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "wrote %s; keep a backup: without it the key store cannot be read\n", args[0])
				return nil
			},
		}

		group := &cobra.Command{Use: "group", Short: "Create and list key groups"}
		var filter string
		var rotateEvery time.Duration
		create := &cobra.Command{
			Use:   "create NAME [--filter FILTER]",
			Short: "Create a key group covering an MQTT topic filter (epoch 1)",
			Long: `create makes a key group with epoch 1. The group covers the topics that
match --filter; without --filter the name itself is the filter, so
"moat keys group create 'factory/+/temp'" names a group by its filter.`,
			Args: cobra.ExactArgs(1),
			RunE: withStore(func(s *keyservice.Service, args []string) error {
				filter := filter
				if filter == "" {
					filter = args[0]
				}
				if err := s.CreateGroup(args[0], filter, rotateEvery); err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "group %s created for %s, epoch 1\n", args[0], filter)
				return nil
			}),
		}
		create.Flags().StringVar(&filter, "filter", "", "MQTT topic filter the group covers (default: the group name)")
		create.Flags().DurationVar(&rotateEvery, "rotate-every", 0, "rotate the epoch on this schedule (0: only on demand)")
		list := &cobra.Command{
			Use:   "list",
			Short: "List key groups",
			Args:  cobra.NoArgs,
			RunE: withStore(func(s *keyservice.Service, args []string) error {
				gs, err := s.Groups()
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "GROUP\tFILTER\tEPOCH\tMEMBERS\tROTATE-EVERY")
				for _, g := range gs {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", g.Name, g.Filter, g.Current, len(g.Members), keysDuration(g.RotateEvery))
				}
				return tw.Flush()
			}),
		}
		group.AddCommand(create, list)

		member := &cobra.Command{Use: "member", Short: "Add and remove group members"}
		var role string
		add := &cobra.Command{
			Use:   "add GROUP ID --role writer|reader|both",
			Short: "Add a member (a certificate identity) to a group, or change its role",
			Args:  cobra.ExactArgs(2),
			RunE: withStore(func(s *keyservice.Service, args []string) error {
				r, err := keyservice.ParseRole(role)
				if err != nil {
					return err
				}
				if err := s.AddMember(args[0], args[1], r); err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "%s is a %s of %s\n", args[1], r, args[0])
				return nil
			}),
		}
		add.Flags().StringVar(&role, "role", "reader", "writer, reader or both")
		removeRun := withStore(func(s *keyservice.Service, args []string) error {
			if err := s.RemoveMember(args[0], args[1]); err != nil {
				return err
			}
			g, err := s.Group(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "%s removed from %s; new epoch %d\n", args[1], args[0], g.Current)
			return nil
		})
		remove := &cobra.Command{
			Use:   "remove GROUP ID",
			Short: "Remove a member and start a new epoch it cannot read",
			Args:  cobra.ExactArgs(2),
			RunE:  removeRun,
		}
		member.AddCommand(add, remove)
		topRemove := &cobra.Command{
			Use:   "remove GROUP ID",
			Short: "Same as `moat keys member remove`",
			Args:  cobra.ExactArgs(2),
			RunE:  removeRun,
		}

		rotate := &cobra.Command{
			Use:   "rotate GROUP",
			Short: "Start a new epoch now; the previous one stays readable for the grace period",
			Args:  cobra.ExactArgs(1),
			RunE: withStore(func(s *keyservice.Service, args []string) error {
				e, err := s.Rotate(args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "group %s: epoch %d\n", args[0], e)
				return nil
			}),
		}

		status := &cobra.Command{
			Use:   "status [GROUP]",
			Short: "Show groups, epochs, members and the service's bundle-signing key ID",
			Args:  cobra.MaximumNArgs(1),
			RunE: withStore(func(s *keyservice.Service, args []string) error {
				var gs []keyservice.GroupInfo
				if len(args) == 1 {
					g, err := s.Group(args[0])
					if err != nil {
						return err
					}
					gs = append(gs, *g)
				} else {
					var err error
					if gs, err = s.Groups(); err != nil {
						return err
					}
				}
				fmt.Fprintf(stdio.Out, "service key ID: %x\n", e2e.ServiceKeyID(s.PublicKey()))
				for _, g := range gs {
					fmt.Fprintf(stdio.Out, "\ngroup %s (filter %s), current epoch %d, rotated %s, rotate every %s\n",
						g.Name, g.Filter, g.Current, g.LastRotated.UTC().Format(time.RFC3339), keysDuration(g.RotateEvery))
					for _, e := range g.Epochs {
						state := "current"
						if !e.NotAfter.IsZero() {
							state = "readable until " + e.NotAfter.UTC().Format(time.RFC3339)
						}
						fmt.Fprintf(stdio.Out, "  epoch %d  created %s  %s\n", e.Epoch, e.Created.UTC().Format(time.RFC3339), state)
					}
					for _, m := range g.Members {
						reg := "not registered"
						if m.KEM != 0 {
							reg = "registered " + m.KEM.String()
						}
						fmt.Fprintf(stdio.Out, "  member %s  %s  %s\n", m.ID, m.Role, reg)
					}
				}
				return nil
			}),
		}

		var newKEKFile string
		rekek := &cobra.Command{
			Use:   "rekek --new-kek-file FILE",
			Short: "Re-encrypt every stored key under a new key-encryption key",
			Long: `rekek unwraps every epoch key and the service signing key with the
current KEK (--kek-file or passphrase) and wraps them under the KEK in
--new-kek-file, in one transaction. Use the new file from then on and keep
the old one until you have checked the service starts with the new one.`,
			Args: cobra.NoArgs,
			RunE: withStore(func(s *keyservice.Service, args []string) error {
				if newKEKFile == "" {
					return errors.New("keys rekek: --new-kek-file is required (create one with `moat keys genkek FILE`)")
				}
				nk, err := keyservice.LoadKEKFile(newKEKFile)
				if err != nil {
					return err
				}
				if err := s.RewrapKEK(nk); err != nil {
					return err
				}
				fmt.Fprintf(stdio.Out, "all keys re-encrypted under %s; use --kek-file %s from now on\n", newKEKFile, newKEKFile)
				return nil
			}),
		}
		rekek.Flags().StringVar(&newKEKFile, "new-kek-file", "", "file holding the new KEK")

		root.AddCommand(rekek, genkek, group, member, topRemove, rotate, status, newKeysServe(stdio, &sf, logger), newKeysFetch(stdio))
		return root
	})
}

func keysDuration(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.String()
}

func newKeysServe(stdio Stdio, sf *keyStoreFlags, logger *slog.Logger) *cobra.Command {
	var listen, certFile, keyFile, clientCA string
	var checkEvery time.Duration
	cmd := &cobra.Command{
		Use:   "serve --cert FILE --key FILE --client-ca FILE",
		Short: "Serve key registration and bundles over mutual-TLS HTTPS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if certFile == "" || keyFile == "" || clientCA == "" {
				return errors.New("keys serve: --cert, --key and --client-ca are required (members authenticate with client certificates)")
			}
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("keys serve: loading server certificate: %w", err)
			}
			caPEM, err := os.ReadFile(clientCA)
			if err != nil {
				return fmt.Errorf("keys serve: reading client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(caPEM) {
				return fmt.Errorf("keys serve: %s holds no PEM certificate", clientCA)
			}
			s, err := sf.open(logger)
			if err != nil {
				return err
			}
			defer s.Close()
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("keys serve: %w", err)
			}
			srv := &http.Server{
				Handler:           s.Handler(),
				ReadHeaderTimeout: 10 * time.Second,
				ReadTimeout:       30 * time.Second,
				WriteTimeout:      30 * time.Second,
				TLSConfig: &tls.Config{
					Certificates: []tls.Certificate{cert},
					ClientAuth:   tls.RequireAndVerifyClientCert,
					ClientCAs:    pool,
					MinVersion:   tls.VersionTLS12,
				},
				ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			rotDone := make(chan struct{})
			go func() { defer close(rotDone); s.Run(ctx, checkEvery) }()
			fmt.Fprintf(stdio.Err, "moat keys: serving on https://%s (service key ID %x)\n", ln.Addr(), e2e.ServiceKeyID(s.PublicKey()))
			errc := make(chan error, 1)
			go func() { errc <- srv.ServeTLS(ln, "", "") }()
			select {
			case err = <-errc:
			case <-ctx.Done():
				sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
				err = srv.Shutdown(sctx)
				scancel()
				<-errc
			}
			cancel()
			<-rotDone
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":8443", "address to listen on")
	cmd.Flags().StringVar(&certFile, "cert", "", "server certificate (PEM, chain allowed)")
	cmd.Flags().StringVar(&keyFile, "key", "", "server private key (PEM)")
	cmd.Flags().StringVar(&clientCA, "client-ca", "", "CA certificates that issue member client certificates (PEM)")
	cmd.Flags().DurationVar(&checkEvery, "check-every", time.Minute, "how often scheduled rotations and expired epochs are checked")
	return cmd
}

func newKeysFetch(stdio Stdio) *cobra.Command {
	var server, certFile, keyFile, caFile, memberKeyFile, kemName, out, pinFile string
	cmd := &cobra.Command{
		Use:   "fetch --server URL --cert FILE --key FILE --ca FILE --member-key FILE --out FILE",
		Short: "Register this member's HPKE key and download its key bundle",
		Long: `fetch authenticates to the key service with the member's client
certificate, registers the member's HPKE public key (the private key is
created in --member-key, mode 0600, when the file does not exist), downloads
the member's key bundle, checks its signature and that it decrypts, and
writes it to --out. The service's signing key is pinned in --service-key:
written on first use, checked on every later fetch.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			for name, v := range map[string]string{"--server": server, "--cert": certFile, "--key": keyFile, "--ca": caFile, "--member-key": memberKeyFile, "--out": out} {
				if v == "" {
					return fmt.Errorf("keys fetch: %s is required", name)
				}
			}
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("keys fetch: loading client certificate: %w", err)
			}
			leaf, err := x509.ParseCertificate(cert.Certificate[0])
			if err != nil {
				return fmt.Errorf("keys fetch: %w", err)
			}
			id := e2e.CertIdentity(leaf)
			caPEM, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("keys fetch: reading CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(caPEM) {
				return fmt.Errorf("keys fetch: %s holds no PEM certificate", caFile)
			}
			mk, err := keysMemberKey(memberKeyFile, kemName)
			if err != nil {
				return err
			}
			tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}}
			defer tr.CloseIdleConnections()
			cl := &keyservice.Client{BaseURL: strings.TrimRight(server, "/"), HTTPClient: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
			ctx := cmd.Context()
			svc, err := cl.ServiceKey(ctx)
			if err != nil {
				return err
			}
			if pinFile == "" {
				pinFile = out + ".service-key"
			}
			if err := keysCheckPin(pinFile, svc); err != nil {
				return err
			}
			if err := cl.Register(ctx, mk.Public()); err != nil {
				return err
			}
			raw, err := cl.Bundle(ctx)
			if err != nil {
				return err
			}
			b, err := e2e.OpenBundle(raw, mk, id, svc)
			if err != nil {
				return fmt.Errorf("keys fetch: %w", err)
			}
			if err := keysWriteFile(out, raw, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "member %s: bundle %d with %d epoch keys and %d sender keys written to %s\n", id, b.Serial, len(b.EpochKeys), len(b.SenderKeys), out)
			return nil
		},
	}
	cmd.Flags().StringVar(&server, "server", "", "key service URL, e.g. https://keys.example:8443")
	cmd.Flags().StringVar(&certFile, "cert", "", "member client certificate (PEM); its identity is the member ID")
	cmd.Flags().StringVar(&keyFile, "key", "", "member client private key (PEM)")
	cmd.Flags().StringVar(&caFile, "ca", "", "CA that issued the key service's certificate (PEM)")
	cmd.Flags().StringVar(&memberKeyFile, "member-key", "", "member HPKE private key file (created when absent)")
	cmd.Flags().StringVar(&kemName, "kem", "mlkem768x25519", "KEM of a new member key: mlkem768x25519, x25519 or p256")
	cmd.Flags().StringVar(&out, "out", "", "file to write the key bundle to")
	cmd.Flags().StringVar(&pinFile, "service-key", "", "pinned service signing key (default OUT.service-key)")
	return cmd
}

func keysMemberKey(path, kemName string) (*e2e.MemberKey, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		return e2e.ParseMemberKeyPEM(data)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("keys: reading member key: %w", err)
	}
	kem, err := e2e.ParseKEM(kemName)
	if err != nil {
		return nil, err
	}
	mk, err := e2e.GenerateMemberKey(kem)
	if err != nil {
		return nil, err
	}
	p, err := mk.MarshalPEM()
	if err != nil {
		return nil, err
	}
	if err := keysWriteFile(path, p, 0o600); err != nil {
		return nil, err
	}
	return mk, nil
}

func keysCheckPin(path string, svc ed25519.PublicKey) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return keysWriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "MOAT KEY SERVICE KEY", Bytes: svc}), 0o644)
	}
	if err != nil {
		return fmt.Errorf("keys: reading pinned service key: %w", err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil || !ed25519.PublicKey(blk.Bytes).Equal(svc) {
		return fmt.Errorf("keys: the key service's signing key (ID %x) differs from the one pinned in %s; if the service was rebuilt on purpose, delete the pin file", e2e.ServiceKeyID(svc), path)
	}
	return nil
}

func keysWriteFile(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("keys: writing %s: %w", path, err)
	}
	return nil
}

// keysLoadKeyring builds a member's keyring from the files `moat keys
// fetch` writes: the member key, the bundle and the pinned service key.
// member is the member ID (the identity of its certificate). pub --encrypt
// and sub --decrypt use it.
func keysLoadKeyring(memberKeyFile, bundleFile, pinFile, member string) (*e2e.Keyring, error) {
	kb, err := os.ReadFile(memberKeyFile)
	if err != nil {
		return nil, fmt.Errorf("keys: reading member key: %w", err)
	}
	mk, err := e2e.ParseMemberKeyPEM(kb)
	clear(kb)
	if err != nil {
		return nil, err
	}
	if pinFile == "" {
		pinFile = bundleFile + ".service-key"
	}
	pb, err := os.ReadFile(pinFile)
	if err != nil {
		return nil, fmt.Errorf("keys: reading pinned service key (run `moat keys fetch` first): %w", err)
	}
	blk, _ := pem.Decode(pb)
	if blk == nil || len(blk.Bytes) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("keys: %s is not a pinned service key", pinFile)
	}
	raw, err := os.ReadFile(bundleFile)
	if err != nil {
		return nil, fmt.Errorf("keys: reading bundle: %w", err)
	}
	b, err := e2e.OpenBundle(raw, mk, member, ed25519.PublicKey(blk.Bytes))
	if err != nil {
		return nil, err
	}
	ring := &e2e.Keyring{}
	if err := ring.ApplyBundle(b); err != nil {
		return nil, err
	}
	return ring, nil
}
