package e2e

import (
	"bytes"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func testSecret(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func mustEpoch(t testing.TB, group, filter string, epoch uint64, secret []byte, writers []string, notAfter time.Time) *EpochKey {
	t.Helper()
	k, err := NewEpochKey(group, filter, epoch, secret, writers, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type fixture struct {
	clk    *testutil.Clock
	ring   *Keyring
	sealer *GroupSealer
	opener *GroupOpener
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{clk: testutil.NewClock(t0), ring: &Keyring{}}
	f.ring.AddEpochKey(mustEpoch(t, "temps", "factory/+/temp", 1, testSecret(1), []string{"sensor-1", "sensor-2"}, time.Time{}))
	var err error
	f.sealer, err = NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: f.ring, Sequence: &MemorySequenceStore{}, Now: f.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.opener, err = NewGroupOpener(OpenerConfig{Keys: f.ring, Now: f.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// newFixtureOpener returns another opener of f's keys, with its own replay
// state.
func newFixtureOpener(t testing.TB, f *fixture) *GroupOpener {
	t.Helper()
	o, err := NewGroupOpener(OpenerConfig{Keys: f.ring, Now: f.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// TestSecurityRetainFlagNotTrusted performs the attack of an observer with
// no key: it captures an encrypted, non-retained command ("unlock-door")
// and republishes it with the MQTT retain flag set, again and again. The
// transport flag is not trusted: the message is not marked retained in its
// authenticated header, so it opens only once (replay window) and only
// within MaxAge. A message its sender marked retained opens at most once
// per opener (a replayed copy, or an older retained copy after a newer
// one, is refused), within MaxRetainedAge.
func TestSecurityRetainFlagNotTrusted(t *testing.T) {
	f := newFixture(t)
	const topic = "factory/door/temp"
	cmd, err := f.sealer.Seal(topic, []byte("unlock-door"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.opener.Open(topic, cmd); err != nil {
		t.Fatal(err)
	}
	// Republished with retain: every delivery is refused.
	for i := 0; i < 3; i++ {
		if _, err := f.opener.Open(topic, cmd); !errors.Is(err, ErrReplay) {
			t.Fatalf("replayed command opened again: %v", err)
		}
	}
	// A subscriber that did not see it live: MaxAge, not the 24 h.
	f.clk.Advance(DefaultMaxAge + time.Second)
	if _, err := newFixtureOpener(t, f).Open(topic, cmd); !errors.Is(err, ErrTooOld) {
		t.Fatalf("replayed command older than MaxAge: %v", err)
	}

	// Retained-marked messages: at most once, and never an older one.
	old, _ := f.sealer.SealRetained(topic, []byte("locked"))
	cur, _ := f.sealer.SealRetained(topic, []byte("unlocked"))
	f.clk.Advance(time.Hour)
	o := newFixtureOpener(t, f)
	if m, err := o.Open(topic, cur); err != nil || !m.Retained || string(m.Plaintext) != "unlocked" {
		t.Fatalf("retained message: %v %+v", err, m)
	}
	if _, err := o.Open(topic, cur); !errors.Is(err, ErrReplay) {
		t.Fatalf("retained message opened twice: %v", err)
	}
	if _, err := o.Open(topic, old); !errors.Is(err, ErrReplay) {
		t.Fatalf("older retained message opened after a newer one: %v", err)
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	f := newFixture(t)
	for _, pt := range [][]byte{nil, []byte("21.5"), bytes.Repeat([]byte{0xaa}, 70000)} {
		msg, err := f.sealer.Seal("factory/line1/temp", pt)
		if err != nil {
			t.Fatal(err)
		}
		if len(pt) > 0 && bytes.Contains(msg, pt) {
			t.Fatal("ciphertext contains the plaintext")
		}
		m, err := f.opener.Open("factory/line1/temp", msg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m.Plaintext, pt) || m.Group != "temps" || m.Epoch != 1 || m.Sender != "sensor-1" || !m.Time.Equal(t0) {
			t.Fatalf("got %+v", m)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	f := newFixture(t)
	const topic = "factory/line1/temp"
	msg, err := f.sealer.Seal(topic, []byte("21.5"))
	if err != nil {
		t.Fatal(err)
	}
	other := &Keyring{}
	other.AddEpochKey(mustEpoch(t, "temps", "factory/+/temp", 1, testSecret(2), nil, time.Time{}))
	wrongKey, _ := NewGroupOpener(OpenerConfig{Keys: other, Now: f.clk.Now})
	noEpoch, _ := NewGroupOpener(OpenerConfig{Keys: &Keyring{}, Now: f.clk.Now})

	flip := func(i int) []byte { b := bytes.Clone(msg); b[i] ^= 1; return b }
	tests := []struct {
		name   string
		opener *GroupOpener
		topic  string
		msg    []byte
		want   error
	}{
		{"other topic", f.opener, "factory/line2/temp", msg, ErrWrongTopic},
		{"topic outside group", f.opener, "office/x/temp", msg, ErrWrongTopic},
		{"last bit of tag", f.opener, topic, flip(len(msg) - 1), ErrTampered},
		{"first ciphertext byte", f.opener, topic, flip(len(msg) - 20), ErrTampered},
		{"truncated", f.opener, topic, msg[:len(msg)-1], ErrMalformed},
		{"wrong key", wrongKey, topic, msg, ErrTampered},
		{"unknown epoch", noEpoch, topic, msg, ErrUnknownEpoch},
		{"not COSE", f.opener, topic, []byte("hello"), ErrMalformed},
		{"wildcard topic", f.opener, "factory/+/temp", msg, ErrWrongTopic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.opener.Open(tt.topic, tt.msg)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// Every single-bit change anywhere in the message must be refused.
func TestEveryBitFlipRefused(t *testing.T) {
	f := newFixture(t)
	msg, _ := f.sealer.Seal("factory/a/temp", []byte("payload"))
	for i := range msg {
		for bit := 0; bit < 8; bit++ {
			b := bytes.Clone(msg)
			b[i] ^= 1 << bit
			if _, err := f.opener.Open("factory/a/temp", b); err == nil {
				t.Fatalf("flip of byte %d bit %d accepted", i, bit)
			}
		}
	}
}

func TestReplayWindow(t *testing.T) {
	f := newFixture(t)
	const topic = "factory/a/temp"
	var msgs [][]byte
	for i := 0; i < ReplayWindow+10; i++ {
		m, err := f.sealer.Seal(topic, []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	open := func(i int) error { _, err := f.opener.Open(topic, msgs[i]); return err }
	if err := open(5); err != nil {
		t.Fatal(err)
	}
	if err := open(5); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay accepted: %v", err)
	}
	if err := open(3); err != nil { // out of order inside the window
		t.Fatal(err)
	}
	if err := open(ReplayWindow + 9); err != nil {
		t.Fatal(err)
	}
	if err := open(4); !errors.Is(err, ErrReplay) { // now below the window
		t.Fatalf("got %v", err)
	}
	if err := open(ReplayWindow + 8); err != nil {
		t.Fatal(err)
	}
}

func TestAgeAndSkew(t *testing.T) {
	f := newFixture(t)
	const topic = "factory/a/temp"
	msg, _ := f.sealer.Seal(topic, []byte("x"))
	f.clk.Advance(DefaultMaxAge + time.Second)
	if _, err := f.opener.Open(topic, msg); !errors.Is(err, ErrTooOld) {
		t.Fatalf("got %v", err)
	}
	f.clk.Advance(-DefaultMaxAge - time.Second)
	retained, _ := f.sealer.SealRetained(topic, []byte("x"))
	f.clk.Advance(DefaultMaxAge + time.Second)
	if m, err := f.opener.Open(topic, retained); err != nil || !m.Retained {
		t.Fatalf("retained: %v", err)
	}
	f.clk.Advance(DefaultMaxRetainedAge)
	if _, err := newFixtureOpener(t, f).Open(topic, retained); !errors.Is(err, ErrTooOld) {
		t.Fatalf("got %v", err)
	}
	future, _ := f.sealer.Seal(topic, []byte("x"))
	f.clk.Advance(-time.Hour)
	if _, err := f.opener.Open(topic, future); !errors.Is(err, ErrFromFuture) {
		t.Fatalf("got %v", err)
	}
}

func TestUnknownSenderAndWriterKeys(t *testing.T) {
	f := newFixture(t)
	ek := f.ring.EpochKeys()[0]
	// A writer-only member holds just its sender key.
	sk3, err := ek.SenderKey("intruder")
	if err != nil {
		t.Fatal(err)
	}
	wring := &Keyring{}
	wring.AddSenderKey(sk3)
	s, _ := NewGroupSealer(SealerConfig{Sender: "intruder", Keys: wring, Sequence: &MemorySequenceStore{}, Now: f.clk.Now})
	msg, err := s.Seal("factory/a/temp", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.opener.Open("factory/a/temp", msg); !errors.Is(err, ErrUnknownSender) {
		t.Fatalf("got %v", err)
	}
	sk2, _ := ek.SenderKey("sensor-2")
	wring.AddSenderKey(sk2)
	s2, _ := NewGroupSealer(SealerConfig{Sender: "sensor-2", Keys: wring, Sequence: &MemorySequenceStore{}, Now: f.clk.Now})
	msg, err = s2.Seal("factory/a/temp", []byte("ok"))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := f.opener.Open("factory/a/temp", msg); err != nil || m.Sender != "sensor-2" {
		t.Fatalf("got %v %v", m, err)
	}
	if _, err := s2.Seal("office/a", []byte("x")); !errors.Is(err, ErrNoKey) {
		t.Fatalf("got %v", err)
	}
}

func TestEpochGrace(t *testing.T) {
	f := newFixture(t)
	const topic = "factory/a/temp"
	old, _ := f.sealer.Seal(topic, []byte("old"))
	// Rotate: epoch 1 retires in 1 minute, epoch 2 is current.
	f.ring.AddEpochKey(mustEpoch(t, "temps", "factory/+/temp", 1, testSecret(1), []string{"sensor-1", "sensor-2"}, t0.Add(time.Minute)))
	f.ring.AddEpochKey(mustEpoch(t, "temps", "factory/+/temp", 2, testSecret(9), []string{"sensor-1", "sensor-2"}, time.Time{}))
	nw, _ := f.sealer.Seal(topic, []byte("new"))
	m, err := f.opener.Open(topic, nw)
	if err != nil || m.Epoch != 2 {
		t.Fatalf("new epoch: %v %v", m, err)
	}
	if _, err := f.opener.Open(topic, old); err != nil {
		t.Fatalf("old epoch within grace: %v", err)
	}
	f.clk.Advance(2 * time.Minute)
	old2 := sealAt(t, f, 1, topic)
	if _, err := f.opener.Open(topic, old2); !errors.Is(err, ErrUnknownEpoch) {
		t.Fatalf("old epoch after grace: %v", err)
	}
}

func sealAt(t *testing.T, f *fixture, epoch uint64, topic string) []byte {
	for _, k := range f.ring.EpochKeys() {
		if k.Epoch() == epoch {
			sk, _ := k.SenderKey("sensor-1")
			return sealWith(sk, topic, 1000, f.clk.Now().UnixMilli(), 0, []byte("x"))
		}
	}
	t.Fatal("no epoch")
	return nil
}

func TestFileSequenceStoreSkipsAhead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.json")
	s1, err := OpenFileSequenceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	ring := newFixture(t).ring
	sealer, _ := NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: ring, Sequence: s1, Block: 16, Now: func() time.Time { return t0 }})
	opener, _ := NewGroupOpener(OpenerConfig{Keys: ring, Now: func() time.Time { return t0 }})
	var last uint64
	for i := 0; i < 20; i++ {
		msg, err := sealer.Seal("factory/a/temp", nil)
		if err != nil {
			t.Fatal(err)
		}
		m, err := opener.Open("factory/a/temp", msg)
		if err != nil {
			t.Fatal(err)
		}
		last = m.Seq
	}
	// "Crash" and restart: the new sealer must start past every number used.
	s2, err := OpenFileSequenceStore(path)
	if err != nil {
		t.Fatal(err)
	}
	sealer2, _ := NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: ring, Sequence: s2, Block: 16, Now: func() time.Time { return t0 }})
	msg, _ := sealer2.Seal("factory/a/temp", nil)
	m, err := opener.Open("factory/a/temp", msg)
	if err != nil {
		t.Fatal(err)
	}
	if m.Seq <= last {
		t.Fatalf("restart reused sequence %d (last used %d)", m.Seq, last)
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := NewGroupSealer(SealerConfig{})
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, want := range []string{"Sender", "Keys", "Sequence"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := NewGroupOpener(OpenerConfig{}); err == nil {
		t.Fatal("empty opener config accepted")
	}
}

func TestMatchTopic(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"factory/+/temp", "factory/a/temp", true},
		{"factory/+/temp", "factory/a/b/temp", false},
		{"factory/#", "factory", true},
		{"factory/#", "factory/a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$moat/x", false},
		{"$moat/keys/+", "$moat/keys/dev1", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/", true},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"+", "a", true},
		{"+", "a/b", false},
		{"+/+", "a/b", true},
		{"a/#", "a/b", true},
		{"a/b/#", "a/b", true},
		{"a/b/#", "a/c", false},
		{"a", "a/b", false},
		{"a/b", "a", false},
		{"+/#", "/x", true},
		{"/+", "/x", true},
		{"a/+/b", "a//b", true},
		{"ab", "a", false},
		{"a", "ab", false},
		{"a/+", "a", false},
		{"$moat/#", "$moat", true},
		{"sport/tennis/+", "sport/tennis/player1/ranking", false},
	}
	for _, tt := range tests {
		t.Run(tt.filter+" "+tt.topic, func(t *testing.T) {
			if got := MatchTopic(tt.filter, tt.topic); got != tt.want {
				t.Fatalf("got %v", got)
			}
		})
	}
}

func TestSecretsRedacted(t *testing.T) {
	ek := mustEpoch(t, "g", "a/#", 1, testSecret(0x41), nil, time.Time{})
	sk, _ := ek.SenderKey("s")
	rk, _ := NewRawKey(testSecret(0x41))
	for _, s := range []string{ek.String(), sk.String(), rk.String()} {
		if bytes.Contains([]byte(s), []byte("AAAA")) || bytes.Contains([]byte(s), []byte("4141")) {
			t.Fatalf("secret printed: %s", s)
		}
	}
}

// Two stores on one file (two processes) never hand out the same block.
func TestFileSequenceStoreShared(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.json")
	a, _ := OpenFileSequenceStore(path)
	b, _ := OpenFileSequenceStore(path)
	seen := map[uint64]bool{}
	for i := 0; i < 10; i++ {
		for _, s := range []*FileSequenceStore{a, b} {
			start, err := s.Reserve("g\x00s", 100)
			if err != nil {
				t.Fatal(err)
			}
			if seen[start] {
				t.Fatalf("block %d handed out twice", start)
			}
			seen[start] = true
		}
	}
}

// Sealers, openers and the keyring are used from many goroutines at once.
func TestConcurrentUse(t *testing.T) {
	f := newFixture(t)
	const workers, per = 4, 200
	msgs := make(chan []byte, workers*per)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				m, err := f.sealer.Seal("factory/a/temp", []byte("x"))
				if err != nil {
					t.Error(err)
					return
				}
				msgs <- m
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Key changes while sealing: the same epoch re-added resets caches.
		for i := 0; i < 20; i++ {
			f.ring.AddEpochKey(mustEpoch(t, "temps", "factory/+/temp", 1, testSecret(1), []string{"sensor-1", "sensor-2"}, time.Time{}))
		}
	}()
	wg.Wait()
	close(msgs)
	var owg sync.WaitGroup
	var mu sync.Mutex
	seen := map[uint64]bool{}
	for w := 0; w < workers; w++ {
		owg.Add(1)
		go func() {
			defer owg.Done()
			for m := range msgs {
				// Out of order beyond the replay window: a fresh opener
				// for each message.
				got, err := newFixtureOpener(t, f).Open("factory/a/temp", m)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[got.Seq] {
					t.Errorf("sequence %d used twice", got.Seq)
				}
				seen[got.Seq] = true
				mu.Unlock()
			}
		}()
	}
	owg.Wait()
	if len(seen) != workers*per {
		t.Fatalf("%d distinct sequence numbers, want %d", len(seen), workers*per)
	}
}
