package cli

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moatmq/moat/internal/pki"
)

func init() { register(newEnrollCmd) }

func newEnrollCmd(stdio Stdio) *cobra.Command {
	var (
		server, caFile, id, token, tokenFile, out, alg string
		authCert, authKey                              string
		uris                                           []string
		renew                                          bool
	)
	c := &cobra.Command{
		Use:   "enroll",
		Short: "Get a device certificate from a Moat CA over EST, and keep it renewed",
		Long: `moat enroll is the device side of Moat's PKI. It generates a key locally
(the key never leaves the device), sends a certificate request to the EST
server (moat ca serve --https) and writes PREFIX.pem and PREFIX.key (0600).

The first enrollment is authorized by a one-time bootstrap token from
"moat ca token create ID". Pass it in a file (--token-file) or in the
environment (MOAT_ENROLL_TOKEN): command-line arguments are visible to other
users of the machine, so --token is accepted but discouraged. A manufacturer
certificate (--auth-cert/--auth-key) can authorize it instead.

With --renew, moat enroll keeps running and renews the certificate with a new
key, authorized by the current certificate, after two thirds of its lifetime.
An existing, unexpired PREFIX.pem is renewed rather than enrolled again.`,
		Example: `  MOAT_ENROLL_TOKEN=$(cat token) moat enroll --server https://ca.example.com:8443 \
      --ca ca.pem --id sensor-042 --out /etc/moat/device --renew`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			if server == "" {
				errs = append(errs, errors.New("--server URL is required (https://host:port of moat ca serve --https)"))
			}
			if out == "" {
				errs = append(errs, errors.New("--out PREFIX is required"))
			}
			if caFile == "" {
				errs = append(errs, errors.New("--ca FILE is required (the CA's ca.pem)"))
			}
			a, err := pki.ParseKeyAlgorithm(alg)
			errs = append(errs, err)
			var us []*url.URL
			for _, s := range uris {
				u, err := url.Parse(s)
				if err != nil || u.Scheme == "" {
					errs = append(errs, fmt.Errorf("--uri %q is not an absolute URI", s))
					continue
				}
				us = append(us, u)
			}
			if err := errors.Join(errs...); err != nil {
				return fmt.Errorf("enroll: %w", err)
			}
			roots, err := pki.LoadCertificatesFile(caFile)
			if err != nil {
				return fmt.Errorf("enroll: --ca: %w", err)
			}
			pool := x509.NewCertPool()
			for _, r := range roots {
				pool.AddCert(r)
			}
			e := &pki.Enroller{
				Client:       &pki.ESTClient{Server: server, Roots: pool},
				ID:           id,
				URIs:         us,
				KeyAlgorithm: a,
				Prefix:       out,
				Logger:       caLogger(stdio, true),
			}
			if authCert != "" || authKey != "" {
				tc, err := loadTLSPair(authCert, authKey)
				if err != nil {
					return fmt.Errorf("enroll: --auth-cert: %w", err)
				}
				e.AuthCertificate = &tc
				if e.ID == "" && tc.Leaf != nil {
					e.ID = tc.Leaf.Subject.CommonName
				}
			}
			// Token sources in order of preference: file, environment, argument.
			switch {
			case tokenFile != "":
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("enroll: --token-file: %w", err)
				}
				e.Token = string(bytes.TrimSpace(b))
			case os.Getenv("MOAT_ENROLL_TOKEN") != "":
				e.Token = strings.TrimSpace(os.Getenv("MOAT_ENROLL_TOKEN"))
			case token != "":
				fmt.Fprintln(stdio.Err, "moat enroll: warning: --token puts the secret on the command line, where other local users can see it; prefer --token-file or MOAT_ENROLL_TOKEN")
				e.Token = token
			}
			_, haveCert := os.Stat(out + ".pem")
			if e.ID == "" && haveCert != nil {
				return errors.New("enroll: --id ID is required for the first enrollment")
			}
			if renew {
				if err := e.Run(cmd.Context()); err != nil {
					return fmt.Errorf("enroll: %w", err)
				}
				return nil
			}
			if _, err := e.Current(); err == nil && e.Token == "" && e.AuthCertificate == nil {
				// No new credential: renew the current certificate once.
				c, err := e.Renew(cmd.Context())
				if err != nil {
					return fmt.Errorf("enroll: renewing %s.pem: %w", out, err)
				}
				fmt.Fprintf(stdio.Out, "Renewed %s: serial %s, valid until %s\n", out+".pem", pki.SerialString(c.SerialNumber), c.NotAfter.Format("2006-01-02 15:04 MST"))
				return nil
			}
			c, err := e.Enroll(cmd.Context())
			if err != nil {
				return fmt.Errorf("enroll: %w", err)
			}
			fmt.Fprintf(stdio.Out, "Enrolled %s: %s.pem and %s.key, serial %s, valid until %s\n", c.Subject.CommonName, out, out, pki.SerialString(c.SerialNumber), c.NotAfter.Format("2006-01-02 15:04 MST"))
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&server, "server", "", "EST server base URL, e.g. https://ca.example.com:8443")
	f.StringVar(&caFile, "ca", "", "trust anchor for the EST server (the CA's ca.pem)")
	f.StringVar(&id, "id", "", "device ID (the certificate's CN)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the bootstrap token (preferred; or set MOAT_ENROLL_TOKEN)")
	f.StringVar(&token, "token", "", "bootstrap token (discouraged: visible in the process list)")
	f.StringVar(&authCert, "auth-cert", "", "manufacturer certificate authorizing the first enrollment instead of a token")
	f.StringVar(&authKey, "auth-key", "", "key of --auth-cert")
	f.StringVar(&out, "out", "", "write PREFIX.pem and PREFIX.key")
	f.StringVar(&alg, "algorithm", "ecdsa-p256", "algorithm of the locally generated key")
	f.StringSliceVar(&uris, "uri", nil, "URI SAN to request, e.g. spiffe://example.org/device/ID (the token must allow it: moat ca token create ID --uri ...)")
	f.BoolVar(&renew, "renew", false, "keep running and renew at two thirds of the lifetime")
	return c
}
