package e2e

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/moatmq/moat/e2e/internal/format"
)

// KeySize is the size of an epoch secret and of an AES-256 key.
const KeySize = 32

const (
	nonceSize = 12
	tagSize   = 16
	// senderKeyInfo labels the HKDF derivation of a sender key.
	senderKeyInfo = "moat-e2e/1 sender key"
)

// EpochKey is the secret of one epoch of a key group. Readers of the group
// hold it and derive from it the sender key of every writer; the key
// service holds it wrapped under its KEK. An EpochKey is immutable and safe
// for concurrent use. Its secret is never printed.
type EpochKey struct {
	group   string
	filter  string
	epoch   uint64
	secret  [KeySize]byte
	writers []string
	// notAfter is the end of the grace period of a superseded epoch; zero
	// for the current epoch.
	notAfter time.Time
	// sealUntil is the end of the writers' grace of a superseded epoch:
	// no message of this epoch sealed later is sealed or opened. Zero:
	// not set (the current epoch, or a key service that sets none).
	sealUntil time.Time
}

// NewEpochKey returns the key of epoch epoch of group, a key group that
// covers the topics matching filter (an MQTT topic filter). writers lists
// the sender IDs allowed to write (empty: any holder of the key); notAfter
// is the end of the grace period of a superseded epoch (zero: current).
// secret must be KeySize bytes; it is copied.
func NewEpochKey(group, filter string, epoch uint64, secret []byte, writers []string, notAfter time.Time) (*EpochKey, error) {
	if err := validGroup(group); err != nil {
		return nil, err
	}
	if err := ValidFilter(filter); err != nil {
		return nil, err
	}
	if len(secret) != KeySize {
		return nil, fmt.Errorf("e2e: epoch secret must be %d bytes, got %d", KeySize, len(secret))
	}
	k := &EpochKey{group: group, filter: filter, epoch: epoch, writers: slices.Clone(writers), notAfter: notAfter}
	copy(k.secret[:], secret)
	slices.Sort(k.writers)
	return k, nil
}

// WithSealUntil returns a copy of k whose messages sealed after t are
// neither sealed nor opened (ErrSuperseded): the key service sets t to the
// time the epoch was superseded plus the writers' grace. Zero clears it.
func (k *EpochKey) WithSealUntil(t time.Time) *EpochKey {
	c := *k
	c.writers = slices.Clone(k.writers)
	c.sealUntil = t
	return &c
}

// SealUntil returns the end of the writers' grace (zero: not set).
func (k *EpochKey) SealUntil() time.Time { return k.sealUntil }

// Group returns the key group name.
func (k *EpochKey) Group() string { return k.group }

// Filter returns the topic filter the group covers.
func (k *EpochKey) Filter() string { return k.filter }

// Epoch returns the epoch number.
func (k *EpochKey) Epoch() uint64 { return k.epoch }

// Writers returns the sender IDs allowed to write (nil: any key holder).
func (k *EpochKey) Writers() []string { return slices.Clone(k.writers) }

// NotAfter returns the end of the grace period (zero: current epoch).
func (k *EpochKey) NotAfter() time.Time { return k.notAfter }

// Secret returns a copy of the epoch secret. Only key services and
// persistence code need it.
func (k *EpochKey) Secret() []byte { return slices.Clone(k.secret[:]) }

// String describes the key without its secret.
func (k *EpochKey) String() string {
	return fmt.Sprintf("EpochKey(group=%q epoch=%d secret=REDACTED)", k.group, k.epoch)
}

// IsWriter reports whether sender may write with this key.
func (k *EpochKey) IsWriter(sender string) bool {
	if len(k.writers) == 0 {
		return true
	}
	_, ok := slices.BinarySearch(k.writers, sender)
	return ok
}

// SenderKey derives the key and IV that sender uses in this epoch.
func (k *EpochKey) SenderKey(sender string) (*SenderKey, error) {
	if err := validSender(sender); err != nil {
		return nil, err
	}
	info := format.AppendArray(nil, 4)
	info = format.AppendText(info, senderKeyInfo)
	info = format.AppendText(info, k.group)
	info = format.AppendUint(info, k.epoch)
	info = format.AppendBytes(info, []byte(sender))
	okm, err := hkdf.Key(sha256.New, k.secret[:], nil, string(info), KeySize+nonceSize)
	if err != nil {
		return nil, fmt.Errorf("e2e: deriving sender key: %w", err)
	}
	sk, err := newSenderKey(k.group, k.filter, k.epoch, sender, okm, k.notAfter)
	if err != nil {
		return nil, err
	}
	sk.sealUntil = k.sealUntil
	return sk, nil
}

// SenderKey is the key and IV one sender uses in one epoch of a group.
// Writers that are not readers hold only their own SenderKey. A SenderKey
// is immutable and safe for concurrent use; its secret is never printed.
type SenderKey struct {
	group, filter string
	epoch         uint64
	sender        string
	material      [KeySize + nonceSize]byte
	iv            [nonceSize]byte
	aead          cipher.AEAD
	notAfter      time.Time
	sealUntil     time.Time // see EpochKey.sealUntil
	stream        string    // group NUL sender: the sequence and replay stream
	// aadTail is the end of the external AAD, the same for every message
	// under this key: group, epoch and sender (see appendKeyAAD).
	aadTail []byte
}

// NewSenderKey returns a sender key from its KeySize+12 bytes of key
// material (key ‖ IV), as derived by [EpochKey.SenderKey].
func NewSenderKey(group, filter string, epoch uint64, sender string, material []byte, notAfter time.Time) (*SenderKey, error) {
	if err := validGroup(group); err != nil {
		return nil, err
	}
	if err := ValidFilter(filter); err != nil {
		return nil, err
	}
	if err := validSender(sender); err != nil {
		return nil, err
	}
	if len(material) != KeySize+nonceSize {
		return nil, fmt.Errorf("e2e: sender key material must be %d bytes, got %d", KeySize+nonceSize, len(material))
	}
	return newSenderKey(group, filter, epoch, sender, material, notAfter)
}

func newSenderKey(group, filter string, epoch uint64, sender string, material []byte, notAfter time.Time) (*SenderKey, error) {
	block, err := aes.NewCipher(material[:KeySize])
	if err != nil {
		return nil, fmt.Errorf("e2e: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("e2e: %w", err)
	}
	sk := &SenderKey{group: group, filter: filter, epoch: epoch, sender: sender, aead: aead, notAfter: notAfter, stream: group + "\x00" + sender}
	copy(sk.material[:], material)
	copy(sk.iv[:], material[KeySize:])
	sk.aadTail = format.AppendText(nil, group)
	sk.aadTail = format.AppendUint(sk.aadTail, epoch)
	sk.aadTail = format.AppendBytes(sk.aadTail, []byte(sender))
	return sk, nil
}

// WithSealUntil returns a copy of k whose messages sealed after t are
// neither sealed nor opened (see EpochKey.WithSealUntil).
func (k *SenderKey) WithSealUntil(t time.Time) *SenderKey {
	c := *k
	c.sealUntil = t
	return &c
}

// SealUntil returns the end of the writers' grace (zero: not set).
func (k *SenderKey) SealUntil() time.Time { return k.sealUntil }

// Group returns the key group name.
func (k *SenderKey) Group() string { return k.group }

// Filter returns the topic filter the group covers.
func (k *SenderKey) Filter() string { return k.filter }

// Epoch returns the epoch number.
func (k *SenderKey) Epoch() uint64 { return k.epoch }

// Sender returns the sender ID.
func (k *SenderKey) Sender() string { return k.sender }

// NotAfter returns the end of the grace period (zero: current epoch).
func (k *SenderKey) NotAfter() time.Time { return k.notAfter }

// Material returns a copy of the key material (key ‖ IV).
func (k *SenderKey) Material() []byte { return slices.Clone(k.material[:]) }

// String describes the key without its secret.
func (k *SenderKey) String() string {
	return fmt.Sprintf("SenderKey(group=%q epoch=%d sender=%q secret=REDACTED)", k.group, k.epoch, k.sender)
}

// Equal reports whether two sender keys are the same, in constant time for
// the key material.
func (k *SenderKey) Equal(o *SenderKey) bool {
	return k.group == o.group && k.epoch == o.epoch && k.sender == o.sender &&
		subtle.ConstantTimeCompare(k.material[:], o.material[:]) == 1
}

// nonce computes IV XOR (0⁴ ‖ seq as 8 big-endian bytes).
func (k *SenderKey) nonce(dst *[nonceSize]byte, seq uint64) {
	*dst = k.iv
	for i := 0; i < 8; i++ {
		dst[nonceSize-1-i] ^= byte(seq >> (8 * i))
	}
}

// SendKeys finds the key a sender seals with on a topic. [Keyring]
// implements it.
type SendKeys interface {
	SendKey(topic, sender string) (*SenderKey, error)
}

// OpenKeys finds the key of a sender in a group epoch. [Keyring]
// implements it. It returns an error wrapping [ErrUnknownEpoch] when it
// holds no such key.
type OpenKeys interface {
	OpenKey(group string, epoch uint64, sender string) (*SenderKey, error)
}

var (
	_ SendKeys = (*Keyring)(nil)
	_ OpenKeys = (*Keyring)(nil)
)

// Keyring holds the epoch keys and sender keys of a member. The zero value
// is an empty keyring ready to use; it is safe for concurrent use.
type Keyring struct {
	mu      sync.RWMutex
	epochs  map[groupEpoch]*EpochKey
	senders map[senderID]*SenderKey // explicit sender keys (writers)
	derived map[senderID]*SenderKey // cache of keys derived from epochs
	sends   map[topicSender]*SenderKey
	serial  uint64 // highest bundle serial applied
}

type topicSender struct{ topic, sender string }

type groupEpoch struct {
	group string
	epoch uint64
}

type senderID struct {
	group  string
	epoch  uint64
	sender string
}

const maxDerivedCache = 4096

// AddEpochKey adds or replaces an epoch key.
func (r *Keyring) AddEpochKey(k *EpochKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epochs == nil {
		r.epochs = make(map[groupEpoch]*EpochKey)
	}
	r.epochs[groupEpoch{k.group, k.epoch}] = k
	r.derived, r.sends = nil, nil
}

// AddSenderKey adds or replaces a sender key.
func (r *Keyring) AddSenderKey(k *SenderKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.senders == nil {
		r.senders = make(map[senderID]*SenderKey)
	}
	r.senders[senderID{k.group, k.epoch, k.sender}] = k
	r.sends = nil
}

// EpochKeys returns the epoch keys held, sorted by group and epoch.
func (r *Keyring) EpochKeys() []*EpochKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*EpochKey, 0, len(r.epochs))
	for _, k := range r.epochs {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b *EpochKey) int {
		if c := strings.Compare(a.group, b.group); c != 0 {
			return c
		}
		return cmpUint(a.epoch, b.epoch)
	})
	return out
}

// SenderKeys returns the explicit sender keys held, sorted.
func (r *Keyring) SenderKeys() []*SenderKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*SenderKey, 0, len(r.senders))
	for _, k := range r.senders {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b *SenderKey) int {
		if c := strings.Compare(a.group, b.group); c != 0 {
			return c
		}
		if c := cmpUint(a.epoch, b.epoch); c != 0 {
			return c
		}
		return strings.Compare(a.sender, b.sender)
	})
	return out
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// SendKey returns the current key sender seals with on topic: that of the
// newest current epoch of the group whose filter matches topic. When
// several groups match, the one with the most specific filter (fewest
// wildcards, then longest) wins. It returns an error wrapping [ErrNoKey]
// when no held key covers topic.
func (r *Keyring) SendKey(topic, sender string) (*SenderKey, error) {
	r.mu.RLock()
	if k, ok := r.sends[topicSender{topic, sender}]; ok {
		r.mu.RUnlock()
		return k, nil
	}
	var bestSK *SenderKey
	var bestEK *EpochKey
	var bestFilter, bestGroup string
	var bestEpoch uint64
	found := false
	better := func(group, filter string, epoch uint64) bool {
		if !found {
			return true
		}
		if c := moreSpecific(filter, bestFilter); c != 0 {
			return c > 0
		}
		if group != bestGroup {
			return group < bestGroup
		}
		return epoch > bestEpoch
	}
	for _, k := range r.senders {
		if k.sender == sender && k.notAfter.IsZero() && MatchTopic(k.filter, topic) && better(k.group, k.filter, k.epoch) {
			bestSK, bestEK, found = k, nil, true
			bestFilter, bestGroup, bestEpoch = k.filter, k.group, k.epoch
		}
	}
	for _, k := range r.epochs {
		if k.notAfter.IsZero() && k.IsWriter(sender) && MatchTopic(k.filter, topic) && better(k.group, k.filter, k.epoch) {
			bestSK, bestEK, found = nil, k, true
			bestFilter, bestGroup, bestEpoch = k.filter, k.group, k.epoch
		}
	}
	r.mu.RUnlock()
	var key *SenderKey
	switch {
	case !found:
		return nil, wrapf(ErrNoKey, "no current key of a group covering topic %q for sender %q", topic, sender)
	case bestSK != nil:
		key = bestSK
	default:
		var err error
		if key, err = r.derive(bestEK, sender); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	if r.sends == nil || len(r.sends) >= maxDerivedCache {
		r.sends = make(map[topicSender]*SenderKey)
	}
	r.sends[topicSender{topic, sender}] = key
	r.mu.Unlock()
	return key, nil
}

// moreSpecific compares two filters: >0 if a is more specific than b.
func moreSpecific(a, b string) int {
	wa := strings.Count(a, "+") + 2*strings.Count(a, "#")
	wb := strings.Count(b, "+") + 2*strings.Count(b, "#")
	if wa != wb {
		return wb - wa
	}
	return len(a) - len(b)
}

// OpenKey returns the key of sender in the given group epoch, derived from
// the epoch key when one is held.
func (r *Keyring) OpenKey(group string, epoch uint64, sender string) (*SenderKey, error) {
	id := senderID{group, epoch, sender}
	r.mu.RLock()
	if k, ok := r.derived[id]; ok {
		r.mu.RUnlock()
		return k, nil
	}
	ek, ok := r.epochs[groupEpoch{group, epoch}]
	sk, sok := r.senders[id]
	r.mu.RUnlock()
	if ok {
		if !ek.IsWriter(sender) {
			return nil, wrapf(ErrUnknownSender, "sender %q is not a writer of group %q epoch %d", sender, group, epoch)
		}
		return r.derive(ek, sender)
	}
	if sok {
		return sk, nil
	}
	return nil, wrapf(ErrUnknownEpoch, "no key for group %q epoch %d", group, epoch)
}

// openKeyBytes is OpenKey without allocating when the key is cached.
func (r *Keyring) openKeyBytes(group []byte, epoch uint64, sender []byte) (*SenderKey, error) {
	r.mu.RLock()
	k, ok := r.derived[senderID{string(group), epoch, string(sender)}]
	if !ok {
		k, ok = r.senders[senderID{string(group), epoch, string(sender)}]
	}
	r.mu.RUnlock()
	if ok {
		return k, nil
	}
	return r.OpenKey(string(group), epoch, string(sender))
}

func (r *Keyring) derive(ek *EpochKey, sender string) (*SenderKey, error) {
	id := senderID{ek.group, ek.epoch, sender}
	r.mu.RLock()
	k, ok := r.derived[id]
	r.mu.RUnlock()
	if ok {
		return k, nil
	}
	k, err := ek.SenderKey(sender)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if r.derived == nil || len(r.derived) >= maxDerivedCache {
		r.derived = make(map[senderID]*SenderKey)
	}
	r.derived[id] = k
	r.mu.Unlock()
	return k, nil
}

// Prune drops keys whose grace period ended before now.
func (r *Keyring) Prune(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, k := range r.epochs {
		if !k.notAfter.IsZero() && now.After(k.notAfter) {
			delete(r.epochs, id)
		}
	}
	for id, k := range r.senders {
		if !k.notAfter.IsZero() && now.After(k.notAfter) {
			delete(r.senders, id)
		}
	}
	r.derived, r.sends = nil, nil
}

// ValidTopic checks that topic is a valid MQTT topic name to publish on:
// non-empty, UTF-8, no wildcards, no NUL.
func ValidTopic(topic string) error {
	if topic == "" {
		return fmt.Errorf("%w: empty topic name", ErrWrongTopic)
	}
	if len(topic) > 65535 || !utf8.ValidString(topic) || strings.ContainsAny(topic, "+#\x00") {
		return fmt.Errorf("%w: %q is not a valid topic name (wildcards, NUL or bad UTF-8)", ErrWrongTopic, topic)
	}
	return nil
}

// ValidFilter checks that filter is a valid MQTT topic filter.
func ValidFilter(filter string) error {
	if filter == "" || len(filter) > format.MaxGroup || !utf8.ValidString(filter) || strings.Contains(filter, "\x00") {
		return fmt.Errorf("e2e: invalid topic filter %q", filter)
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("e2e: invalid topic filter %q: # must be a whole last level", filter)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("e2e: invalid topic filter %q: + must be a whole level", filter)
		}
	}
	return nil
}

// MatchTopic reports whether the topic name matches the MQTT filter. As in
// MQTT, a filter starting with a wildcard does not match topics starting
// with '$'.
func MatchTopic(filter, topic string) bool {
	if len(topic) > 0 && topic[0] == '$' && len(filter) > 0 && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	f, t := 0, 0
	for {
		// Start of a level in both.
		if f < len(filter) && filter[f] == '#' {
			return true
		}
		if f < len(filter) && filter[f] == '+' {
			f++
			for t < len(topic) && topic[t] != '/' {
				t++
			}
		} else {
			for f < len(filter) && filter[f] != '/' {
				if t >= len(topic) || topic[t] != filter[f] {
					return false
				}
				f++
				t++
			}
			if t < len(topic) && topic[t] != '/' {
				return false
			}
		}
		// Both at the end of a level.
		fEnd, tEnd := f >= len(filter), t >= len(topic)
		switch {
		case fEnd && tEnd:
			return true
		case fEnd:
			return false
		case tEnd:
			// "a/#" matches "a".
			return filter[f+1:] == "#"
		}
		f++
		t++
	}
}

func validGroup(group string) error {
	if group == "" || len(group) > format.MaxGroup || !utf8.ValidString(group) {
		return fmt.Errorf("e2e: invalid group name %q (1 to %d bytes of UTF-8)", group, format.MaxGroup)
	}
	return nil
}

func validSender(sender string) error {
	if sender == "" || len(sender) > format.MaxSenderID || !utf8.ValidString(sender) {
		return fmt.Errorf("e2e: invalid sender ID %q (1 to %d bytes of UTF-8)", sender, format.MaxSenderID)
	}
	return nil
}
