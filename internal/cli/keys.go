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

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
	"github.com/moatmq/moat/internal/tlsconf"
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
	writerGrace    time.Duration
	onChange       func(members []string) // keyservice.Config.OnChange
	certs          keyservice.CertChecker // keyservice.Config.Certs
}

func (f *keyStoreFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.data, "data", "moat-data/keys", "key service directory (holds keys.db)")
	cmd.PersistentFlags().StringVar(&f.kekFile, "kek-file", "", "`FILE` holding the 32-byte key-encryption key (binary or hex, mode 0600; create one with: moat keys genkek FILE)")
	cmd.PersistentFlags().StringVar(&f.passphraseFile, "passphrase-file", "", "`FILE` holding the passphrase the KEK is derived from (argon2id); or set "+envKeysPassphrase)
	cmd.PersistentFlags().DurationVar(&f.grace, "grace", keyservice.DefaultGrace, "how long a superseded epoch stays readable")
	cmd.PersistentFlags().DurationVar(&f.writerGrace, "writer-grace", keyservice.DefaultWriterGrace, "how long after an epoch is superseded messages may still be sealed with it (senders and receivers refuse later ones)")
}

func (f *keyStoreFlags) open(logger *slog.Logger) (*keyservice.Service, error) {
	cfg := keyservice.Config{Path: filepath.Join(f.data, "keys.db"), Grace: f.grace, WriterGrace: f.writerGrace, Logger: logger, OnChange: f.onChange, Certs: f.certs}
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

// run returns a command's RunE that opens the key store, calls fn with it
// and closes it. The store's own log is discarded: the administration
// commands print what they did.
func (f *keyStoreFlags) run(fn func(s *keyservice.Service, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		s, err := f.open(slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			return err
		}
		defer s.Close()
		return fn(s, args)
	}
}

func init() { register(newKeysCmd) }

func newKeysCmd(stdio Stdio) *cobra.Command {
	sf := &keyStoreFlags{}
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
	root.AddCommand(
		newKeysRekekCmd(stdio, sf),
		newKeysGenKEKCmd(stdio),
		newKeysGroupCmd(stdio, sf),
		newKeysMemberCmd(stdio, sf),
		newKeysRemoveCmd(stdio, sf, "Same as `moat keys member remove`"),
		newKeysRotateCmd(stdio, sf),
		newKeysStatusCmd(stdio, sf),
		newKeysServe(stdio, sf, slog.New(slog.NewTextHandler(stdio.Err, nil))),
		newKeysFetch(stdio),
	)
	return root
}

func newKeysGenKEKCmd(stdio Stdio) *cobra.Command {
	return &cobra.Command{
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
}

func newKeysGroupCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	group := &cobra.Command{Use: "group", Short: "Create and list key groups"}
	group.AddCommand(newKeysGroupCreateCmd(stdio, sf), newKeysGroupListCmd(stdio, sf))
	return group
}

func newKeysGroupCreateCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	var filter string
	var rotateEvery time.Duration
	cmd := &cobra.Command{
		Use:   "create NAME [--filter FILTER]",
		Short: "Create a key group covering an MQTT topic filter (epoch 1)",
		Long: `create makes a key group with epoch 1. The group covers the topics that
match --filter; without --filter the name itself is the filter, so
"moat keys group create 'factory/+/temp'" names a group by its filter.`,
		Args: cobra.ExactArgs(1),
		RunE: sf.run(func(s *keyservice.Service, args []string) error {
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
	cmd.Flags().StringVar(&filter, "filter", "", "MQTT topic filter the group covers (default: the group name)")
	cmd.Flags().DurationVar(&rotateEvery, "rotate-every", 0, "rotate the epoch on this schedule (0: only on demand)")
	return cmd
}

func newKeysGroupListCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List key groups",
		Args:  cobra.NoArgs,
		RunE: sf.run(func(s *keyservice.Service, args []string) error {
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
}

func newKeysMemberCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	member := &cobra.Command{Use: "member", Short: "Add and remove group members"}
	member.AddCommand(newKeysMemberAddCmd(stdio, sf), newKeysRemoveCmd(stdio, sf, "Remove a member and start a new epoch it cannot read"))
	return member
}

func newKeysMemberAddCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	var role string
	cmd := &cobra.Command{
		Use:   "add GROUP ID --role writer|reader|both",
		Short: "Add a member (a certificate identity) to a group, or change its role",
		Args:  cobra.ExactArgs(2),
		RunE: sf.run(func(s *keyservice.Service, args []string) error {
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
	cmd.Flags().StringVar(&role, "role", "reader", "writer, reader or both")
	return cmd
}

// newKeysRemoveCmd is `moat keys member remove` and, with its own short
// help, its shortcut `moat keys remove`.
func newKeysRemoveCmd(stdio Stdio, sf *keyStoreFlags, short string) *cobra.Command {
	return &cobra.Command{
		Use:   "remove GROUP ID",
		Short: short,
		Args:  cobra.ExactArgs(2),
		RunE: sf.run(func(s *keyservice.Service, args []string) error {
			if err := s.RemoveMember(args[0], args[1]); err != nil {
				return err
			}
			g, err := s.Group(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "%s removed from %s; new epoch %d\n", args[1], args[0], g.Current)
			return nil
		}),
	}
}

func newKeysRotateCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate GROUP",
		Short: "Start a new epoch now; the previous one stays readable for the grace period",
		Args:  cobra.ExactArgs(1),
		RunE: sf.run(func(s *keyservice.Service, args []string) error {
			e, err := s.Rotate(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(stdio.Out, "group %s: epoch %d\n", args[0], e)
			return nil
		}),
	}
}

func newKeysStatusCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status [GROUP]",
		Short: "Show groups, epochs, members and the service's bundle-signing key ID",
		Args:  cobra.MaximumNArgs(1),
		RunE: sf.run(func(s *keyservice.Service, args []string) error {
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
				printKeysGroup(stdio.Out, g)
			}
			revoked, err := s.Revoked()
			if err != nil {
				return err
			}
			for _, r := range revoked {
				fmt.Fprintf(stdio.Out, "\nmember %s removed from %s at %s: certificate %s revoked (%s)\n",
					r.Member, strings.Join(r.Groups, ", "), r.At.UTC().Format(time.RFC3339), r.Serial, r.Detail)
			}
			return nil
		}),
	}
}

// printKeysGroup prints one group of `moat keys status`: its epochs and
// its members.
func printKeysGroup(w io.Writer, g keyservice.GroupInfo) {
	fmt.Fprintf(w, "\ngroup %s (filter %s), current epoch %d, rotated %s, rotate every %s\n",
		g.Name, g.Filter, g.Current, g.LastRotated.UTC().Format(time.RFC3339), keysDuration(g.RotateEvery))
	for _, e := range g.Epochs {
		state := "current"
		if !e.NotAfter.IsZero() {
			state = "readable until " + e.NotAfter.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "  epoch %d  created %s  %s\n", e.Epoch, e.Created.UTC().Format(time.RFC3339), state)
	}
	for _, m := range g.Members {
		reg := "not registered"
		if m.KEM != 0 {
			reg = "registered " + m.KEM.String()
		}
		fmt.Fprintf(w, "  member %s  %s  %s\n", m.ID, m.Role, reg)
	}
}

func newKeysRekekCmd(stdio Stdio, sf *keyStoreFlags) *cobra.Command {
	var newKEKFile string
	cmd := &cobra.Command{
		Use:   "rekek --new-kek-file FILE",
		Short: "Re-encrypt every stored key under a new key-encryption key",
		Long: `rekek unwraps every epoch key and the service signing key with the
current KEK (--kek-file or passphrase) and wraps them under the KEK in
--new-kek-file, in one transaction. Use the new file from then on and keep
the old one until you have checked the service starts with the new one.`,
		Args: cobra.NoArgs,
		RunE: sf.run(func(s *keyservice.Service, args []string) error {
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
	cmd.Flags().StringVar(&newKEKFile, "new-kek-file", "", "file holding the new KEK")
	return cmd
}

// keysCertChecker adapts the listener's tlsconf.Manager, the broker's
// certificate checker (CRLs reloaded on change, OCSP, live watches), to
// keyservice.CertChecker.
type keysCertChecker struct{ m *tlsconf.Manager }

func (c keysCertChecker) VerifyChain(ctx context.Context, peer []*x509.Certificate) ([]*x509.Certificate, error) {
	chain, err := c.m.VerifyChain(ctx, peer)
	return chain, keysRevocationError(err)
}

func (c keysCertChecker) Watch(chain []*x509.Certificate, ended func(revoked bool, detail string)) (func(), error) {
	stop, err := c.m.Watch(chain, func(r tlsconf.Reason) {
		ended(r == tlsconf.ReasonRevoked, "certificate "+r.String())
	})
	return stop, keysRevocationError(err)
}

// keysRevocationError wraps keyservice.ErrRevoked around a revocation.
func keysRevocationError(err error) error {
	var ve *tlsconf.VerifyError
	if errors.As(err, &ve) && ve.Reason == tlsconf.ReasonRevoked {
		return fmt.Errorf("%w: %w", keyservice.ErrRevoked, err)
	}
	return err
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
	var crlFiles []string
	var ocspMode string
	var mf mqttFlags
	cmd := &cobra.Command{
		Use:   "serve --cert FILE --key FILE --client-ca FILE [--mqtt URL]",
		Short: "Serve key registration and bundles over mutual-TLS HTTPS (and publish bundles over MQTT)",
		Long: `serve answers members' registrations and bundle downloads over HTTPS with
mutual TLS, and rotates epochs on their schedules. With --mqtt URL it also
publishes every registered member's bundle, retained and at QoS 1, on the
member's topic $moat/keys/<member>: all of them at start, then each one
whenever it changes (registration, rotation). A bundle is sealed to its
member and signed by the service, so it is safe on any channel; restrict
the topics with broker ACLs as defence in depth.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if certFile == "" || keyFile == "" || clientCA == "" {
				return errors.New("keys serve: --cert, --key and --client-ca are required (members authenticate with client certificates)")
			}
			tcfg := tlsconf.ListenerConfig{
				Name:         "keys " + listen,
				Certificates: []tlsconf.KeyPair{{CertFile: certFile, KeyFile: keyFile}},
				CAFile:       clientCA,
				CRLFiles:     crlFiles,
				Logger:       logger,
			}
			switch ocspMode {
			case "off":
			case "fail-open":
				tcfg.OCSP.Mode = tlsconf.OCSPFailOpen
			case "fail-closed":
				tcfg.OCSP.Mode = tlsconf.OCSPFailClosed
			default:
				return fmt.Errorf("keys serve: --ocsp %q: want off, fail-open or fail-closed", ocspMode)
			}
			mgr, err := tlsconf.New(tcfg)
			if err != nil {
				return fmt.Errorf("keys serve: %w", err)
			}
			defer mgr.Close()
			sf.certs = keysCertChecker{mgr}
			var mqttCfg client.Config
			var changes *bundleChanges
			if mf.url != "" {
				if mqttCfg, err = mf.config(); err != nil {
					return fmt.Errorf("keys serve: %w", err)
				}
				changes = newBundleChanges()
				sf.onChange = changes.add
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
				TLSConfig:         mgr.TLSConfig(),
				ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			rotDone := make(chan struct{})
			go func() { defer close(rotDone); s.Run(ctx, checkEvery) }()
			if changes != nil {
				mqttCfg.Reconnect = client.ReconnectPolicy{Enabled: true, MinDelay: time.Second, MaxDelay: 30 * time.Second}
				mqttCfg.OnConnectionLost = func(_ *client.Client, err error) {
					logger.Warn("keys: MQTT connection lost; reconnecting", "err", err)
				}
				mc, err := client.Dial(ctx, mqttCfg)
				if err != nil {
					ln.Close()
					cancel()
					<-rotDone
					return fmt.Errorf("keys serve: connecting to %s: %w", mf.url, err)
				}
				defer mc.Close()
				pubDone := make(chan struct{})
				go func() {
					defer close(pubDone)
					publishBundlesLoop(ctx, s, mqttPublisher{mc}, changes, logger, 5*time.Second)
				}()
				defer func() {
					<-pubDone
					dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
					mc.Disconnect(dctx)
					dcancel()
				}()
				fmt.Fprintf(stdio.Err, "moat keys: publishing bundles on %s\n", mf.url)
			}
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
	cmd.Flags().StringVar(&listen, "listen", ":8444", "address to listen on (8444, so that moat ca serve can take 8443 on the same host)")
	cmd.Flags().StringVar(&certFile, "cert", "", "server certificate (PEM, chain allowed)")
	cmd.Flags().StringVar(&keyFile, "key", "", "server private key (PEM)")
	cmd.Flags().StringVar(&clientCA, "client-ca", "", "CA certificates that issue member client certificates (PEM)")
	cmd.Flags().DurationVar(&checkEvery, "check-every", time.Minute, "how often scheduled rotations and expired epochs are checked")
	cmd.Flags().StringArrayVar(&crlFiles, "crl", nil, "CRL `FILE` (PEM or DER) of the client CA, reloaded when it changes; repeatable. A member whose certificate is revoked is refused and removed from its groups")
	cmd.Flags().StringVar(&ocspMode, "ocsp", "off", "OCSP checking of member certificates: off, fail-open or fail-closed")
	mf.register(cmd.Flags(), "also publish each member's bundle (retained, QoS 1, on $moat/keys/<member>)")
	return cmd
}

func newKeysFetch(stdio Stdio) *cobra.Command {
	var server, certFile, keyFile, caFile, memberKeyFile, kemName, out, pinFile, dir, memberID string
	var timeout time.Duration
	var mf mqttFlags
	cmd := &cobra.Command{
		Use:   "fetch {--server URL | --mqtt URL} {--dir DIR | --member-key FILE --out FILE} [flags]",
		Short: "Register this member's HPKE key and download its key bundle (HTTPS or MQTT)",
		Long: `fetch over HTTPS (--server) authenticates to the key service with the
member's client certificate, registers the member's HPKE public key (the
private key is created, mode 0600, when the file does not exist), downloads
the member's key bundle, checks its signature and that it decrypts, and
writes it. The service's signing key is pinned: written on first use,
checked on every later fetch.

fetch over MQTT (--mqtt) takes the bundle that "moat keys serve --mqtt"
published retained on the member's topic $moat/keys/<member>, checks it
against the pinned service key and the member key, and writes it when it is
newer than the one held. It does not register: run fetch --server once
first (and again whenever the member key changes).

--dir DIR keeps everything in one member key directory, the one moat pub
--encrypt, moat sub --decrypt and moat ota take with --keys DIR:
DIR/member (the member ID), DIR/member.key, DIR/bundle, DIR/service-key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (server == "") == (mf.url == "") {
				return errors.New("keys fetch: give either --server URL (HTTPS: register and download) or --mqtt URL (take the bundle published on $moat/keys/<member>)")
			}
			if dir != "" {
				if memberKeyFile != "" || out != "" || pinFile != "" {
					return errors.New("keys fetch: --dir sets the files; do not combine it with --member-key, --out or --service-key")
				}
				if err := os.MkdirAll(dir, 0o700); err != nil {
					return fmt.Errorf("keys fetch: %w", err)
				}
				memberKeyFile = filepath.Join(dir, memberKeyName)
				out = filepath.Join(dir, memberBundle)
				pinFile = filepath.Join(dir, memberPinFile)
			}
			if memberKeyFile == "" || out == "" {
				return errors.New("keys fetch: give --dir DIR, or --member-key FILE and --out FILE")
			}
			if pinFile == "" {
				pinFile = out + ".service-key"
			}
			// The member ID: the identity of the client certificate, else
			// --member, else DIR/member.
			var cert tls.Certificate
			if certFile != "" || keyFile != "" {
				var err error
				if cert, err = tls.LoadX509KeyPair(certFile, keyFile); err != nil {
					return fmt.Errorf("keys fetch: loading client certificate: %w", err)
				}
				leaf, err := x509.ParseCertificate(cert.Certificate[0])
				if err != nil {
					return fmt.Errorf("keys fetch: %w", err)
				}
				id := e2e.CertIdentity(leaf)
				if memberID != "" && memberID != id {
					return fmt.Errorf("keys fetch: --member %q differs from the certificate's identity %q", memberID, id)
				}
				memberID = id
			}
			if memberID == "" && dir != "" {
				if b, err := os.ReadFile(filepath.Join(dir, memberIDFile)); err == nil {
					memberID = strings.TrimSpace(string(b))
				}
			}
			var (
				raw []byte
				svc ed25519.PublicKey
				mk  *e2e.MemberKey
				err error
			)
			_, statErr := os.Stat(pinFile)
			pinnedBefore := statErr == nil
			if server != "" {
				if certFile == "" || caFile == "" {
					return errors.New("keys fetch: --server needs --cert, --key (the member's client certificate) and --ca")
				}
				if mk, err = keysMemberKey(memberKeyFile, kemName); err != nil {
					return err
				}
				if raw, svc, err = keysFetchHTTPS(cmd.Context(), server, cert, caFile, mk, pinFile); err != nil {
					return err
				}
			} else {
				if memberID == "" {
					return errors.New("keys fetch: --mqtt needs the member ID: --cert/--key, --member ID, or a --dir written by an earlier fetch --server")
				}
				kb, err := os.ReadFile(memberKeyFile)
				if err != nil {
					return fmt.Errorf("keys fetch: reading member key (register first with `moat keys fetch --server URL`): %w", err)
				}
				mk, err = e2e.ParseMemberKeyPEM(kb)
				clear(kb)
				if err != nil {
					return err
				}
				if svc, err = readServicePin(pinFile); err != nil {
					return err
				}
				// Over TLS, the member's certificate and CA serve the
				// broker connection too unless --mqtt-* says otherwise.
				if mf.secure() {
					if mf.cert == "" && mf.key == "" {
						mf.cert, mf.key = certFile, keyFile
					}
					if mf.cafile == "" {
						mf.cafile = caFile
					}
				}
				if raw, err = keysFetchMQTT(cmd.Context(), &mf, memberID, timeout); err != nil {
					return err
				}
			}
			b, err := e2e.OpenBundle(raw, mk, memberID, svc)
			if err != nil {
				return fmt.Errorf("keys fetch: %w", err)
			}
			if pinnedBefore {
				fmt.Fprintf(stdio.Out, "service key ID %x matches the pin in %s\n", e2e.ServiceKeyID(svc), pinFile)
			} else {
				fmt.Fprintf(stdio.Out, "service key ID %x pinned in %s: compare it with the ID `moat keys status` prints on the key service\n", e2e.ServiceKeyID(svc), pinFile)
			}
			if old, err := os.ReadFile(out); err == nil {
				if ob, err := e2e.OpenBundle(old, mk, memberID, svc); err == nil && ob.Serial >= b.Serial {
					fmt.Fprintf(stdio.Out, "member %s: bundle %d is not newer than %s (bundle %d); kept\n", memberID, b.Serial, out, ob.Serial)
					return nil
				}
			}
			if err := writeFileSynced(out, raw, 0o600); err != nil {
				return err
			}
			if dir != "" {
				if err := writeFileSynced(filepath.Join(dir, memberIDFile), []byte(memberID+"\n"), 0o644); err != nil {
					return err
				}
			}
			fmt.Fprintf(stdio.Out, "member %s: bundle %d with %d epoch keys and %d sender keys written to %s\n", memberID, b.Serial, len(b.EpochKeys), len(b.SenderKeys), out)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&server, "server", "", "key service URL, e.g. https://keys.example:8444")
	fl.StringVar(&certFile, "cert", "", "member client certificate (PEM); its identity is the member ID")
	fl.StringVar(&keyFile, "key", "", "member client private key (PEM)")
	fl.StringVar(&caFile, "ca", "", "CA that issued the key service's certificate (PEM); also the broker's for --mqtt unless --mqtt-cafile")
	fl.StringVar(&dir, "dir", "", "member key `DIR`: member ID, member key, bundle and pinned service key (for --keys DIR of pub, sub and ota)")
	fl.StringVar(&memberKeyFile, "member-key", "", "member HPKE private key file (created when absent)")
	fl.StringVar(&kemName, "kem", "", "KEM of a new member key: mlkem768x25519 (default), mlkem768p256 (default in FIPS 140-3 mode), mlkem1024p384, x25519 or p256")
	fl.StringVar(&out, "out", "", "file to write the key bundle to")
	fl.StringVar(&pinFile, "service-key", "", "pinned service signing key (default OUT.service-key)")
	fl.StringVar(&memberID, "member", "", "member ID for --mqtt without --cert (default: from --dir)")
	fl.DurationVar(&timeout, "timeout", 30*time.Second, "--mqtt: how long to wait for the bundle")
	mf.register(fl, "take the bundle")
	return cmd
}

// keysFetchHTTPS pins the service key, registers mk and downloads the
// bundle.
func keysFetchHTTPS(ctx context.Context, server string, cert tls.Certificate, caFile string, mk *e2e.MemberKey, pinFile string) ([]byte, ed25519.PublicKey, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("keys fetch: reading CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, fmt.Errorf("keys fetch: %s holds no PEM certificate", caFile)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	cl := &keyservice.Client{BaseURL: strings.TrimRight(server, "/"), HTTPClient: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
	svc, err := cl.ServiceKey(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := keysCheckPin(pinFile, svc); err != nil {
		return nil, nil, err
	}
	if err := cl.Register(ctx, mk.Public()); err != nil {
		return nil, nil, err
	}
	raw, err := cl.Bundle(ctx)
	return raw, svc, err
}

// keysFetchMQTT waits for the retained bundle on the member's topic.
func keysFetchMQTT(ctx context.Context, mf *mqttFlags, member string, timeout time.Duration) ([]byte, error) {
	cfg, err := mf.config()
	if err != nil {
		return nil, fmt.Errorf("keys fetch: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("keys fetch: connecting to %s: %w", mf.url, err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.Disconnect(dctx)
		dcancel()
	}()
	topic := keyservice.BundleTopic(member)
	codes, err := c.Subscribe(ctx, client.Subscription{Filter: topic, QoS: 1})
	if err != nil {
		return nil, fmt.Errorf("keys fetch: subscribing to %s: %w", topic, err)
	}
	if len(codes) == 1 && codes[0].IsError() {
		return nil, fmt.Errorf("keys fetch: subscription to %s refused: %s (hint: the broker's ACL must let the member read its bundle topic)", topic, codes[0])
	}
	for {
		select {
		case m, ok := <-c.Messages():
			if !ok {
				return nil, fmt.Errorf("keys fetch: %w", c.Err())
			}
			if m.Topic == topic && len(m.Payload) > 0 {
				return m.Payload, nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("keys fetch: no bundle on %s within %s (hint: is `moat keys serve --mqtt` running, and has the member registered with `moat keys fetch --server`?)", topic, timeout)
		}
	}
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
	if err := writeFileSynced(path, p, 0o600); err != nil {
		return nil, err
	}
	return mk, nil
}

func keysCheckPin(path string, svc ed25519.PublicKey) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return writeFileSynced(path, pem.EncodeToMemory(&pem.Block{Type: "MOAT KEY SERVICE KEY", Bytes: svc}), 0o644)
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
