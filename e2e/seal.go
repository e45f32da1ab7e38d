package e2e

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/moatmq/moat/e2e/internal/format"
)

// Sealer encrypts a payload for a topic. Implementations are safe for
// concurrent use.
type Sealer interface {
	Seal(topic string, plaintext []byte) ([]byte, error)
}

// Opener decrypts and authenticates a payload received on a topic.
// Implementations are safe for concurrent use.
type Opener interface {
	Open(topic string, msg []byte) (*Message, error)
}

var (
	_ Sealer = (*GroupSealer)(nil)
	_ Opener = (*GroupOpener)(nil)
)

// aadContext is the first element of the external AAD; it versions the
// format and separates it from every other use of the keys.
const aadContext = "moat-e2e/1"

// DefaultSequenceBlock is the number of sequence numbers reserved at once.
const DefaultSequenceBlock = 1024

// SealerConfig configures a [GroupSealer].
type SealerConfig struct {
	// Sender is this sender's ID, normally its certificate identity
	// (see [CertIdentity]). Required.
	Sender string
	// Keys provides the current key for a topic. Required; a *Keyring
	// filled from key bundles is the usual choice.
	Keys SendKeys
	// Sequence persists sequence numbers. Required: use
	// OpenFileSequenceStore, so a restart never reuses a nonce.
	Sequence SequenceStore
	// Block is the number of sequence numbers reserved at a time; zero
	// means DefaultSequenceBlock. Up to Block numbers are skipped after a
	// restart.
	Block uint64
	// Signer, when set, signs every message (sign then encrypt).
	Signer *Signer
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// GroupSealer seals messages with group epoch keys. It is safe for
// concurrent use.
type GroupSealer struct {
	cfg     SealerConfig
	topics  topicChecks // validated topic names and their topic checks
	mu      sync.Mutex
	streams map[string]*seqBlock
}

type seqBlock struct{ next, limit uint64 }

// NewGroupSealer validates cfg and returns a sealer.
func NewGroupSealer(cfg SealerConfig) (*GroupSealer, error) {
	var errs []error
	if err := validSender(cfg.Sender); err != nil {
		errs = append(errs, fmt.Errorf("e2e: SealerConfig.Sender: %w", err))
	}
	if cfg.Keys == nil {
		errs = append(errs, errors.New("e2e: SealerConfig.Keys is required (a *Keyring filled from a key bundle)"))
	}
	if cfg.Sequence == nil {
		errs = append(errs, errors.New("e2e: SealerConfig.Sequence is required: use OpenFileSequenceStore(path) so a restart never reuses a nonce"))
	}
	if cfg.Signer != nil && cfg.Signer.Identity() != cfg.Sender {
		errs = append(errs, fmt.Errorf("e2e: signer certificate identity %q does not match sender %q", cfg.Signer.Identity(), cfg.Sender))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Block == 0 {
		cfg.Block = DefaultSequenceBlock
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &GroupSealer{cfg: cfg, streams: make(map[string]*seqBlock)}, nil
}

func (s *GroupSealer) nextSeq(stream string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.streams[stream]
	if b == nil {
		b = &seqBlock{}
		s.streams[stream] = b
	}
	if b.next >= b.limit {
		start, err := s.cfg.Sequence.Reserve(stream, s.cfg.Block)
		if err != nil {
			return 0, fmt.Errorf("e2e: reserving sequence numbers: %w", err)
		}
		b.next, b.limit = start, start+s.cfg.Block
	}
	seq := b.next
	b.next++
	return seq, nil
}

// Seal encrypts plaintext for topic, a full topic name (never an alias),
// with the current key of the group that covers it.
func (s *GroupSealer) Seal(topic string, plaintext []byte) ([]byte, error) {
	return s.seal(topic, plaintext, false)
}

// SealRetained is Seal for a message to be published with the MQTT retain
// flag: the protected header marks it retained, so that receivers open it
// under the retained-message rules (see [GroupOpener.Open]). The marker is
// authenticated; the transport's retain flag is never trusted.
func (s *GroupSealer) SealRetained(topic string, plaintext []byte) ([]byte, error) {
	return s.seal(topic, plaintext, true)
}

func (s *GroupSealer) seal(topic string, plaintext []byte, retained bool) ([]byte, error) {
	ti, err := s.topics.check(topic)
	if err != nil {
		return nil, err
	}
	key, err := s.cfg.Keys.SendKey(topic, s.cfg.Sender)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	if !key.sealUntil.IsZero() && now.After(key.sealUntil) {
		return nil, wrapf(ErrSuperseded, "group %q epoch %d was superseded and its writers' grace ended at %s; fetch the new key bundle",
			key.group, key.epoch, key.sealUntil.UTC().Format(time.RFC3339))
	}
	seq, err := s.nextSeq(key.stream)
	if err != nil {
		return nil, err
	}
	ms := now.UnixMilli()
	var ct uint64
	if s.cfg.Signer != nil {
		plaintext, err = s.cfg.Signer.signMessage(topic, ms, plaintext)
		if err != nil {
			return nil, err
		}
		ct = format.ContentTypeSign1
	}
	return seal(key, topic, &ti.check, seq, ms, ct, retained, plaintext), nil
}

// sealWith builds the COSE_Encrypt0 for one message.
func sealWith(key *SenderKey, topic string, seq uint64, ms int64, contentType uint64, plaintext []byte) []byte {
	tc := computeTopicCheck(topic)
	return seal(key, topic, &tc, seq, ms, contentType, false, plaintext)
}

// seal is sealWith given the topic check of topic.
func seal(key *SenderKey, topic string, tc *topicCheck, seq uint64, ms int64, contentType uint64, retained bool, plaintext []byte) []byte {
	h := format.Header{
		Retained:    retained,
		ContentType: contentType,
		Sender:      []byte(key.sender),
		Seq:         seq,
		Group:       []byte(key.group),
		Epoch:       key.epoch,
		TimeMillis:  ms,
		TopicCheck:  tc[:],
	}
	var hbuf [160]byte
	protected := format.AppendHeader(hbuf[:0], &h)
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	aad := appendKeyAAD(sc.aad[:0], protected, topic, key)

	ctLen := len(plaintext) + tagSize
	out := make([]byte, 0, 16+len(protected)+ctLen)
	out = format.AppendTag(out, format.TagEncrypt0)
	out = format.AppendArray(out, 3)
	out = format.AppendBytes(out, protected)
	out = format.AppendMap(out, 0)
	out = format.AppendBytesHead(out, ctLen)
	key.nonce(&sc.nonce, seq)
	return key.aead.Seal(out, sc.nonce[:], plaintext, aad)
}

// scratch holds per-call buffers that would otherwise escape to the heap
// through the cipher.AEAD interface.
type scratch struct {
	aad   [512]byte
	nonce [nonceSize]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Constant beginnings of the Enc_structure and of the external AAD.
var (
	encStructPrefix = format.AppendText(format.AppendArray(nil, 3), "Encrypt0")
	extAADPrefix    = format.AppendText(format.AppendArray(nil, 5), aadContext)
)

// appendKeyAAD appends the same bytes as appendEncAAD for a message under
// key, faster: everything but the protected header and the topic is either
// constant or precomputed in the key.
func appendKeyAAD(b, protected []byte, topic string, key *SenderKey) []byte {
	extLen := len(extAADPrefix) + format.HeadLen(uint64(len(topic))) + len(topic) + len(key.aadTail)
	b = append(b, encStructPrefix...)
	b = format.AppendBytes(b, protected)
	b = format.AppendBytesHead(b, extLen)
	b = append(b, extAADPrefix...)
	b = format.AppendText(b, topic)
	return append(b, key.aadTail...)
}

// appendEncAAD appends the Enc_structure with Moat's external AAD:
// ["moat-e2e/1", topic, group, epoch, sender]. It is the reference
// appendKeyAAD is tested against.
func appendEncAAD(b, protected []byte, topic, group string, epoch uint64, sender string) []byte {
	var ebuf [384]byte
	ext := format.AppendArray(ebuf[:0], 5)
	ext = format.AppendText(ext, aadContext)
	ext = format.AppendText(ext, topic)
	ext = format.AppendText(ext, group)
	ext = format.AppendUint(ext, epoch)
	ext = format.AppendBytes(ext, []byte(sender))
	return format.AppendEncStructure(b, protected, ext)
}
