package guard

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

func TestBanMatchingCIDR(t *testing.T) {
	g, _ := newGuard(t, Config{}, newClock(), nil)
	for _, v := range []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120", "fe80::1"} {
		if _, err := g.AddBan(Ban{Kind: KindIP, Value: v, Reason: "test"}); err != nil {
			t.Fatalf("%s: %v", v, err)
		}
	}
	for _, tc := range []struct {
		addr   string
		banned bool
	}{
		{"10.1.2.3", true}, {"11.0.0.1", false}, {"192.0.2.7", true}, {"192.0.2.8", false},
		{"2001:db8:ffff::1", true}, {"2001:db9::1", false}, {"::ffff:10.9.9.9", true},
		{"198.51.100.200", true}, {"198.51.101.1", false}, {"fe80::1%eth0", true}, {"fe80::2", false},
	} {
		if _, got := g.BannedAddr(ip(tc.addr)); got != tc.banned {
			t.Errorf("%s banned=%v, want %v", tc.addr, got, tc.banned)
		}
		m := false
		for _, b := range g.Bans() {
			m = m || (Match{Ban: b}).Matches(Identity{Addr: ip(tc.addr)})
		}
		if m != tc.banned {
			t.Errorf("%s: Match.Matches=%v, want %v", tc.addr, m, tc.banned)
		}
	}
}

func TestNormalize(t *testing.T) {
	fp := strings.Repeat("AB:", 31) + "AB"
	for _, tc := range []struct {
		kind      Kind
		in, want  string
		wantError bool
	}{
		{KindIP, "10.0.0.7/8", "10.0.0.0/8", false},
		{KindIP, "::ffff:1.2.3.4", "1.2.3.4/32", false},
		{KindIP, "not-an-ip", "", true},
		{KindCertFingerprint, fp, strings.Repeat("ab", 32), false},
		{KindCertFingerprint, "abcd", "", true},
		{KindCertSerial, "00:0A:FF", "aff", false},
		{KindCertSerial, "xyz", "", true},
		{KindClientID, "", "", true},
		{KindUsername, "bad\xff", "", true},
		{"mac", "x", "", true},
	} {
		got, err := Normalize(tc.kind, tc.in)
		if (err != nil) != tc.wantError || got != tc.want {
			t.Errorf("Normalize(%s, %q) = %q, %v", tc.kind, tc.in, got, err)
		}
	}
}

func TestBannedIdentityKinds(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{}, clk, nil)
	fp := strings.Repeat("cd", 32)
	for _, b := range []Ban{
		{Kind: KindClientID, Value: "dev-1"}, {Kind: KindUsername, Value: "eve"},
		{Kind: KindCertFingerprint, Value: strings.ToUpper(fp)}, {Kind: KindCertSerial, Value: "0x1f"[2:]},
		{Kind: KindClientID, Value: "tmp", Expires: clk.Now().Add(time.Minute)},
	} {
		if _, err := g.AddBan(b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		id     Identity
		banned bool
	}{
		{Identity{ClientID: "dev-1"}, true}, {Identity{ClientID: "dev-2"}, false},
		{Identity{Username: "eve"}, true}, {Identity{CertFingerprint: fp}, true},
		{Identity{CertFingerprint: strings.ToUpper(fp)}, true}, {Identity{CertSerial: "1f"}, true},
		{Identity{ClientID: "tmp"}, true}, {Identity{Addr: ip("127.0.0.1"), ClientID: "ok", Username: "alice"}, false},
	} {
		b, got := g.BannedIdentity(tc.id)
		if got != tc.banned {
			t.Errorf("%+v banned=%v, want %v", tc.id, got, tc.banned)
		}
		if got && !strings.Contains(b.Refusal(), "banned") {
			t.Errorf("refusal %q", b.Refusal())
		}
	}
	clk.Advance(time.Minute)
	if _, ok := g.BannedIdentity(Identity{ClientID: "tmp"}); ok {
		t.Error("expired ban still refuses")
	}
	g.Poll()
	if st := g.Stats(); st.Bans != 4 || st.BansExpired != 1 {
		t.Errorf("stats %+v", st)
	}
}

// A ban written to the file by `moat ban` (File.Update) while the guard
// runs is loaded by its watcher and reaches live clients through OnBan;
// automatic bans are written to the file; a removal in the file lifts the
// ban.
func TestBansFileWatch(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), "data", BansFileName)
	f := File{Path: path}
	manual, err := NewManualBan(KindIP, "192.0.2.0/24", time.Hour, "abuse report", clk.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Update(func(b []Ban) ([]Ban, error) { return append(b, manual), nil }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("bans file mode %v, %v; want 0600", fi.Mode(), err)
	}
	tick := make(chan time.Time)
	g, _ := newGuard(t, Config{BansFile: path}, clk, tick)
	var mu sync.Mutex
	var got []Match
	g.OnBan(func(m Match) { mu.Lock(); got = append(got, m); mu.Unlock() })
	if _, ok := g.BannedAddr(ip("192.0.2.9")); !ok {
		t.Fatal("ban from the file not loaded at start")
	}

	// moat ban add while the broker runs.
	second, _ := NewManualBan(KindClientID, "rogue", 0, "", clk.Now(), rand.Reader)
	if err := f.Update(func(b []Ban) ([]Ban, error) { return append(b, second), nil }); err != nil {
		t.Fatal(err)
	}
	tick <- clk.Now()
	testutil.WaitFor(t, "the new ban", 5*time.Second, func() bool {
		_, ok := g.BannedIdentity(Identity{ClientID: "rogue"})
		return ok
	})
	// OnBan runs after the ban is in force, once the poll let go of the
	// ban list's locks.
	testutil.WaitFor(t, "the OnBan call", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) > 0
	})
	mu.Lock()
	if len(got) != 1 || !got[0].Matches(Identity{ClientID: "rogue"}) {
		t.Errorf("OnBan calls %+v, want one matching the new ban", got)
	}
	mu.Unlock()

	// An automatic ban reaches the file.
	for range 10 {
		g.AuthFailed(Identity{Addr: ip("127.0.0.9")}, "bad password")
	}
	tick <- clk.Now()
	testutil.WaitFor(t, "the automatic ban in the file", 5*time.Second, func() bool {
		bans, err := f.Read()
		return err == nil && len(bans) == 3
	})

	// moat ban remove.
	if err := f.Update(func(b []Ban) ([]Ban, error) {
		var out []Ban
		for _, x := range b {
			if x.ID != manual.ID {
				out = append(out, x)
			}
		}
		return out, nil
	}); err != nil {
		t.Fatal(err)
	}
	tick <- clk.Now()
	testutil.WaitFor(t, "the removal", 5*time.Second, func() bool {
		_, ok := g.BannedAddr(ip("192.0.2.9"))
		return !ok
	})
	if _, ok := g.BannedAddr(ip("127.0.0.9")); !ok {
		t.Error("automatic ban lost on reload")
	}
}

// TestSecurityHostileBansFile: the bans file is replaced by a huge file or
// by garbage. The guard refuses to load it, keeps the bans it had, counts
// and logs the error; a broker does not start on a malformed file.
func TestSecurityHostileBansFile(t *testing.T) {
	clk := newClock()
	dir := t.TempDir()
	path := filepath.Join(dir, BansFileName)
	f := File{Path: path}
	b, _ := NewManualBan(KindUsername, "eve", 0, "", clk.Now(), rand.Reader)
	if err := f.Update(func([]Ban) ([]Ban, error) { return []Ban{b}, nil }); err != nil {
		t.Fatal(err)
	}
	tick := make(chan time.Time)
	g, logs := newGuard(t, Config{BansFile: path, MaxBansFileSize: 1 << 16, MaxBans: 10}, clk, tick)
	hostile := map[string]string{
		"huge":          `{"version":1,"bans":[` + strings.Repeat(" ", 1<<17) + `]}`,
		"malformed":     `{"version":1,"bans":[{"id":"zz"`,
		"unknown field": `{"version":1,"bans":[],"extra":1}`,
		"bad version":   `{"version":9,"bans":[]}`,
		"bad value":     `{"version":1,"bans":[{"id":"ab","kind":"ip","value":"300.1.1.1","reason":"","source":"manual","created":"2026-01-01T00:00:00Z"}]}`,
		"too many":      `{"version":1,"bans":[` + strings.TrimSuffix(strings.Repeat(`{"id":"ab","kind":"username","value":"x","reason":"","source":"manual","created":"2026-01-01T00:00:00Z"},`, 11), ",") + `]}`,
		"duplicate id":  `{"version":1,"bans":[{"id":"ab","kind":"username","value":"x","reason":"","source":"manual","created":"2026-01-01T00:00:00Z"},{"id":"ab","kind":"username","value":"y","reason":"","source":"manual","created":"2026-01-01T00:00:00Z"}]}`,
		"trailing data": `{"version":1,"bans":[]} {}`,
	}
	errs := uint64(0)
	for name, content := range hostile {
		t.Run(name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := (File{Path: path, MaxBans: 10, MaxSize: 1 << 16}).Read(); err == nil {
				t.Fatal("Read accepted it")
			}
			errs++
			tick <- clk.Now()
			testutil.WaitFor(t, "the reload error", 5*time.Second, func() bool { return g.Stats().BansFileErrors == errs })
			if _, ok := g.BannedIdentity(Identity{Username: "eve"}); !ok {
				t.Error("old ban lost")
			}
			if _, err := New(Config{BansFile: path, MaxBansFileSize: 1 << 16, MaxBans: 10, Tick: make(chan time.Time)}); err == nil {
				t.Error("New accepted the file")
			}
		})
	}
	if !strings.Contains(logs.String(), "bans loaded before stay in force") {
		t.Error("error not logged")
	}
}

func TestRemoveBan(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), BansFileName)
	tick := make(chan time.Time)
	g, _ := newGuard(t, Config{BansFile: path}, clk, tick)
	b, err := g.AddBan(Ban{Kind: KindClientID, Value: "x"})
	if err != nil {
		t.Fatal(err)
	}
	tick <- clk.Now() // written to the file
	// The watcher takes the next tick only when that poll is over: the
	// removal below must not run while the poll still installs the
	// file's bans in memory.
	tick <- clk.Now()
	if bans, _ := (File{Path: path}).Read(); len(bans) != 1 {
		t.Fatalf("file holds %+v, want the ban", bans)
	}
	if _, err := g.RemoveBan(b.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.BannedIdentity(Identity{ClientID: "x"}); ok {
		t.Error("still banned in memory")
	}
	if bans, _ := (File{Path: path}).Read(); len(bans) != 0 {
		t.Errorf("file still holds %+v", bans)
	}
	if _, err := g.RemoveBan(b.ID); err == nil {
		t.Error("removing twice succeeded")
	}
}

// TestSecurityRemoveBanDuringPoll: an operator lifts ban X (RemoveBan,
// the admin API's path) while the watcher is reloading the bans file
// because `moat ban add` added Y to it. The poll read the file while it
// still held X; X must not come back from that stale read (in memory,
// refusing the client again, and reported as a new ban to OnBan), and Y
// must be in force. The interleaving is forced with the guard's hook
// points: the poll waits after reading the file until the removal has
// started.
func TestSecurityRemoveBanDuringPoll(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), BansFileName)
	tick := make(chan time.Time)
	g, _ := newGuard(t, Config{BansFile: path}, clk, tick)
	notified := map[string]int{}
	var mu sync.Mutex
	g.OnBan(func(m Match) {
		mu.Lock()
		notified[m.Ban.Value]++
		mu.Unlock()
	})
	x, err := g.AddBan(Ban{Kind: KindClientID, Value: "x"})
	if err != nil {
		t.Fatal(err)
	}
	tick <- clk.Now() // X written to the file
	tick <- clk.Now() // and that poll is over
	y, err := NewManualBan(KindClientID, "y", 0, "added by moat ban add", clk.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := (File{Path: path}).Update(func(cur []Ban) ([]Ban, error) { return append(cur, y), nil }); err != nil {
		t.Fatal(err)
	}

	read, release, removing := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	armed.Store(true)
	hook := func(point string) {
		switch point {
		case hookFileRead:
			if armed.CompareAndSwap(true, false) {
				close(read)
				<-release
			}
		case hookRemoving:
			close(removing)
		}
	}
	g.hook.Store(&hook)
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		g.Poll()
	}()
	<-read // the poll holds the file's content, X included
	removed := make(chan error, 1)
	go func() {
		_, err := g.RemoveBan(x.ID)
		removed <- err
	}()
	<-removing
	close(release)
	<-polled
	if err := <-removed; err != nil {
		t.Fatal(err)
	}

	if b, ok := g.BannedIdentity(Identity{ClientID: "x"}); ok {
		t.Errorf("X came back from the poll's stale read: %+v", b)
	}
	if _, ok := g.BannedIdentity(Identity{ClientID: "y"}); !ok {
		t.Error("Y, added to the file, is not in force")
	}
	if bans, _ := (File{Path: path}).Read(); len(bans) != 1 || bans[0].ID != y.ID {
		t.Errorf("file holds %+v, want Y only", bans)
	}
	// The next poll changes nothing: the file and memory agree.
	tick <- clk.Now()
	tick <- clk.Now()
	if _, ok := g.BannedIdentity(Identity{ClientID: "x"}); ok {
		t.Error("X came back at the next poll")
	}
	mu.Lock()
	defer mu.Unlock()
	if notified["x"] != 1 || notified["y"] != 1 {
		t.Errorf("OnBan calls %v, want x and y once each", notified)
	}
}

// TestBanEpoch: the epoch moves with every ban added (AddBan, a detector,
// the bans file), before OnBan runs, and not when bans are removed or
// expire.
func TestBanEpoch(t *testing.T) {
	clk := newClock()
	path := filepath.Join(t.TempDir(), BansFileName)
	tick := make(chan time.Time)
	g, _ := newGuard(t, Config{BansFile: path, AuthFailures: Detector{Threshold: 2}}, clk, tick)
	var seen []uint64
	g.OnBan(func(Match) { seen = append(seen, g.BanEpoch()) })
	e0 := g.BanEpoch()
	b, err := g.AddBan(Ban{Kind: KindUsername, Value: "u", Expires: clk.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if g.BanEpoch() != e0+1 || len(seen) != 1 || seen[0] != e0+1 {
		t.Fatalf("after AddBan: epoch %d (was %d), seen by OnBan %v", g.BanEpoch(), e0, seen)
	}
	// A detector's ban.
	for range 2 {
		g.AuthFailed(Identity{Addr: ip("192.0.2.9")}, "bad password")
	}
	if g.BanEpoch() != e0+2 {
		t.Fatalf("after an automatic ban: epoch %d, want %d", g.BanEpoch(), e0+2)
	}
	// A ban added to the file by `moat ban add`.
	fb, err := NewManualBan(KindClientID, "c", 0, "", clk.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := (File{Path: path}).Update(func(cur []Ban) ([]Ban, error) { return append(cur, fb), nil }); err != nil {
		t.Fatal(err)
	}
	tick <- clk.Now()
	tick <- clk.Now()
	e := g.BanEpoch()
	if e != e0+3 {
		t.Fatalf("after a ban from the file: epoch %d, want %d", e, e0+3)
	}
	if _, err := g.RemoveBan(fb.ID); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute) // b expires
	tick <- clk.Now()
	tick <- clk.Now()
	if _, ok := g.BannedIdentity(Identity{Username: b.Value}); ok {
		t.Fatal("ban did not expire")
	}
	if g.BanEpoch() != e {
		t.Errorf("removal and expiry moved the epoch from %d to %d", e, g.BanEpoch())
	}
}
