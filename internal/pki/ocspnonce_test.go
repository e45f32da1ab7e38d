package pki

import (
	"bytes"
	"crypto/x509/pkix"
	"encoding/asn1"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/testutil"

	"golang.org/x/crypto/ocsp"
)

// withNonce returns the OCSP request reqDER with nonce extensions of the
// given values (each DER-encoded as an OCTET STRING).
func withNonce(t *testing.T, reqDER []byte, values ...[]byte) []byte {
	t.Helper()
	var req ocspRequestASN1
	if _, err := asn1.Unmarshal(reqDER, &req); err != nil {
		t.Fatal(err)
	}
	for _, v := range values {
		b, _ := asn1.Marshal(v)
		req.TBS.Extensions = append(req.TBS.Extensions, pkix.Extension{Id: oidOCSPNonce, Value: b})
	}
	out, err := asn1.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// responseNonce returns the nonce in a response's responseExtensions.
func responseNonce(t *testing.T, respDER []byte) []byte {
	t.Helper()
	var resp ocspResponseASN1
	var basic basicOCSPResponseASN1
	if _, err := asn1.Unmarshal(respDER, &resp); err != nil {
		t.Fatal(err)
	}
	if _, err := asn1.Unmarshal(resp.Response.Response, &basic); err != nil {
		t.Fatal(err)
	}
	var tbs struct {
		Raw        asn1.RawContent
		Version    int `asn1:"optional,default:0,explicit,tag:0"`
		Responder  asn1.RawValue
		ProducedAt asn1.RawValue
		Responses  asn1.RawValue
		Extensions []pkix.Extension `asn1:"explicit,tag:1,optional"`
	}
	if _, err := asn1.Unmarshal(basic.TBS.FullBytes, &tbs); err != nil {
		t.Fatal(err)
	}
	for _, e := range tbs.Extensions {
		if e.Id.Equal(oidOCSPNonce) {
			var n []byte
			asn1.Unmarshal(e.Value, &n)
			return n
		}
	}
	return nil
}

// TestOCSPNonceWithOpenSSL: openssl ocsp sends a nonce by default and
// checks that the response echoes it (RFC 8954).
func TestOCSPNonceWithOpenSSL(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	for _, alg := range []KeyAlgorithm{ECDSAP256, ECDSAP384, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			ca := newCA(t, InitOptions{Settings: Settings{Algorithm: alg}})
			httpURL, _, _ := startServer(t, ca, ServerConfig{})
			iss, err := ca.IssueDevice("dev-1", nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			prefix := filepath.Join(t.TempDir(), "dev")
			iss.WriteFiles(prefix)
			for range 2 { // the second answer must not come from the cache
				out := run(t, true, openssl, "ocsp", "-issuer", filepath.Join(ca.Dir(), FileIntermediate),
					"-cert", prefix+".pem", "-url", httpURL+"/ocsp", "-CAfile", filepath.Join(ca.Dir(), FileRoot), "-nonce", "-resp_text")
				if !strings.Contains(out, "Response verify OK") || !strings.Contains(out, ": good") ||
					!strings.Contains(out, "OCSP Nonce") || strings.Contains(out, "WARNING") || strings.Contains(out, "Nonce Verify error") {
					t.Fatalf("openssl ocsp -nonce:\n%s", out)
				}
			}
		})
	}
}

// TestSecurityOCSPNonceLimits: a client sends a nonce longer than RFC
// 8954's 32 bytes (here 1000 bytes of its choosing), hoping the responder
// signs it; or an empty or repeated nonce. Each is refused as malformed.
// Nonces of 1 and 32 bytes are echoed and verify.
func TestSecurityOCSPNonceLimits(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	iss, err := ca.IssueDevice("dev-1", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := ocsp.CreateRequest(iss.Certificate, ca.Intermediate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		values [][]byte
		ok     bool
	}{
		{"1 byte", [][]byte{{7}}, true},
		{"32 bytes", [][]byte{bytes.Repeat([]byte{1}, 32)}, true},
		{"33 bytes", [][]byte{bytes.Repeat([]byte{1}, 33)}, false},
		{"1000 bytes", [][]byte{bytes.Repeat([]byte{'A'}, 1000)}, false},
		{"empty", [][]byte{{}}, false},
		{"twice", [][]byte{{1}, {2}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, st, err := ca.OCSPResponse(withNonce(t, plain, tc.values...))
			if err != nil {
				t.Fatal(err)
			}
			if !tc.ok {
				if !bytes.Equal(der, ocsp.MalformedRequestErrorResponse) {
					t.Fatalf("got a %d-byte response with status %d, want malformedRequest", len(der), st.Status)
				}
				return
			}
			r, err := ocsp.ParseResponseForCert(der, iss.Certificate, ca.Intermediate())
			if err != nil || r.Status != ocsp.Good {
				t.Fatalf("response: %v %+v", err, r)
			}
			if n := responseNonce(t, der); !bytes.Equal(n, tc.values[0]) {
				t.Fatalf("nonce %x, want %x", n, tc.values[0])
			}
		})
	}
	// Without a nonce the response has none and is cached as before.
	der, _, _ := ca.OCSPResponse(plain)
	der2, _, _ := ca.OCSPResponse(plain)
	if responseNonce(t, der) != nil || !bytes.Equal(der, der2) {
		t.Fatal("nonce-less responses changed")
	}
}
