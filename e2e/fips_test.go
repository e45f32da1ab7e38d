package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"testing"
	"time"
)

// requireFIPS skips a test outside FIPS 140-3 mode; `make fips-test` runs
// these with GODEBUG=fips140=on.
func requireFIPS(t *testing.T) {
	t.Helper()
	if !fips140.Enabled() {
		t.Skip("not in FIPS 140-3 mode; run with GODEBUG=fips140=on (make fips-test)")
	}
}

func TestKEMFIPSApproved(t *testing.T) {
	for kem, want := range map[KEM]bool{
		KEMMLKEM768P256: true, KEMMLKEM1024P384: true, KEMP256: true,
		KEMMLKEM768X25519: false, KEMX25519: false,
	} {
		if kem.FIPSApproved() != want {
			t.Errorf("%s.FIPSApproved() = %v, want %v", kem, !want, want)
		}
		if got, err := ParseKEM(kem.String()); err != nil || got != kem {
			t.Errorf("ParseKEM(%q) = %v, %v", kem, got, err)
		}
	}
	want := DefaultKEM
	if fips140.Enabled() {
		want = FIPSKEM
	}
	if got, _ := ParseKEM(""); got != want {
		t.Errorf("ParseKEM(\"\") = %s, want %s", got, want)
	}
}

// TestFIPSMemberKeys checks that in FIPS 140-3 mode new member keys use
// ML-KEM-768 with P-256, and that keys using X25519 are refused whether
// generated, parsed, registered or sealed to.
func TestFIPSMemberKeys(t *testing.T) {
	requireFIPS(t)
	mk, err := GenerateMemberKey(0)
	if err != nil {
		t.Fatal(err)
	}
	if mk.KEM() != KEMMLKEM768P256 {
		t.Fatalf("default member key in FIPS mode is %s, want mlkem768p256", mk.KEM())
	}
	for _, kem := range []KEM{KEMX25519, KEMMLKEM768X25519} {
		if _, err := GenerateMemberKey(kem); !errors.Is(err, ErrNotApproved) {
			t.Errorf("GenerateMemberKey(%s) in FIPS mode: %v, want ErrNotApproved", kem, err)
		}
	}
	// An X25519 member key made outside FIPS mode (any 32 bytes are one).
	x := append([]byte{0x00, 0x20}, bytes.Repeat([]byte{9}, 32)...)
	if _, err := ParseMemberKeyPEM(pem.EncodeToMemory(&pem.Block{Type: memberKeyPEM, Bytes: x})); !errors.Is(err, ErrNotApproved) {
		t.Errorf("ParseMemberKeyPEM(x25519) in FIPS mode: %v, want ErrNotApproved", err)
	}
	xpub := MemberPublicKey{KEM: KEMX25519, Key: bytes.Repeat([]byte{9}, 32)}
	if err := xpub.Validate(); !errors.Is(err, ErrNotApproved) {
		t.Errorf("registering an x25519 key in FIPS mode: %v, want ErrNotApproved", err)
	}
	_, svc, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := SealBundle(&Bundle{Member: "m", Serial: 1, Issued: t0}, xpub, svc); !errors.Is(err, ErrNotApproved) {
		t.Errorf("sealing a bundle to an x25519 key in FIPS mode: %v, want ErrNotApproved", err)
	}
}

// TestFIPSSealOpen runs the whole e2e path in FIPS 140-3 mode: a key
// bundle sealed with HPKE to an ML-KEM-768+P-256 member key and signed
// with Ed25519, messages sealed with AES-256-GCM and signed with ES256
// and Ed25519, and the raw AES-GCM format.
func TestFIPSSealOpen(t *testing.T) {
	requireFIPS(t)
	_, svc, _ := ed25519.GenerateKey(rand.Reader)
	mk, err := GenerateMemberKey(0)
	if err != nil {
		t.Fatal(err)
	}
	ek := mustEpoch(t, "temps", "factory/+/temp", 1, testSecret(1), []string{"sensor-1"}, time.Time{})
	msg, err := SealBundle(&Bundle{Member: "sensor-1", Serial: 1, Issued: t0, EpochKeys: []*EpochKey{ek}}, mk.Public(), svc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := OpenBundle(msg, mk, "sensor-1", svc.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	ring := &Keyring{}
	if err := ring.ApplyBundle(b); err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return t0 }
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, key := range map[string]crypto.Signer{"Ed25519": edKey, "ES256": ecKey} {
		t.Run(name, func(t *testing.T) {
			cert := selfSigned(t, "sensor-1", key)
			signer, err := NewSigner(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			sealer, err := NewGroupSealer(SealerConfig{Sender: "sensor-1", Keys: ring, Sequence: &MemorySequenceStore{}, Now: now, Signer: signer})
			if err != nil {
				t.Fatal(err)
			}
			trust, _ := NewTrustStore(cert)
			opener, _ := NewGroupOpener(OpenerConfig{Keys: ring, Now: now, Trust: trust, RequireSignature: true})
			ct, err := sealer.Seal("factory/a/temp", []byte("21.5"))
			if err != nil {
				t.Fatal(err)
			}
			m, err := opener.Open("factory/a/temp", ct)
			if err != nil || string(m.Plaintext) != "21.5" {
				t.Fatalf("Open: %v, %v", m, err)
			}
		})
	}
	t.Run("raw", func(t *testing.T) {
		rk, err := NewRawKey(testSecret(4))
		if err != nil {
			t.Fatal(err)
		}
		ct, err := rk.Seal("factory/a/temp", []byte("raw"))
		if err != nil {
			t.Fatal(err)
		}
		if m, err := rk.Open("factory/a/temp", ct); err != nil || string(m.Plaintext) != "raw" {
			t.Fatalf("Open: %v, %v", m, err)
		}
	})
}
