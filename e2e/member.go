package e2e

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/fips140"
	"crypto/hpke"
	"crypto/sha256"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/moatmq/moat/e2e/internal/format"
)

// KEM names an HPKE key encapsulation mechanism (RFC 9180 KEM ID) for
// member keys.
type KEM uint16

// Supported KEMs. The default is the post-quantum hybrid ML-KEM-768 +
// X25519 (X-Wing, draft-ietf-hpke-pq), as crypto/hpke implements it. In
// FIPS 140-3 mode it is FIPSKEM, ML-KEM-768 with P-256, whose both halves
// are NIST-approved (FIPS 203, SP 800-56A).
const (
	KEMMLKEM768X25519 KEM = 0x647a
	KEMX25519         KEM = 0x0020
	KEMP256           KEM = 0x0010
	KEMMLKEM768P256   KEM = 0x0050
	KEMMLKEM1024P384  KEM = 0x0051
	DefaultKEM            = KEMMLKEM768X25519
	FIPSKEM               = KEMMLKEM768P256
)

// FIPSApproved reports whether k is allowed in FIPS 140-3 mode: ML-KEM
// with a NIST curve, or DHKEM(P-256). Keys of other KEMs are refused in
// that mode, when generated, parsed, registered or sealed to.
func (k KEM) FIPSApproved() bool {
	return k == KEMMLKEM768P256 || k == KEMMLKEM1024P384 || k == KEMP256
}

// defaultKEM is the KEM of a new member key that names none.
func defaultKEM() KEM {
	if fips140.Enabled() {
		return FIPSKEM
	}
	return DefaultKEM
}

// String returns the name ParseKEM accepts.
func (k KEM) String() string {
	switch k {
	case KEMMLKEM768X25519:
		return "mlkem768x25519"
	case KEMX25519:
		return "x25519"
	case KEMP256:
		return "p256"
	case KEMMLKEM768P256:
		return "mlkem768p256"
	case KEMMLKEM1024P384:
		return "mlkem1024p384"
	}
	return fmt.Sprintf("kem(0x%04x)", uint16(k))
}

// ParseKEM parses "mlkem768x25519" (also "hybrid", "x-wing"),
// "mlkem768p256", "mlkem1024p384", "x25519" or "p256". The empty string is
// the default KEM: DefaultKEM, or FIPSKEM in FIPS 140-3 mode.
func ParseKEM(name string) (KEM, error) {
	switch strings.ToLower(name) {
	case "":
		return defaultKEM(), nil
	case "mlkem768x25519", "mlkem768-x25519", "hybrid", "x-wing", "xwing":
		return KEMMLKEM768X25519, nil
	case "mlkem768p256", "mlkem768-p256":
		return KEMMLKEM768P256, nil
	case "mlkem1024p384", "mlkem1024-p384":
		return KEMMLKEM1024P384, nil
	case "x25519":
		return KEMX25519, nil
	case "p256", "p-256":
		return KEMP256, nil
	}
	return 0, fmt.Errorf("e2e: unknown KEM %q (use mlkem768x25519, mlkem768p256, mlkem1024p384, x25519 or p256)", name)
}

// hpke returns the HPKE KEM of k. In FIPS 140-3 mode a KEM that mode does
// not approve is refused, so no key of it is made or used.
func (k KEM) hpke() (hpke.KEM, error) {
	if fips140.Enabled() && (k == KEMMLKEM768X25519 || k == KEMX25519) {
		return nil, fmt.Errorf("%w: KEM %s uses X25519; in FIPS 140-3 mode member keys are %s (or mlkem1024p384, p256): generate a new member key and register it (see docs/fips.md)", ErrNotApproved, k, FIPSKEM)
	}
	switch k {
	case KEMMLKEM768P256:
		return hpke.MLKEM768P256(), nil
	case KEMMLKEM1024P384:
		return hpke.MLKEM1024P384(), nil
	case KEMMLKEM768X25519:
		return hpke.MLKEM768X25519(), nil
	case KEMX25519:
		return hpke.DHKEM(ecdh.X25519()), nil
	case KEMP256:
		return hpke.DHKEM(ecdh.P256()), nil
	}
	return nil, fmt.Errorf("e2e: unsupported KEM 0x%04x", uint16(k))
}

// The HPKE ciphersuite of key bundles, besides the member's KEM.
func bundleKDF() hpke.KDF   { return hpke.HKDFSHA256() }
func bundleAEAD() hpke.AEAD { return hpke.AES256GCM() }

const (
	memberKeyPEM  = "MOAT MEMBER KEY"
	bundleContext = "moat-e2e/1 bundle"
)

// MemberKey is a member's HPKE private key, to which the key service seals
// key bundles. It is safe for concurrent use.
type MemberKey struct {
	kem  KEM
	priv hpke.PrivateKey
}

// MemberPublicKey is the public half a member registers with the key
// service.
type MemberPublicKey struct {
	KEM KEM
	Key []byte // RFC 9180 SerializePublicKey
}

// Validate checks that the key parses for its KEM.
func (p MemberPublicKey) Validate() error {
	k, err := p.KEM.hpke()
	if err != nil {
		return err
	}
	if _, err := k.NewPublicKey(p.Key); err != nil {
		return fmt.Errorf("e2e: invalid %s public key: %w", p.KEM, err)
	}
	return nil
}

// GenerateMemberKey generates a member key for kem (0: DefaultKEM, or
// FIPSKEM in FIPS 140-3 mode, where a KEM using X25519 is refused with
// ErrNotApproved).
func GenerateMemberKey(kem KEM) (*MemberKey, error) {
	if kem == 0 {
		kem = defaultKEM()
	}
	k, err := kem.hpke()
	if err != nil {
		return nil, err
	}
	priv, err := k.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("e2e: generating %s key: %w", kem, err)
	}
	return &MemberKey{kem: kem, priv: priv}, nil
}

// KEM returns the key's KEM.
func (m *MemberKey) KEM() KEM { return m.kem }

// Public returns the public key to register.
func (m *MemberKey) Public() MemberPublicKey {
	return MemberPublicKey{KEM: m.kem, Key: m.priv.PublicKey().Bytes()}
}

// String does not reveal the key.
func (m *MemberKey) String() string { return "MemberKey(" + m.kem.String() + ", REDACTED)" }

// MarshalPEM encodes the private key as a PEM block "MOAT MEMBER KEY"
// holding the 2-byte KEM ID and the RFC 9180 serialized private key. Write
// it to a file of mode 0600.
func (m *MemberKey) MarshalPEM() ([]byte, error) {
	b, err := m.priv.Bytes()
	if err != nil {
		return nil, fmt.Errorf("e2e: %w", err)
	}
	der := append([]byte{byte(m.kem >> 8), byte(m.kem)}, b...)
	return pem.EncodeToMemory(&pem.Block{Type: memberKeyPEM, Bytes: der}), nil
}

// ParseMemberKeyPEM decodes a key written by MarshalPEM.
func ParseMemberKeyPEM(data []byte) (*MemberKey, error) {
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != memberKeyPEM || len(blk.Bytes) < 3 {
		return nil, fmt.Errorf("e2e: not a %q PEM block", memberKeyPEM)
	}
	kem := KEM(blk.Bytes[0])<<8 | KEM(blk.Bytes[1])
	k, err := kem.hpke()
	if err != nil {
		return nil, err
	}
	priv, err := k.NewPrivateKey(blk.Bytes[2:])
	if err != nil {
		return nil, fmt.Errorf("e2e: invalid %s private key: %w", kem, err)
	}
	return &MemberKey{kem: kem, priv: priv}, nil
}

// Bundle is the set of keys one member may use, as the key service
// issues it. Serial increases with every bundle issued to a member, so a
// replayed older bundle is refused by [Keyring.ApplyBundle].
type Bundle struct {
	Member     string
	Serial     uint64
	Issued     time.Time
	EpochKeys  []*EpochKey  // groups the member reads
	SenderKeys []*SenderKey // groups the member only writes
}

// Bundle entry kinds.
const (
	entryEpoch  = 0
	entrySender = 1
)

func appendMillis(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return format.AppendInt(b, 0)
	}
	return format.AppendInt(b, t.UnixMilli())
}

func (b *Bundle) marshalKeys() []byte {
	out := format.AppendArray(nil, len(b.EpochKeys)+len(b.SenderKeys))
	for _, k := range b.EpochKeys {
		out = format.AppendArray(out, entryLen(k.sealUntil))
		out = format.AppendUint(out, entryEpoch)
		out = format.AppendText(out, k.group)
		out = format.AppendText(out, k.filter)
		out = format.AppendUint(out, k.epoch)
		out = appendMillis(out, k.notAfter)
		out = format.AppendBytes(out, k.secret[:])
		out = format.AppendArray(out, len(k.writers))
		for _, w := range k.writers {
			out = format.AppendText(out, w)
		}
		if !k.sealUntil.IsZero() {
			out = appendMillis(out, k.sealUntil)
		}
	}
	for _, k := range b.SenderKeys {
		out = format.AppendArray(out, entryLen(k.sealUntil))
		out = format.AppendUint(out, entrySender)
		out = format.AppendText(out, k.group)
		out = format.AppendText(out, k.filter)
		out = format.AppendUint(out, k.epoch)
		out = appendMillis(out, k.notAfter)
		out = format.AppendBytes(out, k.material[:])
		out = format.AppendText(out, k.sender)
		if !k.sealUntil.IsZero() {
			out = appendMillis(out, k.sealUntil)
		}
	}
	return out
}

// entryLen is the number of items of a bundle entry: 7, and 8 with the
// optional seal_until_ms.
func entryLen(sealUntil time.Time) int {
	if sealUntil.IsZero() {
		return 7
	}
	return 8
}

func (b *Bundle) unmarshalKeys(data []byte) error {
	d := format.NewDecoder(data)
	n, err := d.Array()
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		items, err := d.Array()
		if err != nil {
			return err
		}
		if items != 7 && items != 8 {
			return fmt.Errorf("bundle entry of %d items (want 7 or 8)", items)
		}
		kind, err := d.Uint()
		if err != nil {
			return err
		}
		group, err := d.Text(format.MaxGroup)
		if err != nil {
			return err
		}
		filter, err := d.Text(format.MaxGroup)
		if err != nil {
			return err
		}
		epoch, err := d.Uint()
		if err != nil {
			return err
		}
		ms, err := d.Int()
		if err != nil {
			return err
		}
		var notAfter time.Time
		if ms != 0 {
			notAfter = time.UnixMilli(ms)
		}
		secret, err := d.Bytes(KeySize + nonceSize)
		if err != nil {
			return err
		}
		switch kind {
		case entryEpoch:
			nw, err := d.Array()
			if err != nil {
				return err
			}
			writers := make([]string, 0, nw)
			for j := 0; j < nw; j++ {
				w, err := d.Text(format.MaxSenderID)
				if err != nil {
					return err
				}
				writers = append(writers, w)
			}
			k, err := NewEpochKey(group, filter, epoch, secret, writers, notAfter)
			if err != nil {
				return err
			}
			if items == 8 {
				t, err := decodeSealUntil(d)
				if err != nil {
					return err
				}
				k.sealUntil = t
			}
			b.EpochKeys = append(b.EpochKeys, k)
		case entrySender:
			sender, err := d.Text(format.MaxSenderID)
			if err != nil {
				return err
			}
			k, err := NewSenderKey(group, filter, epoch, sender, secret, notAfter)
			if err != nil {
				return err
			}
			if items == 8 {
				t, err := decodeSealUntil(d)
				if err != nil {
					return err
				}
				k.sealUntil = t
			}
			b.SenderKeys = append(b.SenderKeys, k)
		default:
			return fmt.Errorf("unknown entry kind %d", kind)
		}
	}
	return d.Finish()
}

// decodeSealUntil reads the optional eighth item of a bundle entry.
func decodeSealUntil(d *format.Decoder) (time.Time, error) {
	ms, err := d.Int()
	if err != nil {
		return time.Time{}, err
	}
	if ms == 0 {
		return time.Time{}, errors.New("bundle entry: seal_until_ms must not be 0 (omit it)")
	}
	return time.UnixMilli(ms), nil
}

func bundleInfo(member string, serial uint64, issued int64) []byte {
	info := format.AppendArray(nil, 4)
	info = format.AppendText(info, bundleContext)
	info = format.AppendText(info, member)
	info = format.AppendUint(info, serial)
	return format.AppendInt(info, issued)
}

func bundleSigAAD() []byte {
	return format.AppendText(format.AppendArray(nil, 1), bundleContext)
}

// ServiceKeyID returns the key ID of a key service's Ed25519 public key.
func ServiceKeyID(pub ed25519.PublicKey) []byte {
	sum := sha256.Sum256(pub)
	return sum[:16]
}

// SealBundle encrypts b to the member's public key with HPKE and signs
// the result with the key service's Ed25519 key, so the bundle can travel
// over an untrusted channel (an MQTT topic such as $moat/keys/<member>).
func SealBundle(b *Bundle, to MemberPublicKey, service crypto.Signer) ([]byte, error) {
	pub, ok := service.Public().(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("e2e: the key service signs bundles with an Ed25519 key")
	}
	kem, err := to.KEM.hpke()
	if err != nil {
		return nil, err
	}
	pk, err := kem.NewPublicKey(to.Key)
	if err != nil {
		return nil, fmt.Errorf("e2e: member %q public key: %w", b.Member, err)
	}
	issued := b.Issued.UnixMilli()
	enc, sender, err := hpke.NewSender(pk, bundleKDF(), bundleAEAD(), bundleInfo(b.Member, b.Serial, issued))
	if err != nil {
		return nil, fmt.Errorf("e2e: HPKE: %w", err)
	}
	pt := b.marshalKeys()
	ct, err := sender.Seal(nil, pt)
	clear(pt)
	if err != nil {
		return nil, fmt.Errorf("e2e: HPKE: %w", err)
	}
	payload := format.AppendMap(nil, 6)
	payload = format.AppendInt(payload, 1)
	payload = format.AppendText(payload, b.Member)
	payload = format.AppendInt(payload, 2)
	payload = format.AppendUint(payload, b.Serial)
	payload = format.AppendInt(payload, 3)
	payload = format.AppendInt(payload, issued)
	payload = format.AppendInt(payload, 4)
	payload = format.AppendUint(payload, uint64(to.KEM))
	payload = format.AppendInt(payload, 5)
	payload = format.AppendBytes(payload, enc)
	payload = format.AppendInt(payload, 6)
	payload = format.AppendBytes(payload, ct)
	return signCOSE(service, format.AlgEdDSA, ServiceKeyID(pub), issued, true, bundleSigAAD(), payload, nil)
}

// maxBundle bounds the size of a bundle accepted by OpenBundle.
const maxBundle = 4 << 20

// OpenBundle verifies a bundle's signature against the key service's
// public key, checks it is addressed to member, and decrypts it with m.
// Errors wrap [ErrBadBundle].
func OpenBundle(msg []byte, m *MemberKey, member string, service ed25519.PublicKey) (*Bundle, error) {
	if len(msg) > maxBundle {
		return nil, wrapf(ErrBadBundle, "%d bytes is over the %d-byte limit", len(msg), maxBundle)
	}
	protected, payload, sig, err := format.ParseSign1(msg)
	if err != nil {
		return nil, wrapf(ErrBadBundle, "%v", err)
	}
	h, err := format.ParseSignHeader(protected)
	if err != nil {
		return nil, wrapf(ErrBadBundle, "%v", err)
	}
	if !verifyCOSE(service, h.Alg, protected, bundleSigAAD(), payload, sig) {
		return nil, wrapf(ErrBadBundle, "signature does not verify with the key service's key %x", ServiceKeyID(service))
	}
	b, kem, enc, ct, err := parseBundlePayload(payload)
	if err != nil {
		return nil, wrapf(ErrBadBundle, "%v", err)
	}
	if b.Member != member {
		return nil, wrapf(ErrBadBundle, "bundle is for member %q, not %q", b.Member, member)
	}
	if kem != m.kem {
		return nil, wrapf(ErrBadBundle, "bundle is sealed with %s, the member key is %s", kem, m.kem)
	}
	r, err := hpke.NewRecipient(enc, m.priv, bundleKDF(), bundleAEAD(), bundleInfo(b.Member, b.Serial, b.Issued.UnixMilli()))
	if err != nil {
		return nil, wrapf(ErrBadBundle, "HPKE: %v", err)
	}
	pt, err := r.Open(nil, ct)
	if err != nil {
		return nil, wrapf(ErrBadBundle, "does not decrypt with this member key (registered another key?)")
	}
	defer clear(pt)
	if err := b.unmarshalKeys(pt); err != nil {
		return nil, wrapf(ErrBadBundle, "keys: %v", err)
	}
	return b, nil
}

func parseBundlePayload(p []byte) (b *Bundle, kem KEM, enc, ct []byte, err error) {
	d := format.NewDecoder(p)
	n, err := d.Map()
	if err != nil {
		return nil, 0, nil, nil, err
	}
	if n != 6 {
		return nil, 0, nil, nil, fmt.Errorf("bundle payload has %d fields, want 6", n)
	}
	b = &Bundle{}
	var prev []byte
	for i := int64(1); i <= 6; i++ {
		var label int64
		if label, prev, err = d.MapKey(prev); err != nil {
			return nil, 0, nil, nil, err
		}
		if label != i {
			return nil, 0, nil, nil, fmt.Errorf("unexpected bundle field %d", label)
		}
		switch label {
		case 1:
			b.Member, err = d.Text(format.MaxSenderID)
		case 2:
			b.Serial, err = d.Uint()
		case 3:
			var ms int64
			ms, err = d.Int()
			b.Issued = time.UnixMilli(ms)
		case 4:
			var k uint64
			k, err = d.Uint()
			kem = KEM(k)
		case 5:
			enc, err = d.Bytes(8192)
		case 6:
			ct, err = d.Bytes(-1)
		}
		if err != nil {
			return nil, 0, nil, nil, err
		}
	}
	return b, kem, enc, ct, d.Finish()
}

// ApplyBundle replaces the keyring's keys with the bundle's. It refuses a
// bundle whose serial is not above the last one applied (a replayed or
// reordered older bundle), wrapping [ErrBadBundle].
func (r *Keyring) ApplyBundle(b *Bundle) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.serial != 0 && b.Serial <= r.serial {
		return wrapf(ErrBadBundle, "serial %d is not newer than the applied serial %d (replayed bundle?)", b.Serial, r.serial)
	}
	r.serial = b.Serial
	r.epochs = make(map[groupEpoch]*EpochKey, len(b.EpochKeys))
	for _, k := range b.EpochKeys {
		r.epochs[groupEpoch{k.group, k.epoch}] = k
	}
	r.senders = make(map[senderID]*SenderKey, len(b.SenderKeys))
	r.sends = nil
	for _, k := range b.SenderKeys {
		r.senders[senderID{k.group, k.epoch, k.sender}] = k
	}
	r.derived = nil
	return nil
}

// Serial returns the serial of the last bundle applied (0: none).
func (r *Keyring) Serial() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.serial
}
