package guard

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"
)

// Ban is one entry of the ban list.
type Ban struct {
	// ID names the ban for `moat ban remove`.
	ID   string `json:"id"`
	Kind Kind   `json:"kind"`
	// Value is the banned identity in its canonical form (Normalize).
	Value string `json:"value"`
	// Reason says why; it is logged with every refusal.
	Reason string `json:"reason"`
	// Source is "manual" or the name of the detector that added the ban.
	Source  string    `json:"source"`
	Created time.Time `json:"created"`
	// Expires is when the ban ends; the zero time never.
	Expires time.Time `json:"expires,omitzero"`
}

// SourceManual marks bans added by an operator.
const SourceManual = "manual"

func (b *Ban) active(now time.Time) bool { return b.Expires.IsZero() || now.Before(b.Expires) }

// Refusal returns the reason to log and send when b refuses a client.
func (b Ban) Refusal() string {
	s := "banned " + string(b.Kind) + " " + clip(b.Value) + " (ban " + b.ID
	if !b.Expires.IsZero() {
		s += ", until " + b.Expires.UTC().Format(time.RFC3339)
	}
	if b.Reason != "" {
		s += ": " + clip(b.Reason)
	}
	return s + ")"
}

// Match is handed to OnBan callbacks when a ban is added: the broker
// disconnects every live client it matches.
type Match struct{ Ban Ban }

// Matches reports whether id is covered by the ban.
func (m Match) Matches(id Identity) bool {
	b := &m.Ban
	switch b.Kind {
	case KindIP:
		p, err := netip.ParsePrefix(b.Value)
		return err == nil && id.Addr.IsValid() && p.Contains(id.Addr.Unmap().WithZone(""))
	case KindClientID:
		return id.ClientID != "" && id.ClientID == b.Value
	case KindUsername:
		return id.Username != "" && id.Username == b.Value
	case KindCertFingerprint:
		return id.CertFingerprint != "" && normHex(id.CertFingerprint) == b.Value
	case KindCertSerial:
		return id.CertSerial != "" && id.CertSerial == b.Value
	}
	return false
}

// newBanID returns a random 16-hex-digit ban ID.
func newBanID(r io.Reader) (string, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("guard: making a ban ID: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Validate checks a ban read from a BanStore other than the bans file
// (the durable store's adapter) as the bans file's entries are checked,
// and puts its value in canonical form.
func (b *Ban) Validate() error { return b.validate() }

// validate checks a ban read from the bans file or given by an operator
// and canonicalizes its value.
func (b *Ban) validate() error {
	if len(b.ID) < 1 || len(b.ID) > 64 || !isHex(b.ID) {
		return fmt.Errorf("guard: ban ID %q is not 1..64 lowercase hex digits", clip(b.ID))
	}
	v, err := Normalize(b.Kind, b.Value)
	if err != nil {
		return fmt.Errorf("ban %s: %w", b.ID, err)
	}
	b.Value = v
	if len(b.Reason) > 1024 || len(b.Source) > 64 {
		return fmt.Errorf("guard: ban %s: reason longer than 1024 bytes or source longer than 64", b.ID)
	}
	return nil
}

// banSet indexes the ban list. It is guarded by Guard.bansMu.
type banSet struct {
	byID   map[string]*Ban
	prefix map[prefixKey][]*Ban
	// lens4 and lens6 count address bans per prefix length, so that a
	// lookup masks the address only to lengths that are in use.
	lens4 [33]int
	lens6 [129]int
	ids   map[Kind]map[string][]*Ban
}

func newBanSet() *banSet {
	return &banSet{
		byID:   map[string]*Ban{},
		prefix: map[prefixKey][]*Ban{},
		ids: map[Kind]map[string][]*Ban{
			KindClientID: {}, KindUsername: {}, KindCertFingerprint: {}, KindCertSerial: {},
		},
	}
}

func (s *banSet) add(b *Ban) {
	if _, dup := s.byID[b.ID]; dup {
		s.remove(b.ID)
	}
	s.byID[b.ID] = b
	if b.Kind == KindIP {
		p, _ := netip.ParsePrefix(b.Value)
		k := prefixKeyOf(p.Addr(), p.Bits())
		s.prefix[k] = append(s.prefix[k], b)
		if p.Addr().Is4() {
			s.lens4[p.Bits()]++
		} else {
			s.lens6[p.Bits()]++
		}
		return
	}
	m := s.ids[b.Kind]
	m[b.Value] = append(m[b.Value], b)
}

func (s *banSet) remove(id string) *Ban {
	b, ok := s.byID[id]
	if !ok {
		return nil
	}
	delete(s.byID, id)
	drop := func(list []*Ban) []*Ban {
		out := list[:0]
		for _, x := range list {
			if x != b {
				out = append(out, x)
			}
		}
		return out
	}
	if b.Kind == KindIP {
		p, _ := netip.ParsePrefix(b.Value)
		k := prefixKeyOf(p.Addr(), p.Bits())
		if l := drop(s.prefix[k]); len(l) > 0 {
			s.prefix[k] = l
		} else {
			delete(s.prefix, k)
		}
		if p.Addr().Is4() {
			s.lens4[p.Bits()]--
		} else {
			s.lens6[p.Bits()]--
		}
		return b
	}
	m := s.ids[b.Kind]
	if l := drop(m[b.Value]); len(l) > 0 {
		m[b.Value] = l
	} else {
		delete(m, b.Value)
	}
	return b
}

// prefixKey is an address masked to bits, in a form cheap to build and
// hash (a lookup masks the address once per prefix length in use).
type prefixKey struct {
	hi, lo uint64
	bits   uint8
	v4     bool
}

func prefixKeyOf(a netip.Addr, bits int) prefixKey {
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	total := bits
	if a.Is4() {
		total += 96
	}
	switch {
	case total <= 0:
		hi, lo = 0, 0
	case total < 64:
		hi &= ^uint64(0) << (64 - total)
		lo = 0
	case total < 128:
		lo &= ^uint64(0) << (128 - total)
	}
	return prefixKey{hi: hi, lo: lo, bits: uint8(bits), v4: a.Is4()}
}

func firstActive(list []*Ban, now time.Time) (*Ban, bool) {
	for _, b := range list {
		if b.active(now) {
			return b, true
		}
	}
	return nil, false
}

// addr finds an active ban covering a, the most specific prefix first.
func (s *banSet) addr(a netip.Addr, now time.Time) (*Ban, bool) {
	if len(s.prefix) == 0 || !a.IsValid() {
		return nil, false
	}
	a = a.Unmap().WithZone("")
	lens := s.lens6[:]
	if a.Is4() {
		lens = s.lens4[:]
	}
	for bits := len(lens) - 1; bits >= 0; bits-- {
		if lens[bits] == 0 {
			continue
		}
		if b, ok := firstActive(s.prefix[prefixKeyOf(a, bits)], now); ok {
			return b, true
		}
	}
	return nil, false
}

// BannedAddr reports an active ban covering addr. Call it at accept, before
// any TLS work, and close the socket when it reports one (log
// Ban.Refusal()). It does not allocate. Safe for concurrent use.
func (g *Guard) BannedAddr(addr netip.Addr) (Ban, bool) {
	now := g.now()
	g.bansMu.RLock()
	b, ok := g.bans.addr(addr, now)
	var out Ban
	if ok {
		out = *b
	}
	g.bansMu.RUnlock()
	if ok {
		g.stats.addrBanRefused.Add(1)
	}
	return out, ok
}

// BannedIdentity reports an active ban covering any part of id: its
// address, client ID, username, certificate fingerprint or serial. Call it
// at CONNECT with the claimed username before authenticating (so a banned
// client costs no password check), and again with the verified identity
// once authentication succeeds; refuse the client with CONNACK "banned"
// (0x8A; MQTT 3.1.1: 0x05) when it reports one. Safe for concurrent use.
func (g *Guard) BannedIdentity(id Identity) (Ban, bool) {
	now := g.now()
	g.bansMu.RLock()
	b, ok := g.bans.addr(id.Addr, now)
	for _, kv := range [...]struct {
		k Kind
		v string
	}{{KindClientID, id.ClientID}, {KindUsername, id.Username}, {KindCertFingerprint, normHex(id.CertFingerprint)}, {KindCertSerial, id.CertSerial}} {
		if ok || kv.v == "" {
			continue
		}
		b, ok = firstActive(g.bans.ids[kv.k][kv.v], now)
	}
	var out Ban
	if ok {
		out = *b
	}
	g.bansMu.RUnlock()
	if ok {
		g.stats.identityBanRefused.Add(1)
	}
	return out, ok
}

// BanEpoch changes whenever a ban is added (by AddBan, a detector or the
// bans file), before the OnBan callbacks run; removals and expiry leave
// it. It closes the window between checking a client and making it
// visible to the code that ends the clients a new ban matches: read it
// before BannedIdentity; once the client is attached (where an OnBan
// callback would find it), read it again, and check the identity again
// if it moved. A ban added after that second read finds the client
// attached; one added before moved the epoch. Safe for concurrent use.
func (g *Guard) BanEpoch() uint64 { return g.epoch.Load() }

// OnBan registers f to be called for every ban added (by a detector, by
// AddBan, or found in the bans file), so that the broker disconnects the
// live clients it matches. f runs on the goroutine that added the ban,
// with no guard lock held; it must not block for long. Register callbacks
// before serving.
func (g *Guard) OnBan(f func(Match)) {
	g.cbMu.Lock()
	g.onBan = append(g.onBan, f)
	g.cbMu.Unlock()
}

func (g *Guard) notify(bans []Ban) {
	if len(bans) == 0 {
		return
	}
	g.cbMu.Lock()
	cbs := g.onBan
	g.cbMu.Unlock()
	for _, b := range bans {
		for _, f := range cbs {
			f(Match{Ban: b})
		}
	}
}

// Replicate registers f, called by AddBan and RemoveBan once the change
// is in force here (after the OnBan callbacks), to carry it to the other
// nodes of a cluster. The change stays in force here whatever f returns;
// an error of f is returned by AddBan and RemoveBan wrapped in
// ErrNotReplicated (with the ban as for success), so that the operator
// learns that the other nodes do not enforce it. Register it before
// serving.
func (g *Guard) Replicate(f func(id string, removed bool) error) {
	g.cbMu.Lock()
	g.replicate = f
	g.cbMu.Unlock()
}

// replicated runs the Replicate hook for a change in force here.
func (g *Guard) replicated(id string, removed bool) error {
	g.cbMu.Lock()
	f := g.replicate
	g.cbMu.Unlock()
	if f == nil {
		return nil
	}
	if err := f(id, removed); err != nil {
		return fmt.Errorf("%w: %w", ErrNotReplicated, err)
	}
	return nil
}

// Bans returns the active bans, for listings.
func (g *Guard) Bans() []Ban {
	now := g.now()
	g.bansMu.RLock()
	defer g.bansMu.RUnlock()
	out := make([]Ban, 0, len(g.bans.byID))
	for _, b := range g.bans.byID {
		if b.active(now) {
			out = append(out, *b)
		}
	}
	sortBans(out)
	return out
}

// AddBan adds an operator's ban (the admin API, moat ban through the
// control socket) and calls the OnBan callbacks. Kind and Value are
// required; ID, Created and Source are filled in when empty; a zero
// Expires never expires. With a ban list store (BansFile, BanStore) the
// ban is written there before it takes effect and before AddBan returns,
// so that an acknowledged ban survives a crash. It returns the ban as
// stored; a full list (MaxBans) is an error. Safe for concurrent use.
func (g *Guard) AddBan(b Ban) (Ban, error) {
	b, err := g.completeBan(b)
	if err != nil {
		return Ban{}, err
	}
	if err := g.roomFor(1); err != nil {
		return Ban{}, err
	}
	if g.store == nil {
		g.install(b, false)
		g.notify([]Ban{b})
		return b, g.replicated(b.ID, false)
	}
	unlock, err := g.store.Lock()
	if err != nil {
		return Ban{}, err
	}
	cur, err := g.store.Read()
	if err != nil {
		unlock()
		return Ban{}, err
	}
	now := g.now()
	next := make([]Ban, 0, len(cur)+1)
	for _, x := range cur {
		if x.active(now) && x.ID != b.ID {
			next = append(next, x)
		}
	}
	if len(next) >= g.limits().MaxBans {
		unlock()
		return Ban{}, g.full()
	}
	if err := g.store.Write(append(next, b)); err != nil {
		unlock()
		return Ban{}, err
	}
	// In memory before the store's lock is released: a poll cannot read
	// the store in between and report the ban as new a second time.
	g.install(b, false)
	unlock()
	g.notify([]Ban{b})
	return b, g.replicated(b.ID, false)
}

// addAutomatic adds a detector's ban in memory at once and to the ban
// list's store at the next poll: it runs on a connection's reader, which
// must not wait for a disk.
func (g *Guard) addAutomatic(b Ban) (Ban, error) {
	b, err := g.completeBan(b)
	if err != nil {
		return Ban{}, err
	}
	if err := g.roomFor(1); err != nil {
		return Ban{}, err
	}
	g.install(b, true)
	g.notify([]Ban{b})
	return b, nil
}

// completeBan fills in a new ban's ID, creation time and source, and
// validates it.
func (g *Guard) completeBan(b Ban) (Ban, error) {
	if b.ID == "" {
		id, err := newBanID(g.rand)
		if err != nil {
			return Ban{}, err
		}
		b.ID = id
	}
	if b.Created.IsZero() {
		b.Created = g.now()
	}
	if b.Source == "" {
		b.Source = SourceManual
	}
	if err := b.validate(); err != nil {
		return Ban{}, err
	}
	return b, nil
}

// roomFor reports a full ban list (MaxBans) as an error.
func (g *Guard) roomFor(n int) error {
	g.bansMu.RLock()
	have := len(g.bans.byID)
	g.bansMu.RUnlock()
	if have+n > g.limits().MaxBans {
		return g.full()
	}
	return nil
}

// Errors of AddBan and RemoveBan; test with errors.Is.
var (
	ErrBanListFull = errors.New("guard: the ban list is full (max_bans)")
	ErrNoBan       = errors.New("guard: no such ban")
	// ErrNotReplicated: the change is in force on this node, but the
	// other nodes of its cluster were not told (Replicate).
	ErrNotReplicated = errors.New("in force on this node only")
)

func (g *Guard) full() error {
	g.stats.bansRefusedFull.Add(1)
	return fmt.Errorf("%w: it holds %d bans; remove some or raise max_bans", ErrBanListFull, g.limits().MaxBans)
}

// install puts b in force in memory; pending marks an automatic ban still
// to be written to the store. The caller notifies the OnBan callbacks.
func (g *Guard) install(b Ban, pending bool) {
	g.bansMu.Lock()
	nb := b
	g.bans.add(&nb)
	if pending && g.store != nil {
		g.pending = append(g.pending, nb)
	}
	g.epoch.Add(1)
	g.bansMu.Unlock()
	g.stats.bansAdded.Add(1)
	g.log.Warn("guard: ban added", "ban", b.ID, "kind", string(b.Kind), "value", clip(b.Value), "source", b.Source,
		"expires", b.Expires, "reason", clip(b.Reason))
}

// RemoveBan lifts the ban with the given ID, in the ban list's store and
// in memory, and returns it (the admin API, moat ban through the control
// socket). The store is changed first and memory then, both under the
// store's lock, which the watcher holds from reading the store to
// applying it: a poll that read the store before the removal has applied
// it before the removal starts, and one that starts after reads the store
// without the ban. A store that cannot be written leaves the ban in
// force, in memory too.
func (g *Guard) RemoveBan(id string) (Ban, error) {
	var out Ban
	if g.store != nil {
		g.at(hookRemoving)
		unlock, err := g.store.Lock()
		if err != nil {
			return Ban{}, err
		}
		defer unlock()
		cur, err := g.store.Read()
		if err != nil {
			return Ban{}, err
		}
		next := slices.DeleteFunc(slices.Clone(cur), func(b Ban) bool {
			if b.ID == id && out.ID == "" {
				out = b
			}
			return b.ID == id
		})
		if len(next) != len(cur) {
			if err := g.store.Write(next); err != nil {
				return Ban{}, err
			}
		}
	}
	g.bansMu.Lock()
	if removed := g.bans.remove(id); removed != nil {
		out = *removed
	}
	g.pending = slices.DeleteFunc(g.pending, func(b Ban) bool { return b.ID == id })
	g.bansMu.Unlock()
	if out.ID == "" {
		return Ban{}, fmt.Errorf("%w: no ban with ID %q", ErrNoBan, clip(id))
	}
	g.stats.bansRemoved.Add(1)
	g.log.Warn("guard: ban removed", "ban", out.ID, "kind", string(out.Kind), "value", clip(out.Value))
	return out, g.replicated(out.ID, true)
}
