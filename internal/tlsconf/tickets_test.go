package tlsconf

import (
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// memKeyStore is a TicketKeyStore in memory, standing for the durable
// store across the restarts of a test (internal/cli tests the real one).
type memKeyStore struct {
	mu      sync.Mutex
	keys    []TicketKey
	saves   int
	loadErr error
	saveErr error
}

func (s *memKeyStore) LoadTicketKeys() ([]TicketKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys), s.loadErr
}

func (s *memKeyStore) SaveTicketKeys(keys []TicketKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.saveErr != nil {
		return s.saveErr
	}
	s.keys = slices.Clone(keys)
	s.saves++
	return nil
}

func (s *memKeyStore) saved() ([]TicketKey, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys), s.saves
}

// resumer dials srv as one device whose TLS session cache persists across
// its connections, and reports whether each connection resumed.
type resumer struct {
	t     *testing.T
	e     *env
	dev   *testpki.Cert
	v     uint16
	cache tls.ClientSessionCache
}

func newResumer(t *testing.T, e *env, dev *testpki.Cert, v uint16) *resumer {
	return &resumer{t: t, e: e, dev: dev, v: v, cache: tls.NewLRUClientSessionCache(4)}
}

func (r *resumer) dial(srv *server) (resumed bool, err error) {
	r.t.Helper()
	cfg := clientConfig(r.e.ca, r.dev)
	cfg.MaxVersion = r.v
	cfg.ClientSessionCache = r.cache
	cfg.Time = r.e.clock.Now
	c, err := roundTrip(r.t, srv.addr, cfg)
	if err != nil {
		return false, err
	}
	// Wait for the server's side, so that the ticket it sends after the
	// handshake has reached the client's cache before the next dial.
	serverPeer(r.t, srv)
	if err := echo(c); err != nil {
		return false, err
	}
	return c.ConnectionState().DidResume, nil
}

// TestTicketKeysSurviveRestart: with a TicketKeyStore, a client resumes
// its session with a Manager made after the one that issued its ticket
// (a broker restart); without one, it does a full handshake.
func TestTicketKeysSurviveRestart(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			e := newEnv(t, testpki.P256)
			dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
			store := &memKeyStore{}
			e.cfg.TicketKeyStore = store
			m1, err := New(e.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if keys, saves := store.saved(); len(keys) != 1 || saves != 1 {
				t.Fatalf("after New: %d keys saved in %d saves, want the first key saved", len(keys), saves)
			}
			r := newResumer(t, e, dev, v)
			srv1 := serve(t, m1)
			if resumed, err := r.dial(srv1); err != nil || resumed {
				t.Fatalf("first connection: resumed=%v err=%v", resumed, err)
			}
			m1.Close()

			e.clock.Advance(30 * time.Minute)
			m2 := e.manager(t)
			if !strings.Contains(e.logs.String(), "session ticket keys restored") {
				t.Errorf("no log of the restored keys:\n%s", e.logs.String())
			}
			if _, saves := store.saved(); saves != 1 {
				t.Errorf("a key within its rotation interval was replaced at restart (%d saves)", saves)
			}
			if resumed, err := r.dial(serve(t, m2)); err != nil || !resumed {
				t.Fatalf("after the restart: resumed=%v err=%v, want a resumed session", resumed, err)
			}

			// Without the store the keys are the process's own.
			e.cfg.TicketKeyStore = nil
			m3 := e.manager(t)
			if resumed, err := r.dial(serve(t, m3)); err != nil || resumed {
				t.Fatalf("restart without a store: resumed=%v err=%v, want a full handshake", resumed, err)
			}
		})
	}
}

// TestSecurityRevokedClientCannotResumeAfterRestart: a client revoked
// while the broker was down cannot resume with the ticket it got before,
// although the ticket key survived the restart (another client's ticket
// from the same key resumes); it is refused with the revocation, as a
// full handshake would be. (TestRevokedCannotResume covers a revocation
// without a restart.)
func TestSecurityRevokedClientCannotResumeAfterRestart(t *testing.T) {
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(v), func(t *testing.T) {
			e := newEnv(t, testpki.P256)
			revoked := e.ca.Issue(t, testpki.Options{CN: "stolen-device"})
			good := e.ca.Issue(t, testpki.Options{CN: "good-device"})
			store := &memKeyStore{}
			e.cfg.TicketKeyStore = store
			e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", 24*time.Hour)}
			m1 := e.manager(t)
			srv1 := serve(t, m1)
			rr, rg := newResumer(t, e, revoked, v), newResumer(t, e, good, v)
			for _, r := range []*resumer{rr, rg} {
				if _, err := r.dial(srv1); err != nil {
					t.Fatal(err)
				}
			}
			m1.Close()

			// Revoked while the broker is down.
			e.writeCRL(t, "ca.crl", 24*time.Hour, revoked)
			m2 := e.manager(t)
			srv2 := serve(t, m2)
			if resumed, err := rg.dial(srv2); err != nil || !resumed {
				t.Fatalf("the good device: resumed=%v err=%v, want a resumed session (the key survived)", resumed, err)
			}
			resumed, err := rr.dial(srv2)
			if err == nil {
				t.Fatalf("the revoked device connected (resumed=%v) with its old ticket", resumed)
			}
			res := srv2.nextResult(t)
			var ve *VerifyError
			if !errors.As(res.err, &ve) || ve.Reason != ReasonRevoked {
				t.Fatalf("server side: %v, want a refusal for revocation", res.err)
			}
			if !strings.Contains(e.logs.String(), "CN=stolen-device") {
				t.Errorf("the refusal is not logged with the subject:\n%s", e.logs.String())
			}
		})
	}
}

// TestTicketKeysRestoredWithinLifetime: saved keys past their lifetime,
// or made in the future (the clock went back), are not used; a saved key
// due for rotation is kept for decryption behind a new one, and the ring
// is saved again at every rotation.
func TestTicketKeysRestoredWithinLifetime(t *testing.T) {
	e := newEnv(t, testpki.P256)
	now := e.clock.Now()
	key := func(b byte, age time.Duration) TicketKey {
		var k TicketKey
		k.Key[0] = b
		k.Created = now.Add(-age)
		return k
	}
	store := &memKeyStore{keys: []TicketKey{
		key(1, 4*time.Hour),     // past the 3h lifetime
		key(2, 150*time.Minute), // within it, due for rotation
		key(3, -2*time.Hour),    // from the future
		key(4, 90*time.Minute),  // within it
	}}
	e.cfg.TicketKeyStore = store
	e.cfg.TicketKeyRotation = time.Hour
	m := e.manager(t)
	keys := m.tickets.keys()
	if len(keys) != 3 || keys[1][0] != 4 || keys[2][0] != 2 {
		t.Fatalf("ring after New: %v, want a new key, then keys 4 and 2", firstBytes(keys))
	}
	saved, saves := store.saved()
	if saves != 1 || len(saved) != 3 || saved[0].Key != keys[0] {
		t.Fatalf("saved %v in %d saves, want the new ring", saved, saves)
	}
	// The next rotation (an hour on) drops key 2 (3h old by then) and
	// saves the ring.
	e.clock.Advance(61 * time.Minute)
	testutil.WaitFor(t, "rotation", 5*time.Second, func() bool { _, n := store.saved(); return n == 2 })
	if saved, _ := store.saved(); len(saved) != 3 || saved[1].Key != keys[0] || saved[2].Key[0] != 4 {
		t.Fatalf("saved after rotation: %v", saved)
	}
}

// TestTicketKeyStoreFailures: a store that cannot load or save does not
// keep the listener from serving; each failure is logged.
func TestTicketKeyStoreFailures(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
	e.cfg.TicketKeyStore = &memKeyStore{loadErr: errors.New("disk on fire"), saveErr: errors.New("disk still on fire")}
	m := e.manager(t)
	if len(m.tickets.keys()) != 1 {
		t.Fatal("no ticket key")
	}
	r := newResumer(t, e, dev, tls.VersionTLS13)
	srv := serve(t, m)
	if _, err := r.dial(srv); err != nil {
		t.Fatal(err)
	}
	if resumed, err := r.dial(srv); err != nil || !resumed {
		t.Fatalf("resumed=%v err=%v: resumption within the process must work", resumed, err)
	}
	logs := e.logs.String()
	for _, want := range []string{"could not load the saved session ticket keys", "disk on fire", "could not save the session ticket keys", "disk still on fire"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestTicketKeyPrintsWithoutKey(t *testing.T) {
	k := TicketKey{Created: time.Unix(1_800_000_000, 0)}
	for i := range k.Key {
		k.Key[i] = 0xAB
	}
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s", k, k, k, []TicketKey{k})} {
		if strings.Contains(strings.ToLower(s), "ab") || strings.Contains(s, "171") {
			t.Errorf("printed key shows its bytes: %s", s)
		}
	}
}

func firstBytes(keys [][32]byte) []byte {
	out := make([]byte, len(keys))
	for i, k := range keys {
		out[i] = k[0]
	}
	return out
}
