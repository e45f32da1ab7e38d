package e2e

import (
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/moatmq/moat/e2e/internal/format"
)

// Defaults of [OpenerConfig].
const (
	DefaultMaxAge         = 5 * time.Minute
	DefaultMaxRetainedAge = 24 * time.Hour
	DefaultMaxSkew        = 30 * time.Second
	DefaultMaxSenders     = 65536
	// ReplayWindow is the number of sequence numbers below the highest seen
	// that may still arrive out of order.
	ReplayWindow = 64
)

// Message is an opened message.
type Message struct {
	Topic     string
	Plaintext []byte
	Group     string // key group; empty for raw messages
	Epoch     uint64
	Sender    string // sender ID; empty for raw messages
	Seq       uint64
	Time      time.Time // protected timestamp; zero for raw messages
	// Retained reports that the sender marked the message retained
	// (SealRetained); it was opened under the retained-message rules.
	Retained bool
	// Signer is the verified signer's certificate, nil when unsigned.
	Signer *x509.Certificate
}

// OpenerConfig configures a [GroupOpener].
type OpenerConfig struct {
	// Keys finds the key of a sender epoch. Required.
	Keys OpenKeys
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// MaxAge refuses messages whose timestamp is older (ErrTooOld). Zero
	// means DefaultMaxAge; negative disables the check.
	MaxAge time.Duration
	// MaxRetainedAge is MaxAge for messages their sender marked retained
	// (GroupSealer.SealRetained). Zero means DefaultMaxRetainedAge;
	// negative disables the check.
	MaxRetainedAge time.Duration
	// MaxSkew is how far in the future a timestamp may be
	// (ErrFromFuture). Zero means DefaultMaxSkew.
	MaxSkew time.Duration
	// MaxSenders bounds the replay state (and, separately, the state of
	// retained messages per sender and topic); zero means
	// DefaultMaxSenders. When full, the state of an arbitrary sender is
	// dropped, which lets that sender's messages be replayed within MaxAge
	// (MaxRetainedAge).
	MaxSenders int
	// Trust verifies signed messages. A signed message is refused with
	// ErrBadSignature when Trust is nil.
	Trust *TrustStore
	// RequireSignature refuses unsigned messages (ErrUnsigned).
	RequireSignature bool
}

// GroupOpener opens messages sealed with group epoch keys and keeps a
// replay window per sender. It is safe for concurrent use.
type GroupOpener struct {
	cfg    OpenerConfig
	topics topicChecks // validated topic names and their topic checks
	mu     sync.Mutex
	replay map[string]*window
	// retained holds, per sender stream and topic, the highest sequence
	// number of a retained-marked message opened.
	retained map[string]uint64
}

type window struct {
	max    uint64
	bitmap uint64 // bit i: max-i seen
}

// NewGroupOpener validates cfg and returns an opener.
func NewGroupOpener(cfg OpenerConfig) (*GroupOpener, error) {
	var errs []error
	if cfg.Keys == nil {
		errs = append(errs, errors.New("e2e: OpenerConfig.Keys is required (a *Keyring filled from a key bundle)"))
	}
	if cfg.MaxSkew < 0 {
		errs = append(errs, errors.New("e2e: OpenerConfig.MaxSkew must not be negative"))
	}
	if cfg.MaxSenders < 0 {
		errs = append(errs, errors.New("e2e: OpenerConfig.MaxSenders must not be negative"))
	}
	if cfg.RequireSignature && cfg.Trust == nil {
		errs = append(errs, errors.New("e2e: OpenerConfig.RequireSignature needs a Trust store of sender certificates"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.MaxRetainedAge == 0 {
		cfg.MaxRetainedAge = DefaultMaxRetainedAge
	}
	if cfg.MaxSkew == 0 {
		cfg.MaxSkew = DefaultMaxSkew
	}
	if cfg.MaxSenders == 0 {
		cfg.MaxSenders = DefaultMaxSenders
	}
	return &GroupOpener{cfg: cfg, replay: make(map[string]*window), retained: make(map[string]uint64)}, nil
}

// Open decrypts msg received on topic (the full topic name, after any
// topic alias is resolved), checks its age, verifies its signature if it
// has one, and checks it against replays.
//
// The rules depend on the message's authenticated header, never on the
// transport's retain flag (which anyone who can publish may set on a
// captured message). A message its sender sealed with SealRetained may be
// up to MaxRetainedAge old, and it opens only if its sequence number is
// above that of every retained-marked message already opened from the
// same sender on the same topic: each retained message opens at most once
// per GroupOpener, and never after a newer one. Any other message may be
// up to MaxAge old and is checked against the sender's replay window.
func (o *GroupOpener) Open(topic string, msg []byte) (*Message, error) {
	return o.open(topic, msg)
}

func (o *GroupOpener) open(topic string, msg []byte) (*Message, error) {
	ti, err := o.topics.check(topic)
	if err != nil {
		return nil, err
	}
	protected, ct, err := format.ParseEncrypt0(msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	h, err := format.ParseHeader(protected)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(ct) < tagSize {
		return nil, wrapf(ErrMalformed, "ciphertext shorter than the GCM tag")
	}
	if subtle.ConstantTimeCompare(ti.check[:], h.TopicCheck) != 1 {
		return nil, wrapf(ErrWrongTopic, "message was sealed for another topic than %q", topic)
	}
	var key *SenderKey
	if ring, ok := o.cfg.Keys.(*Keyring); ok {
		key, err = ring.openKeyBytes(h.Group, h.Epoch, h.Sender)
	} else {
		key, err = o.cfg.Keys.OpenKey(string(h.Group), h.Epoch, string(h.Sender))
	}
	if err != nil {
		return nil, err
	}
	group, sender := key.group, key.sender
	now := o.cfg.Now()
	if !key.notAfter.IsZero() && now.After(key.notAfter) {
		return nil, wrapf(ErrUnknownEpoch, "group %q epoch %d was retired at %s", group, h.Epoch, key.notAfter.UTC().Format(time.RFC3339))
	}
	if !o.topics.match(ti, key.filter, topic) { // MatchTopic, remembered
		return nil, wrapf(ErrWrongTopic, "group %q (filter %q) does not cover topic %q", group, key.filter, topic)
	}
	sc := scratchPool.Get().(*scratch)
	var aad []byte
	if key.epoch == h.Epoch {
		aad = appendKeyAAD(sc.aad[:0], protected, topic, key)
	} else {
		// Only a custom OpenKeys can return a key of another epoch than
		// the one asked for; the header's epoch is bound, as always.
		aad = appendEncAAD(sc.aad[:0], protected, topic, group, h.Epoch, sender)
	}
	key.nonce(&sc.nonce, h.Seq)
	pt, err := key.aead.Open(nil, sc.nonce[:], ct, aad)
	scratchPool.Put(sc)
	if err != nil {
		return nil, wrapf(ErrTampered, "group %q epoch %d sender %q seq %d", group, h.Epoch, sender, h.Seq)
	}
	ts := time.UnixMilli(h.TimeMillis)
	maxAge := o.cfg.MaxAge
	if h.Retained {
		maxAge = o.cfg.MaxRetainedAge
	}
	if maxAge >= 0 && now.Sub(ts) > maxAge {
		return nil, wrapf(ErrTooOld, "sent %s, %s ago (maximum %s)", ts.UTC().Format(time.RFC3339Nano), now.Sub(ts).Round(time.Millisecond), maxAge)
	}
	if !key.sealUntil.IsZero() && ts.After(key.sealUntil) {
		return nil, wrapf(ErrSuperseded, "group %q epoch %d: sealed %s, after its writers' grace ended at %s (the sender has not applied its new key bundle)",
			group, h.Epoch, ts.UTC().Format(time.RFC3339), key.sealUntil.UTC().Format(time.RFC3339))
	}
	if ts.Sub(now) > o.cfg.MaxSkew {
		return nil, wrapf(ErrFromFuture, "sent %s, %s ahead of the local clock", ts.UTC().Format(time.RFC3339Nano), ts.Sub(now).Round(time.Millisecond))
	}
	m := &Message{Topic: topic, Plaintext: pt, Group: group, Epoch: h.Epoch, Sender: sender, Seq: h.Seq, Time: ts, Retained: h.Retained}
	if h.ContentType == format.ContentTypeSign1 {
		if o.cfg.Trust == nil {
			return nil, wrapf(ErrBadSignature, "message is signed but no trust store is configured")
		}
		payload, cert, err := o.cfg.Trust.verifyMessage(pt, topic, h.TimeMillis, sender)
		if err != nil {
			return nil, err
		}
		m.Plaintext, m.Signer = payload, cert
	} else if o.cfg.RequireSignature {
		return nil, wrapf(ErrUnsigned, "sender %q on %q", sender, topic)
	}
	if h.Retained {
		err = o.checkRetained(key.stream+"\x00"+topic, h.Seq)
	} else {
		err = o.checkReplay(key.stream, h.Seq)
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

// checkRetained accepts seq for a retained-marked message of a stream on a
// topic only above every one accepted before, and records it.
func (o *GroupOpener) checkRetained(key string, seq uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	last, ok := o.retained[key]
	if ok && seq <= last {
		if seq == last {
			return wrapf(ErrReplay, "retained message with sequence number %d was already opened", seq)
		}
		return wrapf(ErrReplay, "retained message with sequence number %d is older than one already opened (%d)", seq, last)
	}
	if !ok && len(o.retained) >= o.cfg.MaxSenders {
		for k := range o.retained {
			delete(o.retained, k)
			break
		}
	}
	o.retained[key] = seq
	return nil
}

// checkReplay checks seq against the stream's window and records it.
func (o *GroupOpener) checkReplay(stream string, seq uint64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	w := o.replay[stream]
	if w == nil {
		if len(o.replay) >= o.cfg.MaxSenders {
			for k := range o.replay {
				delete(o.replay, k)
				break
			}
		}
		o.replay[stream] = &window{max: seq, bitmap: 1}
		return nil
	}
	if seq > w.max {
		shift := seq - w.max
		if shift >= ReplayWindow {
			w.bitmap = 1
		} else {
			w.bitmap = w.bitmap<<shift | 1
		}
		w.max = seq
		return nil
	}
	diff := w.max - seq
	if diff >= ReplayWindow {
		return wrapf(ErrReplay, "sequence number %d is below the replay window (highest seen %d)", seq, w.max)
	}
	if w.bitmap&(1<<diff) != 0 {
		return wrapf(ErrReplay, "sequence number %d was already received", seq)
	}
	w.bitmap |= 1 << diff
	return nil
}
