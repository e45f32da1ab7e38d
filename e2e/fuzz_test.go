package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/fips140"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fuzzRing is a fixed keyring for FuzzOpen.
func fuzzRing(t testing.TB) *Keyring {
	r := &Keyring{}
	r.AddEpochKey(mustEpoch(t, "temps", "factory/+/temp", 1, testSecret(1), nil, time.Time{}))
	return r
}

func fuzzSeeds(t testing.TB) [][]byte {
	ring := fuzzRing(t)
	s, err := NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: ring, Sequence: &MemorySequenceStore{}, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	var seeds [][]byte
	for _, pt := range []string{"", "21.5", "a longer payload of some bytes"} {
		m, _ := s.Seal("factory/a/temp", []byte(pt))
		seeds = append(seeds, m)
	}
	return seeds
}

// FuzzOpen checks that Open never panics and is not malleable: the only
// inputs that open are the messages the sealer produced.
func FuzzOpen(f *testing.F) {
	seeds := fuzzSeeds(f)
	for _, s := range seeds {
		f.Add(s)
	}
	o, err := NewGroupOpener(OpenerConfig{Keys: fuzzRing(f), Now: func() time.Time { return t0 }, MaxAge: -1, MaxRetainedAge: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if _, err := o.Open("factory/a/temp", msg); err == nil {
			for _, s := range seeds {
				if bytes.Equal(s, msg) {
					return
				}
			}
			t.Fatalf("a message that was never sealed opened: %x", msg)
		}
	})
}

var fuzzServiceKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))

// FuzzOpenBundle checks that bundle decoding never panics and accepts only
// the genuine bundle.
func FuzzOpenBundle(f *testing.F) {
	kem := KEMX25519 // the fastest
	if fips140.Enabled() {
		kem = KEMP256
	}
	mk, err := GenerateMemberKey(kem)
	if err != nil {
		f.Fatal(err)
	}
	ek := mustEpoch(f, "g", "a/#", 2, testSecret(2), []string{"w"}, time.Time{})
	sk, _ := ek.SenderKey("w")
	genuine, err := SealBundle(&Bundle{Member: "m", Serial: 1, Issued: t0, EpochKeys: []*EpochKey{ek}, SenderKeys: []*SenderKey{sk}}, mk.Public(), fuzzServiceKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(genuine)
	pub := fuzzServiceKey.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, msg []byte) {
		if _, err := OpenBundle(msg, mk, "m", pub); err == nil && !bytes.Equal(msg, genuine) {
			t.Fatalf("forged bundle accepted: %x", msg)
		}
	})
}

// TestWriteFuzzCorpus refreshes the committed seed corpora when
// MOAT_WRITE_CORPUS=1; otherwise it checks they exist.
func TestWriteFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	if os.Getenv("MOAT_WRITE_CORPUS") != "1" {
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("seed corpus missing: %v", err)
		}
		return
	}
	os.MkdirAll(dir, 0o755)
	for i, s := range fuzzSeeds(t) {
		writeCorpus(t, filepath.Join(dir, "seed"+string(rune('0'+i))), s)
	}
}

func writeCorpus(t *testing.T, path string, b []byte) {
	var buf bytes.Buffer
	buf.WriteString("go test fuzz v1\n[]byte(")
	buf.WriteString(quoteGo(b))
	buf.WriteString(")\n")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func quoteGo(b []byte) string {
	const hexdig = "0123456789abcdef"
	out := []byte{'"'}
	for _, c := range b {
		out = append(out, '\\', 'x', hexdig[c>>4], hexdig[c&15])
	}
	return string(append(out, '"'))
}
