package ota

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/e2e/internal/format"
)

type env struct {
	ring   *e2e.Keyring
	signer *e2e.Signer
	trust  *e2e.TrustStore
	sealer *e2e.GroupSealer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fw-publisher"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	cert, _ := x509.ParseCertificate(der)
	signer, err := e2e.NewSigner(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	trust, _ := e2e.NewTrustStore(cert)
	secret := make([]byte, e2e.KeySize)
	rand.Read(secret)
	ek, _ := e2e.NewEpochKey("ota", "ota/#", 1, secret, nil, time.Time{})
	ring := &e2e.Keyring{}
	ring.AddEpochKey(ek)
	sealer, err := e2e.NewGroupSealer(e2e.SealerConfig{Sender: "fw-publisher", Keys: ring, Sequence: &e2e.MemorySequenceStore{}})
	if err != nil {
		t.Fatal(err)
	}
	return &env{ring: ring, signer: signer, trust: trust, sealer: sealer}
}

func (e *env) receiver(t *testing.T, installed string) *Receiver {
	t.Helper()
	o, _ := e2e.NewGroupOpener(e2e.OpenerConfig{Keys: e.ring})
	r, err := NewReceiver(ReceiverConfig{Opener: o, Trust: e.trust, Installed: installed, Name: "sensor-fw"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (e *env) publish(t *testing.T, version string, fw []byte) []Message {
	t.Helper()
	msgs, err := Publish(PublishConfig{Topic: "ota/sensors/fw", Name: "sensor-fw", Version: version, ChunkSize: 1000, Signer: e.signer, Sealer: e.sealer}, fw)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func firmware(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestPublishReceive(t *testing.T) {
	e := newEnv(t)
	fw := firmware(10_500)
	msgs := e.publish(t, "1.2.0", fw)
	if len(msgs) != 1+11 {
		t.Fatalf("%d messages", len(msgs))
	}
	for _, m := range msgs {
		if bytes.Contains(m.Payload, fw[:32]) {
			t.Fatal("firmware visible in a message")
		}
	}
	r := e.receiver(t, "1.1.9")
	// Chunks out of order, one duplicated.
	order := []int{0, 3, 1, 2, 2, 5, 4, 6, 7, 8, 9, 10, 11}
	var done bool
	for _, i := range order {
		var err error
		if done, err = r.Handle(msgs[i].Topic, msgs[i].Payload); err != nil && !errors.Is(err, e2e.ErrReplay) {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if !done {
		t.Fatal("not complete")
	}
	img, err := r.Image()
	if err != nil || !bytes.Equal(img, fw) {
		t.Fatalf("image: %v", err)
	}
	if m := r.Manifest(); m.Version != "1.2.0" || e2e.CertIdentity(m.Signer) != "fw-publisher" {
		t.Fatalf("manifest %+v", m)
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	fw := firmware(3000)
	msgs := e.publish(t, "2.0", fw)

	t.Run("downgrade", func(t *testing.T) {
		r := e.receiver(t, "2.0")
		if _, err := r.Handle(msgs[0].Topic, msgs[0].Payload); !errors.Is(err, ErrDowngrade) {
			t.Fatalf("got %v", err)
		}
		r = e.receiver(t, "10.0")
		if _, err := r.Handle(msgs[0].Topic, msgs[0].Payload); !errors.Is(err, ErrDowngrade) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("truncation", func(t *testing.T) {
		r := e.receiver(t, "1.0")
		for _, m := range msgs[:len(msgs)-1] {
			if _, err := r.Handle(m.Topic, m.Payload); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Image(); !errors.Is(err, ErrIncomplete) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ciphertext tampered", func(t *testing.T) {
		r := e.receiver(t, "1.0")
		r.Handle(msgs[0].Topic, msgs[0].Payload)
		bad := bytes.Clone(msgs[1].Payload)
		bad[len(bad)-30] ^= 1
		if _, err := r.Handle(msgs[1].Topic, bad); !errors.Is(err, e2e.ErrTampered) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("chunk content forged by a key holder", func(t *testing.T) {
		r := e.receiver(t, "1.0")
		r.Handle(msgs[0].Topic, msgs[0].Payload)
		o, _ := e2e.NewGroupOpener(e2e.OpenerConfig{Keys: e.ring})
		m, err := o.Open(msgs[1].Topic, msgs[1].Payload)
		if err != nil {
			t.Fatal(err)
		}
		// Re-encode chunk 0 with altered data and seal it validly.
		d := format.NewDecoder(m.Plaintext)
		d.Array()
		d.Uint()
		mid, _ := d.Bytes(32)
		data, _ := func() ([]byte, error) { d.Uint(); return d.Bytes(-1) }()
		data = bytes.Clone(data)
		data[0] ^= 0xff
		c := format.AppendArray(nil, 4)
		c = format.AppendUint(c, kindChunk)
		c = format.AppendBytes(c, mid)
		c = format.AppendUint(c, 0)
		c = format.AppendBytes(c, data)
		sealed, _ := e.sealer.Seal("ota/sensors/fw", c)
		if _, err := r.Handle("ota/sensors/fw", sealed); !errors.Is(err, ErrTampered) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("untrusted signer", func(t *testing.T) {
		other := newEnv(t)
		other.ring = e.ring
		other.sealer, _ = e2e.NewGroupSealer(e2e.SealerConfig{Sender: "fw-publisher", Keys: e.ring, Sequence: &e2e.MemorySequenceStore{}})
		forged := other.publish(t, "9.0", fw)
		r := e.receiver(t, "1.0")
		if _, err := r.Handle(forged[0].Topic, forged[0].Payload); !errors.Is(err, ErrTampered) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("chunk before manifest", func(t *testing.T) {
		r := e.receiver(t, "")
		if _, err := r.Handle(msgs[1].Topic, msgs[1].Payload); !errors.Is(err, ErrNoManifest) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestCompareVersions(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{{"1.2.3", "1.2.3", 0}, {"1.10", "1.9", 1}, {"1", "1.0.0", 0}, {"0.9", "1", -1}}
	for _, tt := range tests {
		if got, err := CompareVersions(tt.a, tt.b); err != nil || got != tt.want {
			t.Errorf("%s vs %s: %d %v", tt.a, tt.b, got, err)
		}
	}
	for _, bad := range []string{"", "1..2", "v1", "01.2", "1.-2"} {
		if _, err := CompareVersions(bad, "1"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzManifest checks the manifest decoder: no panic, bounded allocation,
// and canonical (an accepted manifest re-encodes to the same bytes).
func FuzzManifest(f *testing.F) {
	m := &Manifest{Name: "fw", Version: "1.2.3", Size: 5, ChunkSize: 4, ChunkHashes: make([][32]byte, 2)}
	f.Add(m.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseManifest(b, DefaultMaxSize)
		if err == nil && !bytes.Equal(m.marshal(), b) {
			t.Fatalf("manifest not canonical: %x", b)
		}
	})
}
