package e2e

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"
)

func selfSigned(t testing.TB, cn string, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    t0.Add(-2 * 365 * 24 * time.Hour),
		NotAfter:     t0.Add(365 * 24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestSignedMessages(t *testing.T) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name string
		key  crypto.Signer
	}{{"Ed25519", edKey}, {"ES256", ecKey}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			cert := selfSigned(t, "sensor-1", tc.key)
			signer, err := NewSigner(cert, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			sealer, err := NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: f.ring, Sequence: &MemorySequenceStore{}, Now: f.clk.Now, Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			trust, _ := NewTrustStore(cert)
			opener, _ := NewGroupOpener(OpenerConfig{Keys: f.ring, Now: f.clk.Now, Trust: trust, RequireSignature: true})
			msg, err := sealer.Seal("factory/a/temp", []byte("signed"))
			if err != nil {
				t.Fatal(err)
			}
			m, err := opener.Open("factory/a/temp", msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(m.Plaintext) != "signed" || m.Signer == nil || CertIdentity(m.Signer) != "sensor-1" {
				t.Fatalf("got %+v", m)
			}
			// Unsigned messages are refused when signatures are required.
			plain, _ := f.sealer.Seal("factory/a/temp", []byte("plain"))
			if _, err := opener.Open("factory/a/temp", plain); !errors.Is(err, ErrUnsigned) {
				t.Fatalf("got %v", err)
			}
			// A signer the store does not know.
			empty, _ := NewGroupOpener(OpenerConfig{Keys: f.ring, Now: f.clk.Now, Trust: &TrustStore{}})
			msg2, _ := sealer.Seal("factory/a/temp", []byte("signed"))
			if _, err := empty.Open("factory/a/temp", msg2); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("got %v", err)
			}
		})
	}
	t.Run("identity mismatch", func(t *testing.T) {
		f := newFixture(t)
		// sensor-2 holds the group key and signs with its own certificate
		// but claims to be sensor-1 in the encryption header.
		cert2 := selfSigned(t, "sensor-2", otherKey)
		signer, _ := NewSigner(cert2, otherKey)
		sk, _ := f.ring.EpochKeys()[0].SenderKey("sensor-1")
		ms := t0.UnixMilli()
		inner, err := signer.signMessage("factory/a/temp", ms, []byte("forged"))
		if err != nil {
			t.Fatal(err)
		}
		msg := sealWith(sk, "factory/a/temp", 7, ms, 18, inner)
		trust, _ := NewTrustStore(cert2)
		opener, _ := NewGroupOpener(OpenerConfig{Keys: f.ring, Now: f.clk.Now, Trust: trust})
		if _, err := opener.Open("factory/a/temp", msg); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("signer must be sender", func(t *testing.T) {
		f := newFixture(t)
		cert2 := selfSigned(t, "sensor-2", otherKey)
		signer, _ := NewSigner(cert2, otherKey)
		if _, err := NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: f.ring, Sequence: &MemorySequenceStore{}, Signer: signer}); err == nil {
			t.Fatal("mismatched signer accepted")
		}
	})
	t.Run("key mismatch", func(t *testing.T) {
		if _, err := NewSigner(selfSigned(t, "a", edKey), otherKey); err == nil {
			t.Fatal("certificate and key mismatch accepted")
		}
	})
}

func TestBundleRoundTrip(t *testing.T) {
	_, svc, _ := ed25519.GenerateKey(rand.Reader)
	for _, kem := range []KEM{KEMMLKEM768X25519, KEMX25519, KEMP256, KEMMLKEM768P256, KEMMLKEM1024P384} {
		t.Run(kem.String(), func(t *testing.T) {
			if fips140.Enabled() && !kem.FIPSApproved() {
				t.Skip("refused in FIPS 140-3 mode (TestFIPSMemberKeys)")
			}
			mk, err := GenerateMemberKey(kem)
			if err != nil {
				t.Fatal(err)
			}
			pemBytes, _ := mk.MarshalPEM()
			mk2, err := ParseMemberKeyPEM(pemBytes)
			if err != nil {
				t.Fatal(err)
			}
			ek := mustEpoch(t, "temps", "factory/+/temp", 3, testSecret(3), []string{"sensor-1"}, time.Time{})
			old := mustEpoch(t, "temps", "factory/+/temp", 2, testSecret(2), []string{"sensor-1"}, t0.Add(time.Hour))
			sk, _ := ek.SenderKey("sensor-1")
			b := &Bundle{Member: "dev-1", Serial: 5, Issued: t0, EpochKeys: []*EpochKey{ek, old}, SenderKeys: []*SenderKey{sk}}
			msg, err := SealBundle(b, mk.Public(), svc)
			if err != nil {
				t.Fatal(err)
			}
			svcPub := svc.Public().(ed25519.PublicKey)
			got, err := OpenBundle(msg, mk2, "dev-1", svcPub)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.EpochKeys) != 2 || len(got.SenderKeys) != 1 || !got.SenderKeys[0].Equal(sk) || got.Serial != 5 {
				t.Fatalf("got %+v", got)
			}
			if !got.EpochKeys[1].NotAfter().Equal(t0.Add(time.Hour)) {
				t.Fatalf("notAfter lost: %v", got.EpochKeys[1].NotAfter())
			}
			if _, err := OpenBundle(msg, mk2, "dev-2", svcPub); !errors.Is(err, ErrBadBundle) {
				t.Fatalf("wrong member: %v", err)
			}
			_, other, _ := ed25519.GenerateKey(rand.Reader)
			if _, err := OpenBundle(msg, mk2, "dev-1", other.Public().(ed25519.PublicKey)); !errors.Is(err, ErrBadBundle) {
				t.Fatalf("wrong service key: %v", err)
			}
			bad := append([]byte(nil), msg...)
			bad[len(bad)/2] ^= 1
			if _, err := OpenBundle(bad, mk2, "dev-1", svcPub); !errors.Is(err, ErrBadBundle) {
				t.Fatalf("tampered: %v", err)
			}
			var ring Keyring
			if err := ring.ApplyBundle(got); err != nil {
				t.Fatal(err)
			}
			if err := ring.ApplyBundle(got); !errors.Is(err, ErrBadBundle) {
				t.Fatalf("replayed bundle applied: %v", err)
			}
		})
	}
}
