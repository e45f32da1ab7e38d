package guard

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// memStore is a BanStore in memory, as the durable store's adapter is one
// outside the file system.
type memStore struct {
	mu      sync.Mutex // the store's lock (Lock)
	data    sync.Mutex // guards bans, writes, fail
	bans    []Ban
	writes  int
	fail    error
	lockErr error
}

func (m *memStore) Lock() (func(), error) {
	if m.lockErr != nil {
		return nil, m.lockErr
	}
	m.mu.Lock()
	return m.mu.Unlock, nil
}

func (m *memStore) Read() ([]Ban, error) {
	m.data.Lock()
	defer m.data.Unlock()
	return slices.Clone(m.bans), nil
}

func (m *memStore) Write(b []Ban) error {
	m.data.Lock()
	defer m.data.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.bans = slices.Clone(b)
	m.writes++
	return nil
}

func (m *memStore) snapshot() ([]Ban, int) {
	m.data.Lock()
	defer m.data.Unlock()
	return slices.Clone(m.bans), m.writes
}

// TestBanStore: with a BanStore the ban list lives there: loaded at start,
// an operator's ban written before AddBan returns, a detector's at the
// next poll (not on the reader that detected it), a removal written at
// once; a new Guard on the same store starts with them.
func TestBanStore(t *testing.T) {
	clk := newClock()
	st := &memStore{}
	old, err := NewManualBan(KindUsername, "eve", 0, "kept from before", clk.Now(), strings.NewReader(strings.Repeat("x", 8)))
	if err != nil {
		t.Fatal(err)
	}
	st.bans = []Ban{old}
	tick := make(chan time.Time)
	g, _ := newGuard(t, Config{BanStore: st, AuthFailures: Detector{Threshold: 2}}, clk, tick)
	if _, ok := g.BannedIdentity(Identity{Username: "eve"}); !ok {
		t.Fatal("the store's ban not loaded at start")
	}
	b, err := g.AddBan(Ban{Kind: KindClientID, Value: "rogue", Reason: "operator"})
	if err != nil {
		t.Fatal(err)
	}
	if bans, _ := st.snapshot(); len(bans) != 2 || !slices.ContainsFunc(bans, func(x Ban) bool { return x.ID == b.ID }) {
		t.Fatalf("store after AddBan: %+v", bans)
	}
	_, writes := st.snapshot()
	for range 2 {
		g.AuthFailed(Identity{Addr: ip("192.0.2.1")}, "bad password")
	}
	if _, ok := g.BannedAddr(ip("192.0.2.1")); !ok {
		t.Fatal("automatic ban not in force")
	}
	if _, w := st.snapshot(); w != writes {
		t.Fatal("the detector's ban was written on the reader's call")
	}
	tick <- clk.Now()
	tick <- clk.Now()
	if bans, _ := st.snapshot(); len(bans) != 3 {
		t.Fatalf("store after the poll: %+v", bans)
	}
	if _, err := g.RemoveBan(old.ID); err != nil {
		t.Fatal(err)
	}
	if bans, _ := st.snapshot(); len(bans) != 2 || slices.ContainsFunc(bans, func(x Ban) bool { return x.ID == old.ID }) {
		t.Fatalf("store after RemoveBan: %+v", bans)
	}
	g.Close()
	g2, _ := newGuard(t, Config{BanStore: st}, clk, nil)
	if n := len(g2.Bans()); n != 2 {
		t.Errorf("a new Guard on the store has %d bans, want 2", n)
	}
	if _, err := New(Config{BanStore: st, BansFile: "x"}); err == nil || !strings.Contains(err.Error(), "at most one of BansFile and BanStore") {
		t.Errorf("both set: %v", err)
	}
}

// TestAddBanStoreFailure: a ban the store cannot keep is refused and is
// not in force (the operator must hear it; it would vanish at the next
// start); a store that fails at start stops New.
func TestAddBanStoreFailure(t *testing.T) {
	clk := newClock()
	st := &memStore{}
	g, _ := newGuard(t, Config{BanStore: st}, clk, nil)
	called := false
	g.OnBan(func(Match) { called = true })
	st.data.Lock()
	st.fail = errors.New("disk full")
	st.data.Unlock()
	if _, err := g.AddBan(Ban{Kind: KindUsername, Value: "u"}); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("AddBan: %v", err)
	}
	if _, ok := g.BannedIdentity(Identity{Username: "u"}); ok || called {
		t.Error("a ban the store refused is in force")
	}
	if _, err := New(Config{BanStore: &memStore{lockErr: errors.New("locked")}, Tick: make(chan time.Time)}); err == nil {
		t.Error("New accepted a store it cannot read")
	}
}

// TestAddBanHonoursMaxBans: AddBan refuses a ban past MaxBans, with a
// bans file, a BanStore and in memory alike, and counts the refusal.
func TestAddBanHonoursMaxBans(t *testing.T) {
	for name, cfg := range map[string]Config{
		"memory":    {MaxBans: 2},
		"file":      {MaxBans: 2, BansFile: t.TempDir() + "/" + BansFileName},
		"ban store": {MaxBans: 2, BanStore: &memStore{}},
	} {
		t.Run(name, func(t *testing.T) {
			g, _ := newGuard(t, cfg, newClock(), nil)
			for _, u := range []string{"a", "b"} {
				if _, err := g.AddBan(Ban{Kind: KindUsername, Value: u}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := g.AddBan(Ban{Kind: KindUsername, Value: "c"}); err == nil || !strings.Contains(err.Error(), "max_bans") {
				t.Fatalf("third ban: %v", err)
			}
			if _, ok := g.BannedIdentity(Identity{Username: "c"}); ok {
				t.Error("the refused ban is in force")
			}
			if st := g.Stats(); st.BansRefusedFull != 1 || st.Bans != 2 {
				t.Errorf("stats: %d refused, %d bans", st.BansRefusedFull, st.Bans)
			}
		})
	}
}
