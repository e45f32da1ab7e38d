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

	rootKey, err := GenerateKey(opts.Algorithm, rnd)
	if err != nil {
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
	root, _ := x509.ParseCertificate(rootDER)

	interKey, err := GenerateKey(opts.Algorithm, rnd)
	if err != nil {
		return nil, err
	}
	interNotAfter := now.Add(orDur(opts.IntermediateLifetime, DefaultIntermediateLifetime))
	if interNotAfter.After(root.NotAfter) {
		interNotAfter = root.NotAfter
	}
	interTmpl := &x509.Certificate{
		Subject:                     pkix.Name{Organization: []string{org}, CommonName: orDefault(opts.IntermediateCommonName, defaultIntermediateCN)},
		NotBefore:                   now.Add(-time.Hour),
		NotAfter:                    interNotAfter,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		SubjectKeyId:                keyID(interKey.Public()),
		PermittedDNSDomains:         opts.PermittedDNSDomains,
		ExcludedDNSDomains:          opts.ExcludedDNSDomains,
		PermittedIPRanges:           parseRanges(opts.PermittedIPRanges),
		ExcludedIPRanges:            parseRanges(opts.ExcludedIPRanges),
		PermittedDNSDomainsCritical: len(opts.PermittedDNSDomains)+len(opts.ExcludedDNSDomains)+len(opts.PermittedIPRanges)+len(opts.ExcludedIPRanges) > 0,
	}
	if interTmpl.SerialNumber, err = newSerial(rnd); err != nil {
		return nil, err
	}
	interDER, err := x509.CreateCertificate(rnd, interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: creating intermediate certificate: %w", err)
	}
	inter, _ := x509.ParseCertificate(interDER)

	rootCRL, err := signRootCRL(root, rootKey, nil, nil, ReasonUnspecified, now, 0, rnd)
	if err != nil {
		return nil, err
	}
	encRoot, err := EncryptKey(rootKey, pass, rnd)
	if err != nil {
		return nil, err
	}
	interPEM, err := MarshalKeyPEM(interKey)
	if err != nil {
		return nil, err
	}
	settingsJSON, err := json.MarshalIndent(opts.Settings, "", "  ")
	if err != nil {
		return nil, err
	}
	files := []struct {
		name string
		data []byte
		mode fs.FileMode
	}{
		{FileRootKey, encRoot, 0o600},
		{FileRoot, EncodeCertificatesPEM(root), 0o644},
		{FileIntermediate, EncodeCertificatesPEM(inter), 0o644},
		{FileRootCRL, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: rootCRL}), 0o644},
		{FileSettings, append(settingsJSON, '\n'), 0o644},
		{FileIntermediateKey, interPEM, 0o600}, // last: its presence marks an initialized CA
	}
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
	cfg.logger().Info("pki: created CA", "dir", dir, "algorithm", opts.Algorithm, "root", root.Subject.CommonName, "generated_passphrase", opts.Passphrase == nil)
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
