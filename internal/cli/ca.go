package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/moatmq/moat/internal/audit"
	"github.com/moatmq/moat/internal/pki"
)

const defaultCADir = "moat-data/ca"

func init() { register(newCACmd) }

// caLogger logs the pki package's messages to stderr; only warnings and
// errors unless verbose (serve is verbose).
func caLogger(stdio Stdio, verbose bool) *slog.Logger {
	lvl := slog.LevelWarn
	if verbose {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(stdio.Err, &slog.HandlerOptions{Level: lvl}))
}

func newCACmd(stdio Stdio) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Run Moat's certificate authority: issue, revoke, serve OCSP/CRL/EST",
		Long: `moat ca manages a certificate authority kept in --dir (default moat-data/ca):
a root CA (key encrypted at rest), an online issuing intermediate, an inventory
of every issued certificate, revocation with CRL and OCSP, and EST enrollment.
The trust anchor to give to brokers and devices is DIR/ca.pem.`,
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", defaultCADir, "CA directory")
	open := func(verbose bool) (*pki.CA, error) {
		return pki.Open(dir, pki.Config{Logger: caLogger(stdio, verbose)})
	}
	cmd.AddCommand(
		newCAInitCmd(stdio, &dir),
		newCAIssueCmd(stdio, open),
		newCASignCmd(stdio, open),
		newCARevokeCmd(stdio, open),
		newCACRLCmd(stdio, open),
		newCAExportCmd(stdio, open),
		newCARotateCmd(stdio, open),
		newCAListCmd(stdio, open),
		newCAShowCmd(stdio, open),
		newCAVerifyCmd(stdio, open),
		newCAServeCmd(stdio, open),
		newCATokenCmd(stdio, open),
	)
	return cmd
}

type caOpener func(verbose bool) (*pki.CA, error)

func durationFlag(s string, what string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := pki.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return d, nil
}

func newCAInitCmd(stdio Stdio, dir *string) *cobra.Command {
	var (
		alg, org, rootCN, interCN, passFile         string
		rootLife, interLife, serverLife, deviceLife string
		crlValidity, ocspValidity, ocspURL, crlURL  string
		permitDNS, excludeDNS, permitIP, excludeIP  []string
		generatePass                                bool
		importRoot, importInter, importKey          string
		importPassFile                              string
	)
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a root CA and an issuing intermediate in --dir",
		Long: `Create a root CA and an online issuing intermediate in --dir.

The root key is encrypted with a passphrase read from $MOAT_CA_PASSPHRASE,
from --passphrase-file, or from a prompt on the terminal (never from the
command line). --generate-passphrase writes a random one to DIR/root.pass
(mode 0600) instead; move that file offline.

An existing CA, for example one made with openssl, can be used instead:
--import-root CERT --import-key KEY makes it the root (its key is then
encrypted at rest like a generated one and signs a new intermediate);
--import-intermediate CERT --import-key KEY --import-root ROOT makes an
intermediate of an external CA the issuing CA (Moat never sees the root
key). An encrypted KEY's passphrase comes from $MOAT_IMPORT_KEY_PASSPHRASE,
--import-key-passphrase-file or a prompt.`,
		Example: `  moat ca init --dir moat-data/ca
  MOAT_IMPORT_KEY_PASSPHRASE=... moat ca init --import-root ca-cert.pem --import-key ca-key.pem
  moat ca init --import-intermediate issuing.pem --import-key issuing.key --import-root corp-root.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			a, err := pki.ParseKeyAlgorithm(alg)
			errs = append(errs, err)
			opts := pki.InitOptions{
				Config:                 pki.Config{Logger: caLogger(stdio, false)},
				Organization:           org,
				RootCommonName:         rootCN,
				IntermediateCommonName: interCN,
			}
			opts.Algorithm = a
			opts.OCSPURL, opts.CRLURL = ocspURL, crlURL
			opts.PermittedDNSDomains, opts.ExcludedDNSDomains = permitDNS, excludeDNS
			opts.PermittedIPRanges, opts.ExcludedIPRanges = permitIP, excludeIP
			for _, f := range []struct {
				s, what string
				dst     *time.Duration
			}{{rootLife, "--root-lifetime", &opts.RootLifetime}, {interLife, "--intermediate-lifetime", &opts.IntermediateLifetime}} {
				*f.dst, err = durationFlag(f.s, f.what)
				errs = append(errs, err)
			}
			for _, f := range []struct {
				s, what string
				dst     *pki.Duration
			}{{serverLife, "--server-lifetime", &opts.ServerLifetime}, {deviceLife, "--device-lifetime", &opts.DeviceLifetime}, {crlValidity, "--crl-validity", &opts.CRLValidity}, {ocspValidity, "--ocsp-validity", &opts.OCSPValidity}} {
				d, err := durationFlag(f.s, f.what)
				*f.dst = pki.Duration(d)
				errs = append(errs, err)
			}
			for _, u := range []string{ocspURL, crlURL} {
				if u != "" {
					if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") {
						errs = append(errs, fmt.Errorf("%q is not an http:// URL", u))
					}
				}
			}
			if err := errors.Join(errs...); err != nil {
				return fmt.Errorf("ca init: %w", err)
			}
			if pki.Exists(*dir) {
				return fmt.Errorf("ca init: %s already holds a CA (choose another --dir, or use the existing one)", *dir)
			}
			if importRoot != "" || importInter != "" || importKey != "" {
				if importKey == "" || importRoot == "" {
					return errors.New("ca init: importing needs --import-key and --import-root (and --import-intermediate for an intermediate under an external root)")
				}
				key, err := loadImportKey(stdio, importKey, importPassFile)
				if err != nil {
					return fmt.Errorf("ca init: %w", err)
				}
				if opts.ImportRoot, err = loadImportCert("--import-root", importRoot); err != nil {
					return fmt.Errorf("ca init: %w", err)
				}
				if importInter == "" {
					opts.ImportRootKey = key
				} else {
					if opts.ImportIntermediate, err = loadImportCert("--import-intermediate", importInter); err != nil {
						return fmt.Errorf("ca init: %w", err)
					}
					opts.ImportIntermediateKey = key
					generatePass = true // no root key to protect
				}
			}
			if !generatePass {
				pass, err := readPassphrase(stdio, passFile, true)
				if err != nil {
					return fmt.Errorf("ca init: %w", err)
				}
				opts.Passphrase = pass
			}
			ca, err := pki.Init(*dir, opts)
			if err != nil {
				return fmt.Errorf("ca init: %w", err)
			}
			fmt.Fprintf(stdio.Out, "Created CA in %s (%s)\n", *dir, a)
			fmt.Fprintf(stdio.Out, "  root:          %s, valid until %s\n", ca.Root().Subject.CommonName, ca.Root().NotAfter.Format("2006-01-02"))
			fmt.Fprintf(stdio.Out, "  intermediate:  %s, valid until %s\n", ca.Intermediate().Subject.CommonName, ca.Intermediate().NotAfter.Format("2006-01-02"))
			fmt.Fprintf(stdio.Out, "  trust anchor:  %s/%s\n", *dir, pki.FileRoot)
			if generatePass && opts.ImportIntermediate == nil {
				fmt.Fprintf(stdio.Out, "  root key passphrase written to %s/%s: move it offline\n", *dir, pki.FileRootPass)
			}
			if opts.ImportIntermediate != nil {
				fmt.Fprintf(stdio.Out, "  imported intermediate under the external root; Moat holds no root key\n")
			}
			if importKey != "" {
				fmt.Fprintf(stdio.Out, "  the key in %s is now kept in %s; store the original offline or delete it\n", importKey, *dir)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&alg, "algorithm", "ecdsa-p256", "key algorithm: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096")
	f.StringVar(&org, "org", "Moat", "organization (O=) of the CA certificates")
	f.StringVar(&rootCN, "root-cn", "Moat Root CA", "common name of the root")
	f.StringVar(&interCN, "intermediate-cn", "Moat Issuing CA", "common name of the intermediate")
	f.StringVar(&passFile, "passphrase-file", "", "file holding the root key passphrase (else $MOAT_CA_PASSPHRASE or a prompt)")
	f.BoolVar(&generatePass, "generate-passphrase", false, "generate the root key passphrase into DIR/root.pass (unattended setups)")
	f.StringVar(&rootLife, "root-lifetime", "20y", "root certificate lifetime")
	f.StringVar(&interLife, "intermediate-lifetime", "10y", "intermediate certificate lifetime")
	f.StringVar(&serverLife, "server-lifetime", "90d", "default lifetime of server certificates")
	f.StringVar(&deviceLife, "device-lifetime", "180d", "default lifetime of device certificates")
	f.StringVar(&crlValidity, "crl-validity", "7d", "CRL validity (nextUpdate - thisUpdate); regenerated at half")
	f.StringVar(&ocspValidity, "ocsp-validity", "1h", "validity of OCSP responses")
	f.StringVar(&ocspURL, "ocsp-url", "", "OCSP responder URL written into issued certificates, e.g. http://ca.example.com:8080/ocsp")
	f.StringVar(&crlURL, "crl-url", "", "CRL URL written into issued certificates, e.g. http://ca.example.com:8080/crl")
	f.StringVar(&importRoot, "import-root", "", "use this existing CA certificate as the root (with --import-key), or as the root of --import-intermediate")
	f.StringVar(&importInter, "import-intermediate", "", "use this existing intermediate certificate as the issuing CA (with --import-key and --import-root)")
	f.StringVar(&importKey, "import-key", "", "private key (PEM, may be encrypted) of --import-root, or of --import-intermediate when given")
	f.StringVar(&importPassFile, "import-key-passphrase-file", "", "file holding the passphrase of an encrypted --import-key (else $MOAT_IMPORT_KEY_PASSPHRASE or a prompt)")
	f.StringSliceVar(&permitDNS, "permit-dns", nil, "name constraint: permitted DNS domains (repeat or comma-separate)")
	f.StringSliceVar(&excludeDNS, "exclude-dns", nil, "name constraint: excluded DNS domains")
	f.StringSliceVar(&permitIP, "permit-ip", nil, "name constraint: permitted IP ranges (CIDR)")
	f.StringSliceVar(&excludeIP, "exclude-ip", nil, "name constraint: excluded IP ranges (CIDR)")
	return c
}

// readPassphrase gets the root key passphrase from $MOAT_CA_PASSPHRASE, a
// file, or the terminal, in that order.
func readPassphrase(stdio Stdio, file string, confirm bool) ([]byte, error) {
	return readSecret(stdio, secretSource{
		env: "MOAT_CA_PASSPHRASE", file: file, prompt: "Root key passphrase: ", confirm: confirm,
		missing: "no root key passphrase: set MOAT_CA_PASSPHRASE, give --passphrase-file, run on a terminal, or use --generate-passphrase",
	})
}

// secretSource says where readSecret looks for a secret.
type secretSource struct {
	env, file, prompt, missing string
	confirm                    bool
}

// readSecret gets a secret from an environment variable, a file, or the
// terminal, in that order; never from the command line.
func readSecret(stdio Stdio, src secretSource) ([]byte, error) {
	if v, ok := os.LookupEnv(src.env); ok && v != "" {
		return []byte(v), nil
	}
	if src.file != "" {
		b, err := os.ReadFile(src.file)
		if err != nil {
			return nil, fmt.Errorf("reading passphrase file: %w", err)
		}
		p := bytes.TrimRight(b, "\r\n")
		if len(p) == 0 {
			return nil, fmt.Errorf("passphrase file %s is empty", src.file)
		}
		return p, nil
	}
	f, ok := stdio.In.(*os.File)
	if !ok || !isTerminal(f) {
		return nil, errors.New(src.missing)
	}
	fmt.Fprint(stdio.Err, src.prompt)
	p, err := readNoEcho(f)
	fmt.Fprintln(stdio.Err)
	if err != nil {
		return nil, err
	}
	if src.confirm {
		fmt.Fprint(stdio.Err, "Again: ")
		p2, err := readNoEcho(f)
		fmt.Fprintln(stdio.Err)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(p, p2) {
			return nil, errors.New("the passphrases do not match")
		}
	}
	return p, nil
}

// loadImportKey reads the private key of a CA to import; an encrypted
// key's passphrase comes from $MOAT_IMPORT_KEY_PASSPHRASE, passFile or a
// prompt.
func loadImportKey(stdio Stdio, path, passFile string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--import-key: %w", err)
	}
	if !pki.IsEncryptedKeyPEM(b) {
		k, err := pki.ParseKeyPEM(b)
		if err != nil {
			return nil, fmt.Errorf("--import-key %s: %w", path, err)
		}
		return k, nil
	}
	pass, err := readSecret(stdio, secretSource{
		env: "MOAT_IMPORT_KEY_PASSPHRASE", file: passFile, prompt: "Passphrase of " + path + ": ",
		missing: path + " is encrypted: set MOAT_IMPORT_KEY_PASSPHRASE, give --import-key-passphrase-file, or run on a terminal",
	})
	if err != nil {
		return nil, err
	}
	k, err := pki.ParseKeyPEMWithPassphrase(b, pass)
	if err != nil {
		return nil, fmt.Errorf("--import-key %s: %w", path, err)
	}
	return k, nil
}

// loadImportCert reads the first certificate of a PEM file.
func loadImportCert(flag, path string) (*x509.Certificate, error) {
	cs, err := pki.LoadCertificatesFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	return cs[0], nil
}

func writeIssued(stdio Stdio, iss *pki.Issued, out string) error {
	if out == "" {
		stdio.Out.Write(iss.CertPEM())
		if iss.Key != nil {
			return errors.New("a key was generated: give --out PREFIX so it is written to PREFIX.key (mode 0600)")
		}
		return nil
	}
	if err := iss.WriteFiles(out); err != nil {
		return err
	}
	fmt.Fprintf(stdio.Out, "Issued %s certificate for %q, serial %s, valid until %s\n", iss.Record.Profile, iss.Record.Subject, iss.Record.Serial, iss.Record.NotAfter.Format(time.RFC3339))
	if names := iss.Record.SANs(); len(names) > 0 {
		fmt.Fprintf(stdio.Out, "  names: %s\n", strings.Join(names, ", "))
	}
	fmt.Fprintf(stdio.Out, "  %s.pem (certificate and intermediate)\n", out)
	if iss.Key != nil {
		fmt.Fprintf(stdio.Out, "  %s.key (private key, mode 0600)\n", out)
	}
	return nil
}

func newCAIssueCmd(stdio Stdio, open caOpener) *cobra.Command {
	var (
		sans, uris         []string
		out, lifetime, alg string
		force              bool
	)
	c := &cobra.Command{
		Use:   "issue server NAME | device ID",
		Short: "Issue a server or device certificate with a new key",
		Example: `  moat ca issue server broker --san DNS:broker.example.com,IP:10.0.0.5 --out broker
  moat ca issue device sensor-042 --uri spiffe://factory.example/sensor-042 --out sensor-042`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var profile pki.Profile
			switch args[0] {
			case "server":
				profile = pki.ProfileServer
			case "device", "client":
				profile = pki.ProfileDevice
			default:
				return fmt.Errorf("ca issue: unknown kind %q (use server or device)", args[0])
			}
			life, err := durationFlag(lifetime, "--lifetime")
			if err != nil {
				return fmt.Errorf("ca issue: %w", err)
			}
			a, err := pki.ParseKeyAlgorithm(alg)
			if err != nil {
				return fmt.Errorf("ca issue: %w", err)
			}
			entries := append(append([]string{}, sans...), prefixAll("URI:", uris)...)
			dns, ips, us, err := pki.ParseSANs(entries)
			if err != nil {
				return fmt.Errorf("ca issue: %w", err)
			}
			if profile == pki.ProfileServer && len(dns)+len(ips) == 0 {
				dns, ips, _, _ = pki.ParseSANs([]string{args[1]})
			}
			if out == "" {
				return errors.New("ca issue: give --out PREFIX (writes PREFIX.pem and PREFIX.key)")
			}
			if !force {
				for _, f := range []string{out + ".pem", out + ".key"} {
					if _, err := os.Lstat(f); err == nil {
						return fmt.Errorf("ca issue: %s exists; choose another --out PREFIX, or give --force to replace it", f)
					}
				}
			}
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca issue: %w", err)
			}
			// Devices may hold overlapping certificates while they rotate,
			// so an existing one is no error; but say so, since a second
			// certificate is also how a forgotten copy stays valid.
			if recs, err := ca.List(pki.ListFilter{Subject: args[1], Profile: profile}); err == nil {
				for _, r := range recs {
					if r.Status(time.Now()) == pki.StatusValid {
						fmt.Fprintf(stdio.Err, "ca issue: warning: %q already has a valid %s certificate, serial %s, valid until %s; both stay valid (revoke the old one with moat ca revoke %s once it is replaced)\n",
							args[1], profile, r.Serial, r.NotAfter.UTC().Format(time.RFC3339), r.Serial)
					}
				}
			}
			iss, err := ca.Issue(pki.IssueRequest{Profile: profile, CommonName: args[1], DNSNames: dns, IPAddresses: ips, URIs: us, Lifetime: life, KeyAlgorithm: a, AuthorizedBy: "cli"})
			if err != nil {
				return fmt.Errorf("ca issue: %w", err)
			}
			if err := writeIssued(stdio, iss, out); err != nil {
				return err
			}
			if err := caAudit(ca.Dir(), audit.Event{Type: audit.TypeCAIssue, Fields: []audit.Field{audit.String("reason", "moat ca issue"),
				audit.String("serial", iss.Record.Serial), audit.String("subject", iss.Record.Subject), audit.String("profile", string(iss.Record.Profile)),
				audit.String("not_after", iss.Record.NotAfter.UTC().Format(time.RFC3339))}}); err != nil {
				fmt.Fprintf(stdio.Err, "ca issue: warning: not recorded in the audit log: %v\n", err)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringSliceVar(&sans, "san", nil, "subject alternative names: DNS:name,IP:addr (server)")
	f.StringSliceVar(&uris, "uri", nil, "URI SAN for a device, e.g. spiffe://example.org/device/ID")
	f.StringVar(&out, "out", "", "write PREFIX.pem and PREFIX.key")
	f.StringVar(&lifetime, "lifetime", "", "lifetime (default: server 90d, device 180d, as set at init)")
	f.StringVar(&alg, "algorithm", "ecdsa-p256", "key algorithm of the new key")
	f.BoolVar(&force, "force", false, "replace existing PREFIX.pem and PREFIX.key")
	return c
}

func prefixAll(p string, s []string) []string {
	var out []string
	for _, v := range s {
		if !strings.Contains(v, ":") || !strings.HasPrefix(strings.ToUpper(v), "URI:") {
			v = p + v
		}
		out = append(out, v)
	}
	return out
}

func newCASignCmd(stdio Stdio, open caOpener) *cobra.Command {
	var profile, out, lifetime, id string
	var sans, uris []string
	c := &cobra.Command{
		Use:   "sign CSR.pem",
		Short: "Sign a certificate request after checking it against a profile",
		Long: `Sign a PKCS#10 request with the device or server profile.

The names of the certificate are the operator's, not the requester's: every
subject alternative name the CSR asks for (DNS, IP, URI, e-mail) must be
listed with --san or --uri, and a server CSR's CN too; a CSR asking for any
other name is refused, so nothing is copied without being read. The
device profile's CN must equal --id when it is given.`,
		Example: `  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout dev.key -subj /CN=sensor-7 -out dev.csr
  moat ca sign dev.csr --profile device --id sensor-7 --out dev
  moat ca sign broker.csr --profile server --san DNS:broker.example.com,IP:10.0.0.5 --out broker`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			csr, err := pki.ReadCSRFile(args[0])
			if err != nil {
				return fmt.Errorf("ca sign: %w", err)
			}
			life, err := durationFlag(lifetime, "--lifetime")
			if err != nil {
				return fmt.Errorf("ca sign: %w", err)
			}
			names := append(append([]string{}, sans...), prefixAll("URI:", uris)...)
			if _, _, _, err := pki.ParseSANs(names); err != nil {
				return fmt.Errorf("ca sign: %w", err)
			}
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca sign: %w", err)
			}
			iss, err := ca.SignCSR(pki.SignRequest{CSR: csr, Profile: pki.Profile(profile), AuthorizedID: id, AuthorizedNames: names, Lifetime: life, AuthorizedBy: "cli-sign"})
			if errors.Is(err, pki.ErrNamesNotAuthorized) {
				return fmt.Errorf("ca sign: %w; read the request (openssl req -in %s -noout -text) and list every name the certificate may carry with --san DNS:...,IP:... or --uri URI", err, args[0])
			}
			if err != nil {
				return fmt.Errorf("ca sign: %w", err)
			}
			return writeIssued(stdio, iss, out)
		},
	}
	f := c.Flags()
	f.StringVar(&profile, "profile", "device", "issuance profile: device or server")
	f.StringVar(&id, "id", "", "device profile: require the CSR's CN to be this ID")
	f.StringSliceVar(&sans, "san", nil, "names the certificate may carry: DNS:name,IP:addr (the CSR may ask for no others)")
	f.StringSliceVar(&uris, "uri", nil, "URI SAN the certificate may carry, e.g. spiffe://example.org/device/ID")
	f.StringVar(&out, "out", "", "write PREFIX.pem (default: the certificate chain on stdout)")
	f.StringVar(&lifetime, "lifetime", "", "lifetime (default from the profile)")
	return c
}

func newCARevokeCmd(stdio Stdio, open caOpener) *cobra.Command {
	var reason string
	var keepDescendants bool
	c := &cobra.Command{
		Use:   "revoke SERIAL|CERT.pem",
		Short: "Revoke a certificate and its re-enrolled successors; the CRL and OCSP answers change at once",
		Long: `Revoke a certificate. Certificates re-enrolled from it over EST (its
successors, and theirs) are revoked too, with the same reason, because a
stolen certificate may have been used to get a new one; --no-descendants
revokes only the one given. Every revoked certificate is listed.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := pki.ParseReason(reason)
			if err != nil {
				return fmt.Errorf("ca revoke: %w", err)
			}
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca revoke: %w", err)
			}
			serial := args[0]
			if _, statErr := os.Stat(args[0]); statErr == nil {
				certs, err := pki.LoadCertificatesFile(args[0])
				if err != nil {
					return fmt.Errorf("ca revoke: %w", err)
				}
				if !ca.IssuedHere(certs[0]) {
					return fmt.Errorf("ca revoke: %s was not issued by this CA's intermediate (%s)", args[0], ca.Intermediate().Subject.CommonName)
				}
				serial = pki.SerialString(certs[0].SerialNumber)
			}
			recs, err := ca.RevokeTree(serial, r, pki.RevokeOptions{KeepDescendants: keepDescendants})
			if err != nil {
				return fmt.Errorf("ca revoke: %w", err)
			}
			if n, _ := pki.NormalizeSerial(serial); recs[0].Serial != n {
				fmt.Fprintf(stdio.Out, "%s was already revoked; revoking its successors\n", n)
			}
			for _, rec := range recs {
				what := "Revoked"
				if rec.Parent != "" {
					what = fmt.Sprintf("Revoked successor of %s:", rec.Parent)
				}
				fmt.Fprintf(stdio.Out, "%s %s (%s), reason %s\n", what, rec.Serial, rec.Subject, rec.Reason)
				if err := caAudit(ca.Dir(), audit.Event{Type: audit.TypeCARevoke, Fields: []audit.Field{audit.String("reason", rec.Reason.String()),
					audit.String("serial", rec.Serial), audit.String("subject", rec.Subject), audit.String("parent", rec.Parent)}}); err != nil {
					fmt.Fprintf(stdio.Err, "ca revoke: warning: not recorded in the audit log: %v\n", err)
				}
			}
			fmt.Fprintf(stdio.Out, "CRL regenerated (%s/%s)\n", ca.Dir(), pki.FileCRL)
			return nil
		},
	}
	c.Flags().StringVar(&reason, "reason", "unspecified", "keyCompromise, superseded, cessationOfOperation, affiliationChanged, privilegeWithdrawn, unspecified")
	c.Flags().BoolVar(&keepDescendants, "no-descendants", false, "do not revoke certificates re-enrolled from this one")
	return c
}

func newCACRLCmd(stdio Stdio, open caOpener) *cobra.Command {
	var out, passFile, reason, validity string
	var der, root, sign bool
	var revoke []string
	c := &cobra.Command{
		Use:   "crl",
		Short: "Write the current CRL (PEM; --der for DER); --root for the root's CRL of revoked intermediates",
		Long: `Write the issuing intermediate's current CRL.

--root writes the root's CRL instead (DIR/root-crl.pem), which lists
revoked intermediates. --sign re-signs it with the root key (its passphrase
from $MOAT_CA_PASSPHRASE, --passphrase-file or a prompt); do so before its
nextUpdate (one year by default). --revoke CERT.pem adds an old
intermediate to it (implies --sign).`,
		Example: `  moat ca crl --out crl.pem
  moat ca crl --root --sign --passphrase-file /media/offline/root.pass
  moat ca crl --root --revoke old-intermediate.pem --reason keyCompromise`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !root && (sign || len(revoke) > 0) {
				return errors.New("ca crl: --sign and --revoke apply to the root CRL; add --root")
			}
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca crl: %w", err)
			}
			var b []byte
			switch {
			case root && (sign || len(revoke) > 0):
				b, err = signRootCRL(stdio, ca, passFile, revoke, reason, validity)
				if err == nil && !der {
					b, err = ca.RootCRLPEM()
				}
			case root && der:
				b, err = ca.RootCRL()
			case root:
				b, err = ca.RootCRLPEM()
			case der:
				b, err = ca.CRL()
			default:
				b, err = ca.CRLPEM()
			}
			if err != nil {
				return fmt.Errorf("ca crl: %w", err)
			}
			if out == "" || out == "-" {
				_, err = stdio.Out.Write(b)
				return err
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return fmt.Errorf("ca crl: %w", err)
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&out, "out", "", "output file (default stdout)")
	f.BoolVar(&der, "der", false, "write DER instead of PEM")
	f.BoolVar(&root, "root", false, "the root's CRL (revoked intermediates) instead of the intermediate's")
	f.BoolVar(&sign, "sign", false, "re-sign the root CRL with the root key")
	f.StringSliceVar(&revoke, "revoke", nil, "intermediate certificate file to add to the root CRL")
	f.StringVar(&reason, "reason", "unspecified", "reason for --revoke: keyCompromise, cACompromise, superseded, cessationOfOperation, ...")
	f.StringVar(&validity, "validity", "365d", "root CRL validity")
	f.StringVar(&passFile, "passphrase-file", "", "file holding the root key passphrase (else $MOAT_CA_PASSPHRASE or a prompt)")
	return c
}

// signRootCRL decrypts the root key and signs a new root CRL.
func signRootCRL(stdio Stdio, ca *pki.CA, passFile string, revoke []string, reason, validity string) ([]byte, error) {
	r, err := pki.ParseReason(reason)
	if err != nil {
		return nil, err
	}
	v, err := durationFlag(validity, "--validity")
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for _, f := range revoke {
		cs, err := pki.LoadCertificatesFile(f)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cs[0])
	}
	pass, err := readPassphrase(stdio, passFile, false)
	if err != nil {
		return nil, err
	}
	key, err := ca.LoadRootKey(pass)
	if err != nil {
		return nil, err
	}
	return ca.SignRootCRL(pki.RootCRLRequest{RootKey: key, Revoke: certs, Reason: r, Validity: v})
}

func newCARotateCmd(stdio Stdio, open caOpener) *cobra.Command {
	var passFile, lifetime string
	c := &cobra.Command{
		Use:   "rotate-intermediate",
		Short: "Replace the issuing intermediate; the old one stays valid until its last certificate expires",
		Long: `Sign a new issuing intermediate with the root key (its passphrase from
$MOAT_CA_PASSPHRASE, --passphrase-file or a prompt) and issue every new
certificate from it. The old intermediate moves to DIR/retired/: the
certificates it issued stay valid, revocable, and answered for by OCSP and
its own CRL (in crl.pem and at /crl/KEYID) until the last of them expires,
so devices renew at their own pace. The trust anchor (ca.pem, the root)
does not change.

A running moat ca serve stops within 10 seconds (restart it, or let its
supervisor do so); moat ca export --watch follows by itself; restart moat
serve. Until restarted they refuse to write with the old intermediate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			life, err := durationFlag(lifetime, "--lifetime")
			if err != nil {
				return fmt.Errorf("ca rotate-intermediate: %w", err)
			}
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca rotate-intermediate: %w", err)
			}
			pass, err := readPassphrase(stdio, passFile, false)
			if err != nil {
				return fmt.Errorf("ca rotate-intermediate: %w", err)
			}
			key, err := ca.LoadRootKey(pass)
			if err != nil {
				return fmt.Errorf("ca rotate-intermediate: %w", err)
			}
			old := ca.Intermediate()
			next, err := ca.RotateIntermediate(pki.RotateRequest{RootKey: key, Lifetime: life})
			if err != nil {
				return fmt.Errorf("ca rotate-intermediate: %w", err)
			}
			in := next.Intermediate()
			fmt.Fprintf(stdio.Out, "New intermediate %q, valid until %s, issues from now on\n", in.Subject.CommonName, in.NotAfter.Format("2006-01-02"))
			fmt.Fprintf(stdio.Out, "  old intermediate %q keeps its CRL and OCSP until its certificates expire\n", old.Subject.CommonName)
			fmt.Fprintf(stdio.Out, "  moat ca serve stops within 10 seconds: restart it (and moat serve)\n")
			return nil
		},
	}
	c.Flags().StringVar(&passFile, "passphrase-file", "", "file holding the root key passphrase (else $MOAT_CA_PASSPHRASE or a prompt)")
	c.Flags().StringVar(&lifetime, "lifetime", "10y", "lifetime of the new intermediate (at most until the root expires)")
	return c
}

func newCAExportCmd(stdio Stdio, open caOpener) *cobra.Command {
	var out, interval string
	var watch bool
	c := &cobra.Command{
		Use:   "export --out DIR",
		Short: "Write the CA bundle and CRLs world-readable for other services; --watch keeps them current",
		Long: `Write the public files that services running as another user need (the CA
directory itself is private, mode 0700) into --out DIR: ca.pem (the root),
ca-bundle.pem (root and intermediates), crl.pem (the intermediate's CRL)
and root-crl.pem (revoked intermediates). DIR is created with mode 0755,
the files have mode 0644 and are replaced atomically, and only when their
content changed.

--watch keeps running and re-exports every --interval: revocations made by
other moat commands reach crl.pem within one interval, and the CRL is
re-signed before half of its validity has passed. Run it as a service next
to the consumers (see docs/pki.md).`,
		Example: `  moat ca export --out /etc/moat/ca
  moat ca export --out /etc/moat/ca --watch --interval 30s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("ca export: give --out DIR (a directory readable by the services, e.g. /etc/moat/ca)")
			}
			every, err := durationFlag(interval, "--interval")
			if err != nil {
				return fmt.Errorf("ca export: %w", err)
			}
			if every <= 0 {
				return errors.New("ca export: --interval must be positive")
			}
			// The CA is opened afresh for every export, so a rotation of
			// the intermediate made meanwhile is picked up.
			dir := ""
			export := func() error {
				ca, err := open(watch)
				if err != nil {
					return err
				}
				dir = ca.Dir()
				changed, err := ca.Export(out)
				for _, f := range changed {
					fmt.Fprintf(stdio.Out, "wrote %s\n", filepath.Join(out, f))
				}
				return err
			}
			if err := export(); err != nil {
				return fmt.Errorf("ca export: %w", err)
			}
			if !watch {
				return nil
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			logger := caLogger(stdio, true)
			logger.Info("moat ca export: watching", "dir", dir, "out", out, "interval", every)
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
					// A failure (for example the database busy) is logged
					// and retried; the previous files stay in place.
					if err := export(); err != nil {
						logger.Error("moat ca export: export failed; keeping the previous files", "err", err)
					}
				}
			}
		},
	}
	f := c.Flags()
	f.StringVar(&out, "out", "", "directory to write the public files into")
	f.BoolVar(&watch, "watch", false, "keep running and rewrite the files when they change")
	f.StringVar(&interval, "interval", "30s", "how often --watch checks")
	return c
}

func newCAListCmd(stdio Stdio, open caOpener) *cobra.Command {
	var expiring, profile string
	var revoked, asJSON bool
	c := &cobra.Command{
		Use:     "list",
		Short:   "List issued certificates, soonest expiry first",
		Example: "  moat ca list --expiring 30d\n  moat ca list --revoked",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			within, err := durationFlag(expiring, "--expiring")
			if err != nil {
				return fmt.Errorf("ca list: %w", err)
			}
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca list: %w", err)
			}
			recs, err := ca.List(pki.ListFilter{ExpiringWithin: within, Revoked: revoked, Profile: pki.Profile(profile)})
			if err != nil {
				return fmt.Errorf("ca list: %w", err)
			}
			if asJSON {
				for i := range recs {
					recs[i].DER = nil
				}
				enc := json.NewEncoder(stdio.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(recs)
			}
			now := time.Now()
			tw := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERIAL\tPROFILE\tSUBJECT\tNOT AFTER\tSTATUS\tNAMES")
			for _, r := range recs {
				st := string(r.Status(now))
				if r.Status(now) == pki.StatusValid {
					st += fmt.Sprintf(" (%dd left)", int(r.NotAfter.Sub(now).Hours()/24))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Serial, r.Profile, r.Subject, r.NotAfter.UTC().Format("2006-01-02 15:04"), st, strings.Join(r.SANs(), ","))
			}
			return tw.Flush()
		},
	}
	f := c.Flags()
	f.StringVar(&expiring, "expiring", "", "only valid certificates expiring within this duration, e.g. 30d")
	f.BoolVar(&revoked, "revoked", false, "only revoked certificates")
	f.StringVar(&profile, "profile", "", "only this profile (server, device, ocsp)")
	f.BoolVar(&asJSON, "json", false, "JSON output")
	return c
}

func newCAShowCmd(stdio Stdio, open caOpener) *cobra.Command {
	var showPEM bool
	c := &cobra.Command{
		Use:   "show SERIAL",
		Short: "Show one certificate of the inventory",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca show: %w", err)
			}
			r, err := ca.Get(args[0])
			if err != nil {
				return fmt.Errorf("ca show: %w (see moat ca list)", err)
			}
			w := stdio.Out
			fmt.Fprintf(w, "serial:        %s\n", r.Serial)
			fmt.Fprintf(w, "profile:       %s\n", r.Profile)
			fmt.Fprintf(w, "subject:       CN=%s\n", r.Subject)
			if s := r.SANs(); len(s) > 0 {
				fmt.Fprintf(w, "names:         %s\n", strings.Join(s, ", "))
			}
			fmt.Fprintf(w, "not before:    %s\n", r.NotBefore.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "not after:     %s\n", r.NotAfter.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "status:        %s\n", r.Status(time.Now()))
			if r.Revoked {
				fmt.Fprintf(w, "revoked at:    %s (%s)\n", r.RevokedAt.UTC().Format(time.RFC3339), r.Reason)
			}
			fmt.Fprintf(w, "authorized by: %s\n", r.AuthorizedBy)
			if r.Parent != "" {
				fmt.Fprintf(w, "successor of:  %s (re-enrollment; revoking that one revokes this one)\n", r.Parent)
			}
			if showPEM {
				c, err := x509.ParseCertificate(r.DER)
				if err != nil {
					return fmt.Errorf("ca show: %w", err)
				}
				w.Write(pki.EncodeCertificatesPEM(c))
			}
			return nil
		},
	}
	c.Flags().BoolVar(&showPEM, "pem", false, "also print the certificate in PEM")
	return c
}

func newCAVerifyCmd(stdio Stdio, open caOpener) *cobra.Command {
	var caFile string
	var crlFiles []string
	c := &cobra.Command{
		Use:   "verify CERT.pem",
		Short: "Check a certificate: chain, validity window, key usage, revocation",
		Long: `Check a certificate file (leaf first, intermediates may follow) against the
CA in --dir and explain the result in words. Exit status 0 when valid, 1 when
not (and 2 when the check could not be made).

--ca FILE checks it against other CAs instead: the self-signed certificates
in FILE are the trusted roots, the others intermediates; --crl FILE (PEM or
DER, repeatable) adds revocation checking against those CAs' CRLs.`,
		Example: `  moat ca verify broker.pem
  moat ca verify --ca corp-ca-bundle.pem --crl corp-issuing.crl server.pem`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certs, err := pki.LoadCertificatesFile(args[0])
			if err != nil {
				return &exitError{2, fmt.Errorf("ca verify: %w", err)}
			}
			if caFile == "" && len(crlFiles) > 0 {
				return &exitError{2, errors.New("ca verify: --crl applies with --ca; the CA in --dir checks its own revocations")}
			}
			var res pki.VerifyResult
			if caFile != "" {
				bundle, err := pki.LoadCertificatesFile(caFile)
				if err != nil {
					return &exitError{2, fmt.Errorf("ca verify: --ca: %w", err)}
				}
				var crls []*x509.RevocationList
				for _, f := range crlFiles {
					crl, err := loadCRLFile(f)
					if err != nil {
						return &exitError{2, fmt.Errorf("ca verify: --crl: %w", err)}
					}
					crls = append(crls, crl)
				}
				res = pki.VerifyWithCAs(certs, bundle, crls, time.Time{})
			} else {
				ca, err := open(false)
				if err != nil {
					return &exitError{2, fmt.Errorf("ca verify: %w", err)}
				}
				res = ca.Verify(certs)
			}
			fmt.Fprintf(stdio.Out, "%s: %s", args[0], res.String())
			if !res.Valid {
				return &exitError{1, fmt.Errorf("ca verify: %s is not valid: %s", args[0], strings.Join(res.Problems, "; "))}
			}
			return nil
		},
	}
	c.Flags().StringVar(&caFile, "ca", "", "PEM file of other CAs to verify against (roots and intermediates) instead of the CA in --dir")
	c.Flags().StringSliceVar(&crlFiles, "crl", nil, "with --ca: CRL file (PEM or DER) of those CAs")
	return c
}

// loadCRLFile reads a CRL in PEM or DER.
func loadCRLFile(path string) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil && blk.Type == "X509 CRL" {
		b = blk.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return crl, nil
}

func newCAServeCmd(stdio Stdio, open caOpener) *cobra.Command {
	var httpAddr, httpsAddr, certFile, keyFile, mfrCA, reenrollWindow string
	var names, mfrNames []string
	var reenrollLimit int
	c := &cobra.Command{
		Use:   "serve",
		Short: "Serve OCSP, the CRL and metrics over HTTP and EST over HTTPS",
		Long: `Serve the CA: --http ADDR serves OCSP (GET/POST /ocsp), the CRL (/crl DER,
/crl.pem) and Prometheus metrics (/metrics); --https ADDR serves EST (RFC 7030)
under /.well-known/est/. Without --tls-cert the HTTPS certificate is issued
from the CA for --name (default localhost, 127.0.0.1).`,
		Example: "  moat ca serve --http :8080 --https :8443 --name ca.example.com",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if httpAddr == "" && httpsAddr == "" {
				return errors.New("ca serve: give --http ADDR and/or --https ADDR")
			}
			ca, err := open(true)
			if err != nil {
				return fmt.Errorf("ca serve: %w", err)
			}
			window, err := durationFlag(reenrollWindow, "--reenroll-window")
			if err != nil {
				return fmt.Errorf("ca serve: %w", err)
			}
			if reenrollLimit < 1 || window <= 0 {
				return errors.New("ca serve: --reenroll-limit must be at least 1 and --reenroll-window positive")
			}
			cfg := pki.ServerConfig{ESTNames: names, ManufacturerNames: prefixAll("URI:", mfrNames), ReenrollLimit: reenrollLimit, ReenrollWindow: window}
			if len(mfrNames) > 0 && mfrCA == "" {
				return errors.New("ca serve: --manufacturer-uri needs --manufacturer-ca")
			}
			if certFile != "" || keyFile != "" {
				tc, err := loadTLSPair(certFile, keyFile)
				if err != nil {
					return fmt.Errorf("ca serve: %w", err)
				}
				cfg.ESTCertificate = &tc
			}
			if mfrCA != "" {
				cs, err := pki.LoadCertificatesFile(mfrCA)
				if err != nil {
					return fmt.Errorf("ca serve: --manufacturer-ca: %w", err)
				}
				cfg.ManufacturerRoots = x509.NewCertPool()
				for _, c := range cs {
					cfg.ManufacturerRoots.AddCert(c)
				}
			}
			srv, err := ca.NewServer(cfg)
			if err != nil {
				return fmt.Errorf("ca serve: %w", err)
			}
			if httpsAddr != "" && cfg.ESTCertificate == nil {
				// Issue the HTTPS certificate now, so that a name the CA
				// may not certify stops the command before it listens.
				if _, err := srv.ESTTLSConfig(); err != nil {
					return fmt.Errorf("ca serve: --https: %w; give --name with names the CA may certify (the default is localhost,127.0.0.1), or --tls-cert and --tls-key", err)
				}
			}
			var hl, sl net.Listener
			if httpAddr != "" {
				if hl, err = net.Listen("tcp", httpAddr); err != nil {
					return fmt.Errorf("ca serve: --http: %w", err)
				}
			}
			if httpsAddr != "" {
				if sl, err = net.Listen("tcp", httpsAddr); err != nil {
					if hl != nil {
						hl.Close()
					}
					return fmt.Errorf("ca serve: --https: %w", err)
				}
			}
			logger := caLogger(stdio, true)
			attrs := []any{"dir", ca.Dir()}
			if hl != nil {
				attrs = append(attrs, "http", hl.Addr().String())
			}
			if sl != nil {
				attrs = append(attrs, "https", sl.Addr().String())
			}
			logger.Info("moat ca serve: listening", attrs...)
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			if err := srv.Serve(ctx, hl, sl); err != nil {
				return fmt.Errorf("ca serve: %w", err)
			}
			logger.Info("moat ca serve: stopped")
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&httpAddr, "http", "", "address for OCSP, CRL and metrics, e.g. :8080")
	f.StringVar(&httpsAddr, "https", "", "address for EST, e.g. :8443")
	f.StringVar(&certFile, "tls-cert", "", "certificate chain for the HTTPS listener (default: issued from the CA)")
	f.StringVar(&keyFile, "tls-key", "", "key for --tls-cert")
	f.StringSliceVar(&names, "name", nil, "DNS names / IPs of the generated HTTPS certificate (default localhost,127.0.0.1)")
	f.StringVar(&mfrCA, "manufacturer-ca", "", "PEM file of manufacturer CAs whose client certificates may enroll (CN = device ID)")
	f.StringSliceVar(&mfrNames, "manufacturer-uri", nil, "URI SAN a manufacturer-certificate enrollment may get; {id} is the device ID, e.g. spiffe://factory.example/{id}")
	f.IntVar(&reenrollLimit, "reenroll-limit", pki.DefaultReenrollLimit, "re-enrollments allowed per device ID within --reenroll-window")
	f.StringVar(&reenrollWindow, "reenroll-window", "24h", "window of --reenroll-limit")
	return c
}

func newCATokenCmd(stdio Stdio, open caOpener) *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Manage one-time bootstrap tokens for EST enrollment"}
	var ttl string
	var tokURIs []string
	create := &cobra.Command{
		Use:   "create ID",
		Short: "Create a one-time enrollment token for device ID (printed on stdout)",
		Long: `Create a one-time enrollment token for device ID. The enrolled certificate
has CN=ID and may carry only the URI SANs given with --uri (the device may
request a subset); a request for any other name is refused.`,
		Example: "  moat ca token create sensor-042 --uri spiffe://factory.example/sensor-042 > sensor-042.token",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := durationFlag(ttl, "--ttl")
			if err != nil {
				return fmt.Errorf("ca token create: %w", err)
			}
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca token create: %w", err)
			}
			tok, err := ca.CreateTokenFor(pki.TokenRequest{ID: args[0], TTL: d, Names: prefixAll("URI:", tokURIs)})
			if err != nil {
				return fmt.Errorf("ca token create: %w", err)
			}
			fmt.Fprintln(stdio.Out, tok)
			return nil
		},
	}
	create.Flags().StringVar(&ttl, "ttl", "24h", "how long the token can be used")
	create.Flags().StringSliceVar(&tokURIs, "uri", nil, "URI SAN the enrolled certificate may carry, e.g. spiffe://example.org/device/ID")
	list := &cobra.Command{
		Use:   "list",
		Short: "List unused tokens (without the secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ca, err := open(false)
			if err != nil {
				return fmt.Errorf("ca token list: %w", err)
			}
			ts, err := ca.Tokens()
			if err != nil {
				return fmt.Errorf("ca token list: %w", err)
			}
			tw := tabwriter.NewWriter(stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tEXPIRES\tHASH\tNAMES")
			for _, t := range ts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.Expires.UTC().Format(time.RFC3339), t.Hash, strings.Join(t.Names, ","))
			}
			return tw.Flush()
		},
	}
	c.AddCommand(create, list)
	return c
}

func loadTLSPair(certFile, keyFile string) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, errors.New("give both --tls-cert and --tls-key")
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading TLS certificate: %w", err)
	}
	return c, nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// readNoEcho reads one line from the terminal f with echo turned off.
func readNoEcho(f *os.File) ([]byte, error) { return term.ReadPassword(int(f.Fd())) }
