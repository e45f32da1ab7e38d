package guard

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// trackKey is one identity a detector counts on.
type trackKey struct {
	kind Keys
	addr addrKey
	val  string
}

// window holds the times of the last Threshold events of one identity.
// Kept by value in the detector's table: one allocation per identity (the
// ring), not two.
type window struct {
	times []int64 // ring
	pos   int     // next slot; once full, the oldest event
	n     int
	last  int64
}

type detector struct {
	name string
	cfg  atomic.Pointer[Detector] // replaced by SetDetectors (live.go), never written through

	mu   sync.Mutex
	keys map[trackKey]window

	events   atomic.Uint64
	triggers atomic.Uint64
}

// trackVal bounds the memory an identity value takes in the tables: long
// values are replaced by their hash.
func trackVal(s string) string {
	if len(s) <= 128 {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// keys lists the identities of id the detector counts.
func (g *Guard) keys(cfg *Detector, id Identity) (out [4]trackKey, n int) {
	if cfg.Keys&KeyAddr != 0 && id.Addr.IsValid() {
		out[n] = trackKey{kind: KeyAddr, addr: g.keyOf(id.Addr)}
		n++
	}
	for _, kv := range [...]struct {
		k Keys
		v string
	}{{KeyClientID, id.ClientID}, {KeyUsername, id.Username}, {KeyCert, normHex(id.CertFingerprint)}} {
		if cfg.Keys&kv.k != 0 && kv.v != "" {
			out[n] = trackKey{kind: kv.k, val: trackVal(kv.v)}
			n++
		}
	}
	return out, n
}

// record counts one event of id and returns the identity kinds whose
// count reached the threshold within the window (their counts restart).
func (g *Guard) record(d *detector, id Identity) Keys {
	cfg := d.cfg.Load()
	if cfg.Disabled {
		return 0
	}
	d.events.Add(1)
	keys, n := g.keys(cfg, id)
	if n == 0 {
		return 0
	}
	now := g.now().UnixNano()
	win := int64(cfg.Window)
	var hit Keys
	d.mu.Lock()
	for _, k := range keys[:n] {
		w, ok := d.keys[k]
		// A threshold changed at run time starts the identity's count anew.
		if !ok || len(w.times) != cfg.Threshold {
			if !ok && len(d.keys) >= g.limits().TrackedKeys {
				d.evict(now, win)
			}
			w = window{times: make([]int64, cfg.Threshold)}
		}
		w.times[w.pos] = now
		w.pos = (w.pos + 1) % len(w.times)
		w.n = min(w.n+1, len(w.times))
		w.last = now
		if w.n == len(w.times) && now-w.times[w.pos] < win {
			hit |= k.kind
			w.n = 0
		}
		d.keys[k] = w
	}
	d.mu.Unlock()
	return hit
}

// evict makes room in a full table: stale identities first, else any.
// Called with d.mu held.
func (d *detector) evict(now, win int64) {
	checked := 0
	for k, w := range d.keys {
		if now-w.last >= win {
			delete(d.keys, k)
			return
		}
		if checked++; checked >= 64 {
			delete(d.keys, k)
			return
		}
	}
	// A table of fewer than 64 entries, none idle (a small tracked_keys).
	for k := range d.keys {
		delete(d.keys, k)
		return
	}
}

func (k Keys) String() string {
	var parts []string
	for _, x := range []struct {
		k Keys
		s string
	}{{KeyAddr, "source address"}, {KeyClientID, "client ID"}, {KeyUsername, "username"}, {KeyCert, "certificate"}} {
		if k&x.k != 0 {
			parts = append(parts, x.s)
		}
	}
	return strings.Join(parts, ", ")
}

var detectorEvents = map[string]string{
	DetectAuthFailures:  "failed authentications",
	DetectTopicScan:     "denied topics",
	DetectFlapping:      "connections",
	DetectAbnormal:      "abnormal disconnects",
	DetectUndeliverable: "messages nobody received",
	DetectSilence:       "keep-alive-only period",
	DetectLimitAbuse:    "limits hit",
}

// act applies detector d's action to id after the identity kinds in hit
// reached the threshold.
func (g *Guard) act(d *detector, id Identity, hit Keys, detail string) Verdict {
	cfg := d.cfg.Load()
	d.triggers.Add(1)
	var reason string
	if d.name == DetectSilence {
		reason = fmt.Sprintf("%s: sent nothing but keep-alives for %v", d.name, cfg.Window)
	} else {
		reason = fmt.Sprintf("%s: %d %s within %v by the same %s", d.name, cfg.Threshold, detectorEvents[d.name], cfg.Window, hit)
	}
	g.log.Warn("guard: "+strings.ReplaceAll(d.name, "_", " ")+" detected", "reason", reason, "action", cfg.Action.String(),
		"remote", addrString(id.Addr), "client_id", clip(id.ClientID), "username", clip(id.Username),
		"cert_fingerprint", id.CertFingerprint, "last", clip(detail))
	v := Verdict{Detected: d.name, Reason: reason, Disconnect: cfg.Action >= ActionDisconnect}
	if cfg.Action == ActionBan {
		if hit&KeyAddr != 0 && id.Addr.IsValid() {
			g.autoBan(d, KindIP, g.addrPrefix(id.Addr).String(), reason)
		}
		if hit&KeyClientID != 0 {
			g.autoBan(d, KindClientID, id.ClientID, reason)
		}
		if hit&KeyUsername != 0 {
			g.autoBan(d, KindUsername, id.Username, reason)
		}
		if hit&KeyCert != 0 {
			g.autoBan(d, KindCertFingerprint, normHex(id.CertFingerprint), reason)
		}
	}
	return v
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// addrPrefix is the prefix an automatic address ban covers: the address
// (IPv6: its IPv6Prefix).
func (g *Guard) addrPrefix(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	bits := a.BitLen()
	if a.Is6() {
		bits = g.cfg.IPv6Prefix
	}
	p, _ := a.Prefix(bits)
	return p
}

// offence remembers an identity's automatic bans for doubling.
type offence struct {
	count int
	last  time.Time
}

// autoBan bans value for the detector's ban time, doubled for each
// earlier automatic ban of the same identity within RepeatMemory.
func (g *Guard) autoBan(d *detector, kind Kind, value, reason string) {
	now := g.now()
	k := trackKey{kind: Keys(0), val: string(kind) + "\x00" + trackVal(value)}
	lim := g.limits()
	g.offMu.Lock()
	o := g.offences[k]
	if o.count > 0 && now.Sub(o.last) > lim.RepeatMemory {
		o.count = 0
	}
	o.count++
	o.last = now
	if _, ok := g.offences[k]; !ok && len(g.offences) >= lim.TrackedKeys {
		for old, x := range g.offences {
			if now.Sub(x.last) > lim.RepeatMemory || len(g.offences) >= lim.TrackedKeys {
				delete(g.offences, old)
				break
			}
		}
	}
	g.offences[k] = o
	g.offMu.Unlock()
	cfg := d.cfg.Load()
	dur := cfg.BanFor
	for i := 1; i < o.count && dur < cfg.MaxBan; i++ {
		dur *= 2
	}
	dur = min(dur, cfg.MaxBan)
	b := Ban{Kind: kind, Value: value, Reason: reason, Source: d.name, Created: now, Expires: now.Add(dur)}
	if _, err := g.addAutomatic(b); err != nil {
		g.log.Error("guard: automatic ban not added", "kind", string(kind), "value", clip(value), "err", err)
		return
	}
	g.stats.autoBans.Add(1)
}

// AuthFailed records a failed authentication (wrong password, unknown
// user, refused token or certificate) by id, whose Username is the one
// claimed in CONNECT. Default: 10 within a minute by one address,
// username or client ID ban each of those for 5 minutes (doubling).
func (g *Guard) AuthFailed(id Identity, reason string) Verdict {
	d := g.det[DetectAuthFailures]
	if hit := g.record(d, id); hit != 0 {
		return g.act(d, id, hit, reason)
	}
	return Verdict{}
}

// Denied records a SUBSCRIBE filter or PUBLISH topic (wills included) the
// authorizer denied to id. action is "publish" or "subscribe". Default: 20
// within a minute disconnect the client and ban its identities for 5
// minutes (doubling).
func (g *Guard) Denied(id Identity, action, topic string) Verdict {
	d := g.det[DetectTopicScan]
	if hit := g.record(d, id); hit != 0 {
		return g.act(d, id, hit, action+" "+topic)
	}
	return Verdict{}
}

// Connected records a successful CONNECT (flapping). Default: 10 within a
// minute by one client ID, username or certificate are logged.
func (g *Guard) Connected(id Identity) Verdict {
	d := g.det[DetectFlapping]
	if hit := g.record(d, id); hit != 0 {
		return g.act(d, id, hit, "connect")
	}
	return Verdict{}
}

// Disconnected records the end of an admitted connection; abnormal is
// true when it ended without DISCONNECT (network or protocol error,
// keep-alive timeout, DISCONNECT with an error reason). Default: 5
// abnormal ends within a minute are logged.
func (g *Guard) Disconnected(id Identity, abnormal bool, detail string) Verdict {
	if !abnormal {
		return Verdict{}
	}
	d := g.det[DetectAbnormal]
	if hit := g.record(d, id); hit != 0 {
		return g.act(d, id, hit, detail)
	}
	return Verdict{}
}

// Undeliverable records a PUBLISH by id that no subscriber received.
// Default: 100 within a minute are logged. It does not allocate unless it
// detects.
func (g *Guard) Undeliverable(id Identity, topic string) Verdict {
	d := g.det[DetectUndeliverable]
	if hit := g.record(d, id); hit != 0 {
		return g.act(d, id, hit, topic)
	}
	return Verdict{}
}

// SilenceAfter is how long a client may send nothing but PINGREQ before
// the broker reports it with Silent; zero when the detector is off.
func (g *Guard) SilenceAfter() time.Duration {
	cfg := g.det[DetectSilence].cfg.Load()
	if cfg.Disabled {
		return 0
	}
	return cfg.Window
}

// Silent reports a client that has sent nothing but PINGREQ for at least
// SilenceAfter (call it once per silent period, for example on the first
// PINGREQ past it). Default: logged.
func (g *Guard) Silent(id Identity, quiet time.Duration) Verdict {
	d := g.det[DetectSilence]
	if hit := g.record(d, id); hit != 0 {
		return g.act(d, id, hit, "quiet for "+quiet.String())
	}
	return Verdict{}
}

// LimitHit records that id ran into one of the broker's limits: limit
// names it (the broker's name, such as "packet_size" or "queue_full"),
// detail says what happened. A client that keeps hitting limits is
// probing the broker or broken. Default: 20 within a minute by one
// address, client ID, username or certificate are logged.
func (g *Guard) LimitHit(id Identity, limit, detail string) Verdict {
	d := g.det[DetectLimitAbuse]
	if hit := g.record(d, id); hit != 0 {
		return g.act(d, id, hit, limit+": "+detail)
	}
	return Verdict{}
}
