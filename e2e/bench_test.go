package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"
)

func benchFixture(b *testing.B) (*GroupSealer, *GroupOpener) {
	ring := &Keyring{}
	ring.AddEpochKey(mustEpoch(b, "temps", "factory/+/temp", 1, testSecret(1), []string{"sensor-1"}, time.Time{}))
	now := func() time.Time { return t0 }
	s, err := NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: ring, Sequence: &MemorySequenceStore{}, Now: now})
	if err != nil {
		b.Fatal(err)
	}
	o, err := NewGroupOpener(OpenerConfig{Keys: ring, Now: now})
	if err != nil {
		b.Fatal(err)
	}
	return s, o
}

func BenchmarkSeal256(b *testing.B) {
	s, _ := benchFixture(b)
	pt := make([]byte, 256)
	b.SetBytes(256)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := s.Seal("factory/line1/temp", pt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen256(b *testing.B) {
	s, o := benchFixture(b)
	pt := make([]byte, 256)
	msgs := make([][]byte, 4096)
	for i := range msgs {
		msgs[i], _ = s.Seal("factory/line1/temp", pt)
	}
	b.SetBytes(256)
	b.ReportAllocs()
	defer reportCPU(b)()
	i := 0
	for b.Loop() {
		if i == len(msgs) {
			// Every message has been seen: start a fresh replay window.
			b.StopTimer()
			o.replay = make(map[string]*window)
			i = 0
			b.StartTimer()
		}
		if _, err := o.Open("factory/line1/temp", msgs[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkRawSeal256(b *testing.B) {
	k, _ := NewRawKey(testSecret(1))
	pt := make([]byte, 256)
	b.SetBytes(256)
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		k.Seal("", pt)
	}
}

// BenchmarkBundle measures key delivery per member: sealing a bundle of
// four epoch keys to one member (what the key service does per member on
// each rotation) and opening it (what the member does).
func BenchmarkBundle(b *testing.B) {
	_, svc, _ := ed25519.GenerateKey(rand.Reader)
	var keys []*EpochKey
	for e := uint64(1); e <= 4; e++ {
		keys = append(keys, mustEpoch(b, "temps", "factory/+/temp", e, testSecret(byte(e)), []string{"sensor-1"}, time.Time{}))
	}
	bundle := &Bundle{Member: "m", Serial: 1, Issued: t0, EpochKeys: keys}
	for _, kem := range []KEM{KEMX25519, KEMP256, KEMMLKEM768X25519} {
		mk, err := GenerateMemberKey(kem)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("seal/"+kem.String(), func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if _, err := SealBundle(bundle, mk.Public(), svc); err != nil {
					b.Fatal(err)
				}
			}
		})
		sealed, _ := SealBundle(bundle, mk.Public(), svc)
		b.Run("open/"+kem.String(), func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if _, err := OpenBundle(sealed, mk, "m", svc.Public().(ed25519.PublicKey)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Logf("%s: public key %d bytes, bundle %d bytes", kem, len(mk.Public().Key), len(sealed))
	}
}
