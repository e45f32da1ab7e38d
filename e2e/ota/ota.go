// Package ota distributes firmware signed and encrypted end to end (seed
// 000 §5.1, "firmware OTA encrypted updates"). [Publish] splits an image
// into chunks, signs a manifest (name, version, size, SHA-256 of the image
// and of every chunk) with the publisher's certificate key, and seals the
// manifest and every chunk with an e2e.Sealer for one topic, so the broker
// sees neither the firmware nor its metadata. A [Receiver] opens the
// messages with an e2e.Opener, verifies the manifest against a trust store,
// refuses a version that is not newer than the installed one, checks each
// chunk against the manifest as it arrives, and hands out the image only
// when it is complete and its hash matches.
package ota

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/internal/format"
)

// Errors, tested with errors.Is.
var (
	ErrDowngrade  = errors.New("ota: version is not newer than the installed one")
	ErrTampered   = errors.New("ota: firmware or manifest does not verify")
	ErrIncomplete = errors.New("ota: image incomplete")
	ErrMalformed  = errors.New("ota: malformed message")
	ErrNoManifest = errors.New("ota: no manifest received yet")
	ErrTooLarge   = errors.New("ota: image larger than allowed")
)

// Defaults.
const (
	DefaultChunkSize = 32 << 10
	DefaultMaxSize   = 64 << 20
	MaxChunkSize     = 256 << 10
	manifestContext  = "moat-ota/1 manifest"
	kindManifest     = 0
	kindChunk        = 1
)

// Manifest describes a firmware image.
type Manifest struct {
	Name        string
	Version     string // dotted decimal, e.g. "1.4.2"
	Size        uint64
	SHA256      [32]byte
	ChunkSize   uint32
	ChunkHashes [][32]byte
	// Set by the receiver after verification.
	Signer   *x509.Certificate
	SignedAt time.Time
}

func (m *Manifest) marshal() []byte {
	b := format.AppendArray(nil, 6)
	b = format.AppendText(b, m.Name)
	b = format.AppendText(b, m.Version)
	b = format.AppendUint(b, m.Size)
	b = format.AppendBytes(b, m.SHA256[:])
	b = format.AppendUint(b, uint64(m.ChunkSize))
	b = format.AppendArray(b, len(m.ChunkHashes))
	for _, h := range m.ChunkHashes {
		b = format.AppendBytes(b, h[:])
	}
	return b
}

func parseManifest(b []byte, maxSize uint64) (*Manifest, error) {
	d := format.NewDecoder(b)
	if err := d.ArrayLen(6); err != nil {
		return nil, err
	}
	m := &Manifest{}
	var err error
	if m.Name, err = d.Text(256); err != nil {
		return nil, err
	}
	if m.Version, err = d.Text(64); err != nil {
		return nil, err
	}
	if _, err := parseVersion(m.Version); err != nil {
		return nil, err
	}
	if m.Size, err = d.Uint(); err != nil {
		return nil, err
	}
	if m.Size > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, m.Size, maxSize)
	}
	h, err := d.Bytes(32)
	if err != nil || len(h) != 32 {
		return nil, errors.New("bad image hash")
	}
	copy(m.SHA256[:], h)
	cs, err := d.Uint()
	if err != nil {
		return nil, err
	}
	if cs == 0 || cs > MaxChunkSize {
		return nil, fmt.Errorf("chunk size %d out of range", cs)
	}
	m.ChunkSize = uint32(cs)
	n, err := d.Array()
	if err != nil {
		return nil, err
	}
	if uint64(n) != (m.Size+cs-1)/cs {
		return nil, fmt.Errorf("%d chunk hashes for %d bytes in chunks of %d", n, m.Size, cs)
	}
	m.ChunkHashes = make([][32]byte, n)
	for i := range m.ChunkHashes {
		h, err := d.Bytes(32)
		if err != nil || len(h) != 32 {
			return nil, errors.New("bad chunk hash")
		}
		copy(m.ChunkHashes[i][:], h)
	}
	return m, d.Finish()
}

// parseVersion parses a dotted decimal version ("1", "1.2", "1.2.3", ...).
func parseVersion(v string) ([]uint64, error) {
	if v == "" {
		return nil, errors.New("ota: empty version")
	}
	parts := strings.Split(v, ".")
	if len(parts) > 8 {
		return nil, fmt.Errorf("ota: version %q has too many components", v)
	}
	out := make([]uint64, len(parts))
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return nil, fmt.Errorf("ota: version %q must be dotted decimal numbers, e.g. 1.4.2", v)
		}
		out[i] = n
	}
	return out, nil
}

// CompareVersions compares two dotted decimal versions (missing
// components count as 0): -1, 0 or +1.
func CompareVersions(a, b string) (int, error) {
	va, err := parseVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := parseVersion(b)
	if err != nil {
		return 0, err
	}
	for i := 0; i < max(len(va), len(vb)); i++ {
		var x, y uint64
		if i < len(va) {
			x = va[i]
		}
		if i < len(vb) {
			y = vb[i]
		}
		if x != y {
			if x < y {
				return -1, nil
			}
			return 1, nil
		}
	}
	return 0, nil
}

// Message is one MQTT publication of an update.
type Message struct {
	Topic   string
	Payload []byte
}

// PublishConfig configures [Publish].
type PublishConfig struct {
	Topic     string           // full topic name for every message; required
	Name      string           // firmware name, e.g. "sensor-fw"; required
	Version   string           // dotted decimal; required
	ChunkSize int              // zero: DefaultChunkSize; at most MaxChunkSize
	Signer    *e2e.Signer      // signs the manifest; required
	Sealer    e2e.Sealer       // encrypts every message; required
	Now       func() time.Time // nil: time.Now
}

// Publish returns the messages of an update, manifest first, then the
// chunks in order. Publish them in this order on cfg.Topic.
func Publish(cfg PublishConfig, firmware []byte) ([]Message, error) {
	var errs []error
	if cfg.Topic == "" {
		errs = append(errs, errors.New("ota: PublishConfig.Topic is required"))
	}
	if cfg.Name == "" || len(cfg.Name) > 256 {
		errs = append(errs, errors.New("ota: PublishConfig.Name is required (at most 256 bytes)"))
	}
	if _, err := parseVersion(cfg.Version); err != nil {
		errs = append(errs, err)
	}
	if cfg.ChunkSize < 0 || cfg.ChunkSize > MaxChunkSize {
		errs = append(errs, fmt.Errorf("ota: chunk size must be 1 to %d", MaxChunkSize))
	}
	if len(firmware) == 0 {
		errs = append(errs, errors.New("ota: empty firmware image"))
	}
	if cfg.Signer == nil {
		errs = append(errs, errors.New("ota: PublishConfig.Signer is required: firmware must be signed"))
	}
	if cfg.Sealer == nil {
		errs = append(errs, errors.New("ota: PublishConfig.Sealer is required: firmware must be encrypted"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Manifest{Name: cfg.Name, Version: cfg.Version, Size: uint64(len(firmware)), SHA256: sha256.Sum256(firmware), ChunkSize: uint32(cfg.ChunkSize)}
	for off := 0; off < len(firmware); off += cfg.ChunkSize {
		m.ChunkHashes = append(m.ChunkHashes, sha256.Sum256(firmware[off:min(off+cfg.ChunkSize, len(firmware))]))
	}
	signed, err := cfg.Signer.SignPayload(manifestContext, cfg.Now(), m.marshal())
	if err != nil {
		return nil, err
	}
	mid := sha256.Sum256(signed)
	inner := format.AppendArray(nil, 2)
	inner = format.AppendUint(inner, kindManifest)
	inner = format.AppendBytes(inner, signed)
	sealed, err := cfg.Sealer.Seal(cfg.Topic, inner)
	if err != nil {
		return nil, err
	}
	msgs := []Message{{Topic: cfg.Topic, Payload: sealed}}
	for i := range m.ChunkHashes {
		off := i * cfg.ChunkSize
		c := format.AppendArray(nil, 4)
		c = format.AppendUint(c, kindChunk)
		c = format.AppendBytes(c, mid[:])
		c = format.AppendUint(c, uint64(i))
		c = format.AppendBytes(c, firmware[off:min(off+cfg.ChunkSize, len(firmware))])
		sealed, err := cfg.Sealer.Seal(cfg.Topic, c)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, Message{Topic: cfg.Topic, Payload: sealed})
	}
	return msgs, nil
}

// ReceiverConfig configures a [Receiver].
type ReceiverConfig struct {
	// Opener decrypts messages. Required. Its MaxAge bounds how late a
	// chunk may arrive.
	Opener e2e.Opener
	// Trust holds the certificates allowed to sign firmware. Required.
	Trust *e2e.TrustStore
	// Installed is the installed version; only a newer one is accepted.
	// Empty accepts any version.
	Installed string
	// Name, when set, must equal the manifest's firmware name.
	Name string
	// MaxSize bounds the image size; zero means DefaultMaxSize.
	MaxSize uint64
}

// Receiver reassembles one update. It is safe for concurrent use.
type Receiver struct {
	cfg      ReceiverConfig
	mu       sync.Mutex
	manifest *Manifest
	mid      [32]byte
	chunks   [][]byte
	have     int
}

// NewReceiver validates cfg and returns a receiver.
func NewReceiver(cfg ReceiverConfig) (*Receiver, error) {
	var errs []error
	if cfg.Opener == nil {
		errs = append(errs, errors.New("ota: ReceiverConfig.Opener is required"))
	}
	if cfg.Trust == nil {
		errs = append(errs, errors.New("ota: ReceiverConfig.Trust is required: firmware signatures must be checked"))
	}
	if cfg.Installed != "" {
		if _, err := parseVersion(cfg.Installed); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.MaxSize == 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	return &Receiver{cfg: cfg}, nil
}

// Handle processes one received message. It returns true once every chunk
// has arrived; then call Image.
func (r *Receiver) Handle(topic string, payload []byte) (bool, error) {
	msg, err := r.cfg.Opener.Open(topic, payload)
	if err != nil {
		return false, err
	}
	d := format.NewDecoder(msg.Plaintext)
	n, err := d.Array()
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	kind, err := d.Uint()
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case kind == kindManifest && n == 2:
		signed, err := d.Bytes(-1)
		if err != nil || d.Finish() != nil {
			return false, fmt.Errorf("%w: manifest message", ErrMalformed)
		}
		return false, r.handleManifest(signed)
	case kind == kindChunk && n == 4:
		mid, err := d.Bytes(32)
		if err != nil {
			return false, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		idx, err := d.Uint()
		if err != nil {
			return false, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		data, err := d.Bytes(MaxChunkSize)
		if err != nil || d.Finish() != nil {
			return false, fmt.Errorf("%w: chunk message", ErrMalformed)
		}
		return r.handleChunk(mid, idx, data)
	}
	return false, fmt.Errorf("%w: unknown message kind %d", ErrMalformed, kind)
}

func (r *Receiver) handleManifest(signed []byte) error {
	payload, cert, at, err := r.cfg.Trust.VerifyPayload(manifestContext, signed)
	if err != nil {
		return fmt.Errorf("%w: manifest: %v", ErrTampered, err)
	}
	m, err := parseManifest(payload, r.cfg.MaxSize)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return err
		}
		return fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	if r.cfg.Name != "" && m.Name != r.cfg.Name {
		return fmt.Errorf("%w: firmware %q is not %q", ErrTampered, m.Name, r.cfg.Name)
	}
	if r.cfg.Installed != "" {
		if c, _ := CompareVersions(m.Version, r.cfg.Installed); c <= 0 {
			return fmt.Errorf("%w: offered %s, installed %s", ErrDowngrade, m.Version, r.cfg.Installed)
		}
	}
	mid := sha256.Sum256(signed)
	if r.manifest != nil {
		if mid == r.mid {
			return nil // repeated manifest
		}
		if c, _ := CompareVersions(m.Version, r.manifest.Version); c <= 0 {
			return fmt.Errorf("%w: offered %s while receiving %s", ErrDowngrade, m.Version, r.manifest.Version)
		}
	}
	m.Signer, m.SignedAt = cert, at
	r.manifest, r.mid = m, mid
	r.chunks = make([][]byte, len(m.ChunkHashes))
	r.have = 0
	return nil
}

func (r *Receiver) handleChunk(mid []byte, idx uint64, data []byte) (bool, error) {
	if r.manifest == nil {
		return false, ErrNoManifest
	}
	if !bytes.Equal(mid, r.mid[:]) {
		return false, fmt.Errorf("%w: chunk belongs to another manifest", ErrTampered)
	}
	if idx >= uint64(len(r.chunks)) {
		return false, fmt.Errorf("%w: chunk %d of %d", ErrMalformed, idx, len(r.chunks))
	}
	if sha256.Sum256(data) != r.manifest.ChunkHashes[idx] {
		return false, fmt.Errorf("%w: chunk %d hash mismatch", ErrTampered, idx)
	}
	if r.chunks[idx] == nil {
		r.chunks[idx] = bytes.Clone(data)
		r.have++
	}
	return r.have == len(r.chunks), nil
}

// Manifest returns the verified manifest, or nil before one arrived.
func (r *Receiver) Manifest() *Manifest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.manifest
}

// Image returns the reassembled image after checking its size and hash.
// It fails with ErrIncomplete (naming the missing chunks) until every
// chunk has arrived.
func (r *Receiver) Image() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.manifest == nil {
		return nil, ErrNoManifest
	}
	if r.have != len(r.chunks) {
		var missing []string
		for i, c := range r.chunks {
			if c == nil && len(missing) < 10 {
				missing = append(missing, strconv.Itoa(i))
			}
		}
		return nil, fmt.Errorf("%w: %d of %d chunks received (missing %s…)", ErrIncomplete, r.have, len(r.chunks), strings.Join(missing, ","))
	}
	img := make([]byte, 0, r.manifest.Size)
	for _, c := range r.chunks {
		img = append(img, c...)
	}
	if uint64(len(img)) != r.manifest.Size || sha256.Sum256(img) != r.manifest.SHA256 {
		return nil, fmt.Errorf("%w: image hash or size mismatch", ErrTampered)
	}
	return img, nil
}
