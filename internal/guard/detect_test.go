package guard

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Password guessing from one address with a new client ID each time: the
// tenth failure within a minute bans the address and the username for 5
// minutes; other addresses are unaffected.
func TestAuthFailuresBanAddressAndUsername(t *testing.T) {
	clk := newClock()
	g, logs := newGuard(t, Config{}, clk, nil)
	var matches []Match
	g.OnBan(func(m Match) { matches = append(matches, m) })
	guesser := ip("127.0.0.2")
	for i := 1; i <= 10; i++ {
		v := g.AuthFailed(Identity{Addr: guesser, ClientID: fmt.Sprintf("c%d", i), Username: "alice"}, "bad password")
		if i < 10 && v != (Verdict{}) {
			t.Fatalf("failure %d: early verdict %+v", i, v)
		}
		if i == 10 && (!v.Disconnect || v.Detected != DetectAuthFailures || v.Reason == "") {
			t.Fatalf("failure 10: verdict %+v, want a detection that disconnects", v)
		}
		clk.Advance(5 * time.Second)
	}
	if b, ok := g.BannedAddr(guesser); !ok || b.Source != DetectAuthFailures || b.Expires.Sub(b.Created) < 5*time.Minute {
		t.Fatalf("address ban %+v %v; want one of at least 5m", b, ok)
	}
	if _, ok := g.BannedIdentity(Identity{Addr: ip("127.0.0.3"), Username: "alice"}); !ok {
		t.Error("username alice not banned")
	}
	if _, ok := g.BannedIdentity(Identity{Addr: ip("127.0.0.3"), ClientID: "c10", Username: "bob"}); ok {
		t.Error("client ID c10 banned after one failure")
	}
	if _, ok := g.BannedAddr(ip("127.0.0.3")); ok {
		t.Error("another address banned")
	}
	if len(matches) != 2 {
		t.Errorf("OnBan called %d times, want 2 (address, username)", len(matches))
	}
	if !strings.Contains(logs.String(), "auth failures detected") {
		t.Errorf("detection not logged:\n%s", logs)
	}
	clk.Advance(5*time.Minute + time.Second)
	if _, ok := g.BannedAddr(guesser); ok {
		t.Error("ban did not expire on the injected clock")
	}
	st := g.Stats()
	if st.Detectors[DetectAuthFailures].Detections != 1 || st.AutoBans != 2 {
		t.Errorf("stats %+v", st)
	}
}

// Failures spread over more than the window do not trigger.
func TestAuthFailuresWindow(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{}, clk, nil)
	id := Identity{Addr: ip("127.0.0.4"), Username: "carol"}
	for i := range 30 {
		if v := g.AuthFailed(id, "bad password"); v.Detected != "" {
			t.Fatalf("failure %d at one per 7s triggered: %+v", i+1, v)
		}
		clk.Advance(7 * time.Second)
	}
}

// Guessing one username from ten addresses (one failure each) bans the
// username, none of the addresses.
func TestAuthFailuresAcrossAddresses(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{}, clk, nil)
	var v Verdict
	for i := range 10 {
		v = g.AuthFailed(Identity{Addr: ip(fmt.Sprintf("127.0.0.%d", 10+i)), ClientID: fmt.Sprint(i), Username: "bob"}, "bad password")
	}
	if v.Detected != DetectAuthFailures {
		t.Fatalf("no detection: %+v", v)
	}
	if _, ok := g.BannedIdentity(Identity{Username: "bob"}); !ok {
		t.Error("username not banned")
	}
	for i := range 10 {
		if _, ok := g.BannedAddr(ip(fmt.Sprintf("127.0.0.%d", 10+i))); ok {
			t.Errorf("address 127.0.0.%d banned after one failure", 10+i)
		}
	}
}

// A client probing topics it may not use is disconnected at the 20th
// denial within a minute and its address, client ID and username are
// banned for 5 minutes.
func TestTopicScanDisconnectsAndBans(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{}, clk, nil)
	id := Identity{Addr: ip("127.0.0.5"), ClientID: "scanner", Username: "mallory"}
	for i := 1; i <= 20; i++ {
		v := g.Denied(id, "subscribe", fmt.Sprintf("secret/%d/#", i))
		if i < 20 && v.Detected != "" {
			t.Fatalf("denial %d triggered", i)
		}
		if i == 20 && (!v.Disconnect || v.Detected != DetectTopicScan) {
			t.Fatalf("denial 20: %+v", v)
		}
		clk.Advance(time.Second)
	}
	for _, probe := range []Identity{{Addr: id.Addr}, {ClientID: "scanner"}, {Username: "mallory"}} {
		b, ok := g.BannedIdentity(probe)
		if !ok || b.Expires.Sub(b.Created) != 5*time.Minute {
			t.Errorf("%+v: ban %+v %v; want 5m", probe, b, ok)
		}
	}
	if _, ok := g.BannedIdentity(Identity{Addr: ip("127.0.0.6"), ClientID: "good", Username: "alice"}); ok {
		t.Error("well-behaved client banned")
	}
}

// Repeated bans of the same identity double, up to MaxBan, and start over
// after RepeatMemory.
func TestBanDoublesUpToCap(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{AuthFailures: Detector{Keys: KeyAddr, MaxBan: 15 * time.Minute}}, clk, nil)
	addr := ip("127.0.0.7")
	trigger := func() time.Duration {
		t.Helper()
		var v Verdict
		for range 10 {
			v = g.AuthFailed(Identity{Addr: addr}, "bad password")
		}
		if v.Detected == "" {
			t.Fatal("no detection")
		}
		b, ok := g.BannedAddr(addr)
		if !ok {
			t.Fatal("not banned")
		}
		clk.Advance(b.Expires.Sub(clk.Now()) + time.Second)
		g.Poll()
		return b.Expires.Sub(b.Created)
	}
	for i, want := range []time.Duration{5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 15 * time.Minute} {
		if got := trigger(); got != want {
			t.Errorf("ban %d lasted %v, want %v", i+1, got, want)
		}
	}
	clk.Advance(DefaultRepeatMemory + time.Minute)
	if got := trigger(); got != 5*time.Minute {
		t.Errorf("ban after the repeat memory lasted %v, want 5m", got)
	}
	if st := g.Stats(); st.BansExpired != 5 {
		t.Errorf("BansExpired %d, want 5", st.BansExpired)
	}
}

// Flapping, abnormal disconnects, undeliverable publishing and silence are
// detected, counted and logged by default, without disconnecting or
// banning.
func TestLogOnlyDetectors(t *testing.T) {
	clk := newClock()
	g, logs := newGuard(t, Config{}, clk, nil)
	id := Identity{Addr: ip("127.0.0.8"), ClientID: "flappy", Username: "dave"}
	cases := []struct {
		name  string
		n     int
		event func() Verdict
		log   string
	}{
		{DetectFlapping, 10, func() Verdict { return g.Connected(id) }, "flapping detected"},
		{DetectAbnormal, 5, func() Verdict { return g.Disconnected(id, true, "connection reset") }, "abnormal disconnects detected"},
		{DetectUndeliverable, 100, func() Verdict { return g.Undeliverable(id, "nobody/listens") }, "undeliverable detected"},
		{DetectSilence, 1, func() Verdict { return g.Silent(id, 11*time.Minute) }, "silence detected"},
		{DetectLimitAbuse, 20, func() Verdict { return g.LimitHit(id, "topic_length", "topic longer than 65535 bytes") }, "limit abuse detected"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var v Verdict
			for i := range tc.n {
				v = tc.event()
				if i < tc.n-1 && v.Detected != "" {
					t.Fatalf("event %d triggered", i+1)
				}
			}
			if v.Detected != tc.name || v.Disconnect {
				t.Fatalf("verdict %+v; want a logged detection without disconnect", v)
			}
			if !strings.Contains(logs.String(), tc.log) {
				t.Errorf("log lacks %q", tc.log)
			}
			if d := g.Stats().Detectors[tc.name]; d.Detections != 1 || d.Events != uint64(tc.n) {
				t.Errorf("stats %+v", d)
			}
		})
	}
	if g.Disconnected(id, false, "") != (Verdict{}) {
		t.Error("a normal disconnect counted")
	}
	if st := g.Stats(); st.Bans != 0 {
		t.Errorf("log-only detectors banned: %d bans", st.Bans)
	}
	if g.SilenceAfter() != 10*time.Minute {
		t.Errorf("SilenceAfter %v", g.SilenceAfter())
	}
}

// Actions are configurable: flapping can ban; a disabled detector counts
// nothing.
func TestDetectorActionsConfigurable(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{Flapping: Detector{Threshold: 3, Action: ActionBan}, Undeliverable: Detector{Disabled: true}}, clk, nil)
	id := Identity{Addr: ip("127.0.0.9"), ClientID: "loop"}
	var v Verdict
	for range 3 {
		v = g.Connected(id)
	}
	if !v.Disconnect {
		t.Fatalf("verdict %+v", v)
	}
	if _, ok := g.BannedIdentity(Identity{ClientID: "loop"}); !ok {
		t.Error("client ID not banned")
	}
	for range 500 {
		if g.Undeliverable(id, "x").Detected != "" {
			t.Fatal("disabled detector triggered")
		}
	}
}

// The detectors' tables stay bounded under events from many identities.
func TestDetectorTableBounded(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{TrackedKeys: 1000}, clk, nil)
	for i := range 20000 {
		g.Undeliverable(Identity{ClientID: fmt.Sprint("c", i)}, "t")
	}
	if n := g.Stats().Detectors[DetectUndeliverable].Tracked; n > 1000 {
		t.Errorf("tracked %d identities, cap 1000", n)
	}
}

func TestConfigErrorsAtOnce(t *testing.T) {
	_, err := New(Config{AuthFailures: Detector{Threshold: -1}, ConnTableSize: 3, IPv6Prefix: 200, ConnBurst: -1})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"auth_failures: threshold", "conn_table_size", "ipv6_prefix", "conn_rate: burst"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// TestLimitAbuseCountsEachIdentity: limit hits are counted on each
// identity on its own, so a client that changes its client ID and address
// after each refused packet is still caught by its username; with action
// ban that username is banned, and the reason names the limit.
func TestLimitAbuseCountsEachIdentity(t *testing.T) {
	clk := newClock()
	g, _ := newGuard(t, Config{LimitAbuse: Detector{Threshold: 5, Action: ActionBan}}, clk, nil)
	var v Verdict
	for i := range 5 {
		v = g.LimitHit(Identity{Addr: ip(fmt.Sprintf("127.0.0.%d", 20+i)), ClientID: fmt.Sprint("c", i), Username: "prober"},
			"packet_size", "packet over the maximum packet size")
		if i < 4 && v.Detected != "" {
			t.Fatalf("hit %d detected: %+v", i+1, v)
		}
	}
	if v.Detected != DetectLimitAbuse || !v.Disconnect || !strings.Contains(v.Reason, "5 limits hit within 1m0s by the same username") {
		t.Fatalf("verdict %+v", v)
	}
	if _, ok := g.BannedIdentity(Identity{Username: "prober"}); !ok {
		t.Error("username not banned")
	}
	if _, ok := g.BannedAddr(ip("127.0.0.24")); ok {
		t.Error("an address that hit a limit once was banned")
	}
}
