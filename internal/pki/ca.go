package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// File names inside a CA directory.
const (
	FileRoot              = "ca.pem"
	FileRootKey           = "root.key"
	FileRootPass          = "root.pass"
	FileIntermediate      = "intermediate.pem"
	FileIntermediateKey   = "intermediate.key"
	FileOCSPSigner        = "ocsp.pem"
	FileOCSPSignerKey     = "ocsp.key"
	FileSettings          = "ca.json"
	FileDatabase          = "ca.db"
	FileCRL               = "crl.pem"
	defaultLockTimeout    = 5 * time.Second
	defaultOrganization   = "Moat"
	defaultRootCN         = "Moat Root CA"
	defaultIntermediateCN = "Moat Issuing CA"
	generatedPassEntropy  = 32
)

// Config holds the run-time knobs shared by Init and Open. The zero value
// works.
type Config struct {
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Rand is the source of randomness for serials, tokens and keys; nil
	// means crypto/rand.Reader.
	Rand io.Reader
	// Logger receives operational messages; nil means slog.Default().
	Logger *slog.Logger
	// LockTimeout bounds the wait for the database file lock held by
	// another process; zero means 5 seconds.
	LockTimeout time.Duration
}

func (c Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c Config) rand() io.Reader {
	if c.Rand != nil {
		return c.Rand
	}
	return rand.Reader
}

func (c Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// InitOptions describe a new CA. The zero value makes an ECDSA P-256 CA
// with a generated root passphrase stored in DIR/root.pass.
type InitOptions struct {
	Config
	Settings
	// Organization is the O= of both CA certificates; default "Moat".
	Organization string
	// RootCommonName defaults to "Moat Root CA"; IntermediateCommonName
	// to "Moat Issuing CA".
	RootCommonName         string
	IntermediateCommonName string
	// RootLifetime defaults to 20 years, IntermediateLifetime to 10 years.
	RootLifetime         time.Duration
	IntermediateLifetime time.Duration
	// ImportRoot and ImportRootKey make an existing self-signed CA (for
	// example one made with openssl) the root instead of generating one:
	// its key is encrypted at rest with Passphrase like a generated one,
	// and it signs a new intermediate. Both or neither.
	ImportRoot    *x509.Certificate
	ImportRootKey crypto.Signer
	// ImportIntermediate and ImportIntermediateKey make an existing CA
	// the issuing intermediate, under ImportRoot, whose key Moat never
	// holds (ImportRootKey must be nil; there is then no root.key, no
	// passphrase and no root CRL, and the external CA publishes the
	// intermediate's revocation). The intermediate must carry the
	// keyCertSign and cRLSign key usages and a subject key identifier.
	ImportIntermediate    *x509.Certificate
	ImportIntermediateKey crypto.Signer
	// Passphrase encrypts the root key. Nil means: generate a random one
	// and write it to DIR/root.pass (mode 0600), the unattended choice the
	// broker's zero-config default uses; move it offline afterwards.
	Passphrase []byte
}

// CA is an open certificate authority directory. It is safe for
// concurrent use. A CA holds no open file between calls; there is nothing
// to close.
type CA struct {
	dir      string
	cfg      Config
	settings Settings
	root     *x509.Certificate
	inter    *x509.Certificate
	interKey crypto.Signer
	retired  []issuerCA // replaced intermediates, oldest first (rotate.go)

	dbmu sync.RWMutex // serializes this process's database opens (see store.go)

	ocspmu    sync.Mutex // guards the fields below
	ocspCert  *x509.Certificate
	ocspKey   crypto.Signer
	ocspCache map[string]cachedOCSP
}

// Dir returns the CA directory.
func (ca *CA) Dir() string { return ca.dir }

// Root returns the root certificate (the trust anchor, DIR/ca.pem).
func (ca *CA) Root() *x509.Certificate { return ca.root }

// Intermediate returns the issuing CA certificate.
func (ca *CA) Intermediate() *x509.Certificate { return ca.inter }

// Settings returns the CA's policy.
func (ca *CA) Settings() Settings { return ca.settings }

// Roots returns a new pool holding only the root certificate.
func (ca *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.root)
	return p
}

// Exists reports whether dir holds an initialized CA.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, FileIntermediateKey))
	return err == nil
}

// ErrNotInitialized is returned by Open when dir holds no CA.
var ErrNotInitialized = errors.New("pki: no CA in this directory")

// Init creates a new CA in dir, which must not already hold one. It
// creates dir (mode 0700) if needed.
func Init(dir string, opts InitOptions) (*CA, error) {
	var errs []error
	if opts.Algorithm == "" {
		opts.Algorithm = ECDSAP256
	}
	errs = append(errs, opts.Settings.validate()...)
	if opts.RootLifetime < 0 || opts.IntermediateLifetime < 0 {
		errs = append(errs, errors.New("pki: CA lifetimes must not be negative"))
	}
	if opts.Passphrase != nil && len(opts.Passphrase) < 8 {
		errs = append(errs, errors.New("pki: the root key passphrase must have at least 8 characters"))
	}
	errs = append(errs, checkImport(opts, opts.Config.now())...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if Exists(dir) {
		return nil, fmt.Errorf("pki: %s already holds a CA (use it, or choose another --dir)", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: creating CA directory: %w", err)
	}
	cfg := opts.Config
	now := cfg.now()
	rnd := cfg.rand()
	org := orDefault(opts.Organization, defaultOrganization)

	var root *x509.Certificate
	var rootKey crypto.Signer
	var err error
	switch {
	case opts.ImportIntermediate != nil:
		root = opts.ImportRoot // the key stays with the external CA
	case opts.ImportRoot != nil:
		root, rootKey = opts.ImportRoot, opts.ImportRootKey
	default:
		if rootKey, err = GenerateKey(opts.Algorithm, rnd); err != nil {
			return nil, err
		}
		rootTmpl := &x509.Certificate{
			Subject:               pkix.Name{Organization: []string{org}, CommonName: orDefault(opts.RootCommonName, defaultRootCN)},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(orDur(opts.RootLifetime, DefaultRootLifetime)),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            1,
			SubjectKeyId:          keyID(rootKey.Public()),
		}
		if rootTmpl.SerialNumber, err = newSerial(rnd); err != nil {
			return nil, err
		}
		rootDER, err := x509.CreateCertificate(rnd, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
		if err != nil {
			return nil, fmt.Errorf("pki: creating root certificate: %w", err)
		}
		root, _ = x509.ParseCertificate(rootDER)
	}

	type file struct {
		name string
		data []byte
		mode fs.FileMode
	}
	var files []file
	if rootKey != nil {
		pass := opts.Passphrase
		if pass == nil {
			b := make([]byte, generatedPassEntropy)
			if _, err := io.ReadFull(rnd, b); err != nil {
				return nil, fmt.Errorf("pki: reading randomness: %w", err)
			}
			pass = []byte(base64.RawURLEncoding.EncodeToString(b))
			if err := writeFileAtomic(filepath.Join(dir, FileRootPass), append(append([]byte{}, pass...), '\n'), 0o600); err != nil {
				return nil, err
			}
		}
		encRoot, err := EncryptKey(rootKey, pass, rnd)
		if err != nil {
			return nil, err
		}
		files = append(files, file{FileRootKey, encRoot, 0o600})
		if canSignCRL(root) {
			rootCRL, err := signRootCRL(root, rootKey, nil, nil, ReasonUnspecified, now, 0, rnd)
			if err != nil {
				return nil, err
			}
			files = append(files, file{FileRootCRL, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: rootCRL}), 0o644})
		} else {
			cfg.logger().Warn("pki: the imported root cannot sign CRLs (it lacks the cRLSign key usage or a subject key identifier); there will be no root CRL, so an intermediate cannot be revoked by CRL", "root", root.Subject.String())
		}
	}

	inter, interKey := opts.ImportIntermediate, opts.ImportIntermediateKey
	if inter == nil {
		inter, interKey, err = newIntermediate(opts.Settings, org, orDefault(opts.IntermediateCommonName, defaultIntermediateCN),
			orDur(opts.IntermediateLifetime, DefaultIntermediateLifetime), root, rootKey, now, rnd)
		if err != nil {
			return nil, err
		}
	}
	interPEM, err := MarshalKeyPEM(interKey)
	if err != nil {
		return nil, err
	}
	settingsJSON, err := json.MarshalIndent(opts.Settings, "", "  ")
	if err != nil {
		return nil, err
	}
	files = append(files,
		file{FileRoot, EncodeCertificatesPEM(root), 0o644},
		file{FileIntermediate, EncodeCertificatesPEM(inter), 0o644},
		file{FileSettings, append(settingsJSON, '\n'), 0o644},
		file{FileIntermediateKey, interPEM, 0o600}, // last: its presence marks an initialized CA
	)
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return nil, err
		}
	}
	ca, err := Open(dir, cfg)
	if err != nil {
		return nil, err
	}
	if err := ca.createDB(); err != nil {
		return nil, err
	}
	if _, err := ca.RegenerateCRL(); err != nil {
		return nil, err
	}
	cfg.logger().Info("pki: created CA", "dir", dir, "algorithm", opts.Algorithm, "root", root.Subject.CommonName,
		"imported_root", opts.ImportRoot != nil, "imported_intermediate", opts.ImportIntermediate != nil,
		"generated_passphrase", rootKey != nil && opts.Passphrase == nil)
	return ca, nil
}

// Open loads the CA in dir. It reads only public certificates, the
// settings and the intermediate key; the root key stays untouched.
func Open(dir string, cfg Config) (*CA, error) {
	if !Exists(dir) {
		return nil, fmt.Errorf("%w: %s (create one with \"moat ca init --dir %s\")", ErrNotInitialized, dir, dir)
	}
	ca := &CA{dir: dir, cfg: cfg, ocspCache: map[string]cachedOCSP{}}
	roots, err := LoadCertificatesFile(ca.path(FileRoot))
	if err != nil {
		return nil, err
	}
	inters, err := LoadCertificatesFile(ca.path(FileIntermediate))
	if err != nil {
		return nil, err
	}
	ca.root, ca.inter = roots[0], inters[0]
	if err := checkKeyFileMode(ca.path(FileIntermediateKey)); err != nil {
		return nil, err
	}
	if ca.interKey, err = LoadKeyFile(ca.path(FileIntermediateKey)); err != nil {
		return nil, err
	}
	if !publicKeysEqual(ca.interKey.Public(), ca.inter.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match %s", FileIntermediateKey, FileIntermediate)
	}
	if err := ca.inter.CheckSignatureFrom(ca.root); err != nil {
		return nil, fmt.Errorf("pki: %s is not signed by %s: %w", FileIntermediate, FileRoot, err)
	}
	if err := ca.loadRetired(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(ca.path(FileSettings))
	if err != nil {
		return nil, fmt.Errorf("pki: reading settings: %w", err)
	}
	if err := json.Unmarshal(b, &ca.settings); err != nil {
		return nil, fmt.Errorf("pki: %s: %w", ca.path(FileSettings), err)
	}
	if err := errors.Join(ca.settings.validate()...); err != nil {
		return nil, fmt.Errorf("pki: %s: %w", ca.path(FileSettings), err)
	}
	return ca, nil
}

// OpenOrInit opens the CA in dir, or creates it with opts when dir holds
// none. It never prompts. created reports which happened.
func OpenOrInit(dir string, opts InitOptions) (ca *CA, created bool, err error) {
	if Exists(dir) {
		ca, err = Open(dir, opts.Config)
		return ca, false, err
	}
	ca, err = Init(dir, opts)
	return ca, err == nil, err
}

// LoadRootKey decrypts DIR/root.key with passphrase. Only needed to sign a
// new intermediate; ordinary operation never calls it.
func (ca *CA) LoadRootKey(passphrase []byte) (crypto.Signer, error) {
	b, err := os.ReadFile(ca.path(FileRootKey))
	if err != nil {
		return nil, fmt.Errorf("pki: reading root key: %w (is it kept offline?)", err)
	}
	return DecryptKey(b, passphrase)
}

func (ca *CA) path(name string) string { return filepath.Join(ca.dir, name) }

func checkKeyFileMode(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("pki: %s is readable by other users (mode %v); run: chmod 600 %s", path, st.Mode().Perm(), path)
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orDur(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// newSerial returns a random positive 128-bit serial number.
func newSerial(rnd io.Reader) (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := io.ReadFull(rnd, b); err != nil {
			return nil, fmt.Errorf("pki: reading randomness: %w", err)
		}
		n := new(big.Int).SetBytes(b)
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// keyID is the RFC 5280 §4.2.1.2 method (1) key identifier.
func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		Key       asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil
	}
	h := sha1.Sum(spki.Key.Bytes)
	return h[:]
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// writeFileAtomic writes data to a temporary file in the same directory,
// syncs it and renames it over path, so readers never see a partial file.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: writing %s: %w", path, err)
	}
	return nil
}

// canSignCRL reports whether Go can sign a CRL as c: it needs the
// cRLSign key usage and a subject key identifier.
func canSignCRL(c *x509.Certificate) bool {
	return c.KeyUsage&x509.KeyUsageCRLSign != 0 && len(c.SubjectKeyId) > 0
}

// newIntermediate makes an issuing CA certificate and key signed by
// root, with the name constraints of s, valid at most until the root
// expires.
func newIntermediate(s Settings, org, cn string, lifetime time.Duration, root *x509.Certificate, rootKey crypto.Signer, now time.Time, rnd io.Reader) (*x509.Certificate, crypto.Signer, error) {
	key, err := GenerateKey(orAlg(s.Algorithm), rnd)
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	tmpl := &x509.Certificate{
		Subject:                     pkix.Name{Organization: []string{org}, CommonName: cn},
		NotBefore:                   now.Add(-time.Hour),
		NotAfter:                    notAfter,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		SubjectKeyId:                keyID(key.Public()),
		PermittedDNSDomains:         s.PermittedDNSDomains,
		ExcludedDNSDomains:          s.ExcludedDNSDomains,
		PermittedIPRanges:           parseRanges(s.PermittedIPRanges),
		ExcludedIPRanges:            parseRanges(s.ExcludedIPRanges),
		PermittedDNSDomainsCritical: len(s.PermittedDNSDomains)+len(s.ExcludedDNSDomains)+len(s.PermittedIPRanges)+len(s.ExcludedIPRanges) > 0,
	}
	if tmpl.SerialNumber, err = newSerial(rnd); err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(rnd, tmpl, root, key.Public(), rootKey)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: creating intermediate certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

func orAlg(a KeyAlgorithm) KeyAlgorithm {
	if a == "" {
		return ECDSAP256
	}
	return a
}

// checkImport validates the Import fields of opts.
func checkImport(opts InitOptions, now time.Time) []error {
	var errs []error
	usable := func(what string, c *x509.Certificate) {
		if !c.BasicConstraintsValid || !c.IsCA {
			errs = append(errs, fmt.Errorf("pki: the %s %q is not a CA certificate (it lacks basicConstraints CA:TRUE)", what, c.Subject))
		}
		if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
			errs = append(errs, fmt.Errorf("pki: the %s %q may not sign certificates (its key usage lacks keyCertSign)", what, c.Subject))
		}
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			errs = append(errs, fmt.Errorf("pki: the %s %q is valid from %s to %s, not now", what, c.Subject, c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339)))
		}
		if _, err := AlgorithmOf(c.PublicKey); err != nil {
			errs = append(errs, fmt.Errorf("pki: the %s %q: %w", what, c.Subject, err))
		}
	}
	switch {
	case opts.ImportIntermediate == nil && opts.ImportIntermediateKey == nil && opts.ImportRoot == nil && opts.ImportRootKey == nil:
	case opts.ImportIntermediate != nil:
		if opts.ImportIntermediateKey == nil || opts.ImportRoot == nil {
			return []error{errors.New("pki: importing an intermediate needs its key and the root certificate it chains to")}
		}
		if opts.ImportRootKey != nil {
			return []error{errors.New("pki: import either a root with its key, or an intermediate with its key under a root certificate (whose key Moat does not need)")}
		}
		in, root := opts.ImportIntermediate, opts.ImportRoot
		usable("intermediate", in)
		usable("root", root)
		if !publicKeysEqual(opts.ImportIntermediateKey.Public(), in.PublicKey) {
			errs = append(errs, fmt.Errorf("pki: the imported key does not belong to the intermediate %q", in.Subject))
		}
		if err := in.CheckSignatureFrom(root); err != nil {
			errs = append(errs, fmt.Errorf("pki: the intermediate %q is not signed by the root %q: %w", in.Subject, root.Subject, err))
		}
		if !canSignCRL(in) {
			errs = append(errs, fmt.Errorf("pki: the intermediate %q cannot sign CRLs: it needs the key usages keyCertSign and cRLSign and a subject key identifier (openssl: keyUsage=critical,keyCertSign,cRLSign,digitalSignature and subjectKeyIdentifier=hash)", in.Subject))
		}
	default:
		if opts.ImportRoot == nil || opts.ImportRootKey == nil {
			return []error{errors.New("pki: importing a root needs its certificate and its key")}
		}
		root := opts.ImportRoot
		usable("root", root)
		if !publicKeysEqual(opts.ImportRootKey.Public(), root.PublicKey) {
			errs = append(errs, fmt.Errorf("pki: the imported key does not belong to the root %q", root.Subject))
		}
		if root.CheckSignatureFrom(root) != nil {
			errs = append(errs, fmt.Errorf("pki: %q is not self-signed, so it is not a root; import it as an intermediate (--import-intermediate) with the root it chains to", root.Subject))
		}
		if root.MaxPathLenZero {
			errs = append(errs, fmt.Errorf("pki: the root %q has pathlen:0 and cannot sign an intermediate", root.Subject))
		}
	}
	return errs
}
