package cli

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/moatmq/moat/client"
	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/keyservice"
)

// e2eFlags are the end-to-end message security flags of moat pub, moat
// sub and moat ota: group mode (--encrypt/--decrypt with a member key
// directory), the seed's raw AES-GCM mode (--raw-key) and signatures.
type e2eFlags struct {
	group      bool   // --encrypt (pub) or --decrypt (sub)
	keysDir    string // --keys
	rawKey     string // --raw-key
	signCert   string // --sign-cert
	signKey    string // --sign-key
	trust      string // --trust
	requireSig bool
	maxAge     time.Duration
	keyUpdates bool
}

// registerSeal adds the publisher's flags (moat pub).
func (f *e2eFlags) registerSeal(fs *pflag.FlagSet) {
	fs.BoolVar(&f.group, "encrypt", false, "encrypt end to end with the key group covering the topic (needs --keys DIR)")
	f.registerCommon(fs)
	fs.StringVar(&f.signCert, "sign-cert", "", "sign each message with this certificate (PEM; its identity must be the member ID); with --sign-key")
	fs.StringVar(&f.signKey, "sign-key", "", "private key (PEM) of --sign-cert")
	fs.BoolVar(&f.keyUpdates, "key-updates", true, "with --encrypt: also subscribe to this member's key bundle topic ($moat/keys/<member>) and seal with the newest epoch it announces")
}

// registerOpen adds the subscriber's flags (moat sub).
func (f *e2eFlags) registerOpen(fs *pflag.FlagSet) {
	fs.BoolVar(&f.group, "decrypt", false, "decrypt end-to-end encrypted messages (needs --keys DIR); messages that do not open are reported on stderr, never printed")
	f.registerCommon(fs)
	f.registerTrust(fs)
	fs.DurationVar(&f.maxAge, "max-age", e2e.DefaultMaxAge, "refuse group-mode messages older than this (retained messages: 24h)")
	fs.BoolVar(&f.keyUpdates, "key-updates", true, "with --decrypt: also subscribe to this member's key bundle topic ($moat/keys/<member>) and apply newer bundles")
}

func (f *e2eFlags) registerCommon(fs *pflag.FlagSet) {
	fs.StringVar(&f.keysDir, "keys", "", "member key `DIR` written by `moat keys fetch --dir DIR`")
	fs.StringVar(&f.rawKey, "raw-key", "", "seed raw format: AES-256-GCM, nonce(12) ‖ ciphertext ‖ tag(16), with the 32-byte key in `FILE` (binary or 64 hex digits)")
}

func (f *e2eFlags) registerTrust(fs *pflag.FlagSet) {
	fs.StringVar(&f.trust, "trust", "", "PEM `FILE` of sender certificates whose signatures are accepted")
	fs.BoolVar(&f.requireSig, "require-signature", false, "refuse unsigned messages (needs --trust)")
}

// check validates the combination of flags. groupFlag names --encrypt or
// --decrypt.
func (f *e2eFlags) check(groupFlag string) error {
	var errs []error
	switch {
	case f.group && f.rawKey != "":
		errs = append(errs, fmt.Errorf("use either --%s (key groups) or --raw-key (the seed's raw format), not both", groupFlag))
	case f.group && f.keysDir == "":
		errs = append(errs, fmt.Errorf("--%s needs --keys DIR, the member key directory written by `moat keys fetch --dir DIR`", groupFlag))
	case !f.group && f.keysDir != "":
		errs = append(errs, fmt.Errorf("--keys is used with --%s: add --%s", groupFlag, groupFlag))
	}
	if (f.signCert == "") != (f.signKey == "") {
		errs = append(errs, errors.New("--sign-cert and --sign-key go together"))
	}
	if f.signCert != "" && !f.group {
		errs = append(errs, fmt.Errorf("--sign-cert signs group-mode messages: add --%s --keys DIR (the raw format cannot carry a signature)", groupFlag))
	}
	if (f.trust != "" || f.requireSig) && !f.group {
		errs = append(errs, fmt.Errorf("--trust and --require-signature check group-mode messages: add --%s --keys DIR", groupFlag))
	}
	if f.requireSig && f.trust == "" {
		errs = append(errs, errors.New("--require-signature needs --trust FILE (the certificates of the senders)"))
	}
	return errors.Join(errs...)
}

// sealer returns the sealer the flags ask for, nil when none. block is
// the number of sequence numbers reserved at once (0: the default).
func (f *e2eFlags) sealer(block uint64) (e2e.Sealer, *memberKeys, error) {
	if err := f.check("encrypt"); err != nil {
		return nil, nil, err
	}
	if f.rawKey != "" {
		k, err := loadRawKey(f.rawKey)
		return k, nil, err
	}
	if !f.group {
		return nil, nil, nil
	}
	m, err := loadMemberKeys(f.keysDir)
	if err != nil {
		return nil, nil, err
	}
	var signer *e2e.Signer
	if f.signCert != "" {
		if signer, err = loadSigner(f.signCert, f.signKey); err != nil {
			return nil, nil, err
		}
		if signer.Identity() != m.id {
			return nil, nil, fmt.Errorf("--sign-cert: the certificate's identity %q is not the member ID %q of %s; subscribers refuse such signatures", signer.Identity(), m.id, f.keysDir)
		}
	}
	s, err := m.sealer(signer, block)
	return s, m, err
}

// payloadOpener opens received payloads.
type payloadOpener struct {
	raw     *e2e.RawKey
	group   *e2e.GroupOpener
	members *memberKeys
}

// open decrypts the payload of m. In group mode the retained-message
// rules apply to messages their sender marked retained in the
// authenticated header; the MQTT retain flag of m is not trusted.
func (o *payloadOpener) open(m *client.Message) (*e2e.Message, error) {
	if o.raw != nil {
		return o.raw.Open(m.Topic, m.Payload)
	}
	return o.group.Open(m.Topic, m.Payload)
}

// openHint adds a hint to a message that did not open because of how
// moat sub was started rather than what was sent.
func (f *e2eFlags) openHint(err error) error {
	if errors.Is(err, e2e.ErrBadSignature) && f.trust == "" {
		return fmt.Errorf("%w (hint: the message is signed: pass --trust FILE with the senders' certificates, the PEM files they give as --sign-cert, to verify and print such messages)", err)
	}
	return err
}

// bundleTopic is the member's bundle topic when key updates are on, or "".
func (o *payloadOpener) bundleTopic() string {
	if o == nil || o.members == nil {
		return ""
	}
	return keyservice.BundleTopic(o.members.id)
}

// opener returns the opener the flags ask for, nil when none.
func (f *e2eFlags) opener() (*payloadOpener, error) {
	if err := f.check("decrypt"); err != nil {
		return nil, err
	}
	if f.rawKey != "" {
		k, err := loadRawKey(f.rawKey)
		if err != nil {
			return nil, err
		}
		return &payloadOpener{raw: k}, nil
	}
	if !f.group {
		return nil, nil
	}
	m, err := loadMemberKeys(f.keysDir)
	if err != nil {
		return nil, err
	}
	cfg := e2e.OpenerConfig{Keys: m.ring, MaxAge: f.maxAge, RequireSignature: f.requireSig}
	if f.maxAge == 0 {
		cfg.MaxAge = -1
	}
	if f.trust != "" {
		if cfg.Trust, err = loadTrust(f.trust); err != nil {
			return nil, err
		}
	}
	g, err := e2e.NewGroupOpener(cfg)
	if err != nil {
		return nil, err
	}
	o := &payloadOpener{group: g}
	if f.keyUpdates {
		o.members = m
	}
	return o, nil
}

// loadRawKey reads a raw key file; it refuses a file that group or
// others can read.
func loadRawKey(path string) (*e2e.RawKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--raw-key: %v", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("--raw-key: %s is readable by other users (mode %04o); chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--raw-key: %v", err)
	}
	defer clear(b)
	k, err := e2e.ParseRawKey(b)
	if err != nil {
		return nil, fmt.Errorf("--raw-key %s: %w", path, err)
	}
	return k, nil
}

// loadSigner reads a signing certificate and its private key.
func loadSigner(certFile, keyFile string) (*e2e.Signer, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--sign-cert: %v (check that --sign-key matches --sign-cert)", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("--sign-cert: %v", err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("--sign-key: unsupported key type")
	}
	s, err := e2e.NewSigner(leaf, key)
	if err != nil {
		return nil, fmt.Errorf("--sign-cert: %w", err)
	}
	return s, nil
}

// loadTrust reads the PEM certificates of trusted signers.
func loadTrust(path string) (*e2e.TrustStore, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--trust: %v", err)
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("--trust %s: %v", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("--trust %s: no PEM certificate found", path)
	}
	ts, err := e2e.NewTrustStore(certs...)
	if err != nil {
		return nil, fmt.Errorf("--trust %s: %w", path, err)
	}
	return ts, nil
}
