package pki

import (
	"testing"

	"golang.org/x/crypto/ocsp"
)

// BenchmarkOCSPResponse measures a cached OCSP answer: one read-only
// database transaction plus a cache hit.
func BenchmarkOCSPResponse(b *testing.B) {
	ca := newCA(b, InitOptions{})
	iss, _ := ca.IssueDevice("bench", nil, 0)
	req, _ := ocsp.CreateRequest(iss.Certificate, ca.Intermediate(), nil)
	if _, _, err := ca.OCSPResponse(req); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := ca.OCSPResponse(req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignCSR measures issuance from a CSR, including the durable
// inventory write.
func BenchmarkSignCSR(b *testing.B) {
	ca := newCA(b, InitOptions{})
	key, _ := GenerateKey(ECDSAP256, nil)
	der, _ := CreateCSR(nil, key, "bench", nil)
	csr, _ := ParseCSR(der)
	for b.Loop() {
		if _, err := ca.SignCSR(SignRequest{CSR: csr, Profile: ProfileDevice}); err != nil {
			b.Fatal(err)
		}
	}
}
