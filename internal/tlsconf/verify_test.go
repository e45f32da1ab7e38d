package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// TestClientCertificateRefusals runs real handshakes with client
// certificates generated for each key type and checks that every bad one
// is refused with a clear log line and the right reason.
func TestClientCertificateRefusals(t *testing.T) {
	for _, kt := range []testpki.KeyType{testpki.RSA2048, testpki.P256, testpki.Ed25519} {
		t.Run(kt.String(), func(t *testing.T) {
			e := newEnv(t, kt)
			now := e.clock.Now()
			good := e.ca.Issue(t, testpki.Options{CN: "good-device", Key: kt, KeyIndex: 2})
			revoked := e.ca.Issue(t, testpki.Options{CN: "revoked-device", Key: kt, KeyIndex: 2})
			e.cfg.CRLFiles = []string{e.writeCRL(t, "ca.crl", 24*time.Hour, revoked)}
			m := e.manager(t)
			srv := serve(t, m)
			otherCA := testpki.NewRoot(t, "Other CA", kt)

			tests := []struct {
				name    string
				cert    *testpki.Cert
				reason  Reason
				logText string
			}{
				{"valid", good, 0, ""},
				{"expired", e.ca.Issue(t, testpki.Options{CN: "expired", Key: kt, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}), ReasonExpired, "expired at"},
				{"not yet valid", e.ca.Issue(t, testpki.Options{CN: "future", Key: kt, NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour)}), ReasonExpired, "not yet valid"},
				{"wrong CA", otherCA.Issue(t, testpki.Options{CN: "stranger", Key: kt}), ReasonUntrusted, "is not a trusted CA"},
				{"no clientAuth usage", e.ca.Issue(t, testpki.Options{CN: "server-only", Key: kt, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), ReasonUsage, "clientAuth missing"},
				{"revoked by CRL", revoked, ReasonRevoked, "listed in CRL"},
				{"self-signed", testpki.SelfSigned(t, testpki.Options{CN: "selfie", Key: kt}), ReasonUntrusted, "self-signed"},
			}
			if kt == testpki.RSA2048 {
				tests = append(tests, struct {
					name    string
					cert    *testpki.Cert
					reason  Reason
					logText string
				}{"SHA-1 signature", e.ca.Issue(t, testpki.Options{CN: "sha1", Key: kt, SigAlg: x509.SHA1WithRSA}), ReasonWeakAlgorithm, "SHA1-RSA"})
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					_, err := roundTrip(t, srv.addr, clientConfig(e.ca, tt.cert))
					res := srv.nextResult(t)
					if tt.reason == 0 {
						if err != nil || res.err != nil {
							t.Fatalf("valid certificate refused: client %v, server %v", err, res.err)
						}
						return
					}
					if err == nil {
						t.Fatal("handshake succeeded, want refusal")
					}
					var ve *VerifyError
					if !errors.As(res.err, &ve) {
						t.Fatalf("server error %v is not a *VerifyError", res.err)
					}
					if ve.Reason != tt.reason {
						t.Errorf("reason %v, want %v (%v)", ve.Reason, tt.reason, ve)
					}
					subj, _ := SubjectDN(tt.cert.Cert)
					logs := e.logs.String()
					if !contains(logs, "TLS handshake refused") || !contains(logs, tt.logText) || !contains(logs, "reason="+tt.reason.String()) || !contains(logs, subj) {
						t.Errorf("log lacks a clear refusal line for %s (want %q); log:\n%s", subj, tt.logText, logs)
					}
				})
			}
			t.Run("no certificate", func(t *testing.T) {
				_, err := roundTrip(t, srv.addr, clientConfig(e.ca, nil))
				res := srv.nextResult(t)
				if err == nil || res.err == nil {
					t.Fatalf("client without certificate accepted: client %v, server %v", err, res.err)
				}
			})
		})
	}
}

func TestClientAuthModes(t *testing.T) {
	e := newEnv(t, testpki.P256)
	client := e.ca.Issue(t, testpki.Options{CN: "dev"})
	stranger := testpki.SelfSigned(t, testpki.Options{CN: "stranger"})
	tests := []struct {
		mode                        ClientAuth
		noCertOK, goodOK, strangeOK bool
	}{
		{ClientAuthRequired, false, true, false},
		{ClientAuthOptional, true, true, false},
		{ClientAuthNone, true, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			e.cfg.ClientAuth = tt.mode
			m := e.manager(t)
			srv := serve(t, m)
			for _, c := range []struct {
				cert *testpki.Cert
				ok   bool
			}{{nil, tt.noCertOK}, {client, tt.goodOK}, {stranger, tt.strangeOK}} {
				_, err := roundTrip(t, srv.addr, clientConfig(e.ca, c.cert))
				if (err == nil) != c.ok {
					t.Errorf("cert %v: err=%v, want ok=%v", c.cert != nil, err, c.ok)
				}
			}
		})
	}
}

func TestIntermediateChainAndTLSVersions(t *testing.T) {
	e := newEnv(t, testpki.P256)
	inter := e.ca.Issue(t, testpki.Options{CN: "Issuing CA", IsCA: true, KeyIndex: 4})
	dev := inter.Issue(t, testpki.Options{CN: "dev-1"})
	e.cfg.MinVersion = tls.VersionTLS13
	srv := serve(t, e.manager(t))
	if _, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev)); err != nil {
		t.Fatalf("certificate from an intermediate refused: %v", err)
	}
	cc := clientConfig(e.ca, dev)
	cc.MaxVersion = tls.VersionTLS12
	if _, err := roundTrip(t, srv.addr, cc); err == nil {
		t.Fatal("TLS 1.2 accepted by a TLS 1.3-only listener")
	}
}

func TestDefaultPolicyNegotiation(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
	srv := serve(t, e.manager(t))
	c, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
	if err != nil {
		t.Fatal(err)
	}
	cs := c.ConnectionState()
	if cs.Version != tls.VersionTLS13 || cs.CurveID != tls.X25519MLKEM768 {
		t.Errorf("negotiated %s with %v, want TLS 1.3 with X25519MLKEM768", tls.VersionName(cs.Version), cs.CurveID)
	}
	// TLS 1.2 clients offering only CBC or RSA key exchange are refused.
	cc := clientConfig(e.ca, dev)
	cc.MaxVersion = tls.VersionTLS12
	cc.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	if _, err := roundTrip(t, srv.addr, cc); err == nil {
		t.Fatal("CBC / RSA key exchange accepted")
	}
	cc.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}
	if _, err := roundTrip(t, srv.addr, cc); err != nil {
		t.Fatalf("TLS 1.2 ECDHE-ECDSA-AES256-GCM refused: %v", err)
	}
}

func TestTLS13CipherRestriction(t *testing.T) {
	e := newEnv(t, testpki.P256)
	dev := e.ca.Issue(t, testpki.Options{CN: "dev"})
	e.cfg.TLS13CipherSuites = []uint16{tls.TLS_AES_256_GCM_SHA384}
	srv := serve(t, e.manager(t))
	c, err := roundTrip(t, srv.addr, clientConfig(e.ca, dev))
	if err == nil && c.ConnectionState().CipherSuite != tls.TLS_AES_256_GCM_SHA384 {
		t.Fatalf("negotiated %s although only TLS_AES_256_GCM_SHA384 is allowed", tls.CipherSuiteName(c.ConnectionState().CipherSuite))
	}
	if err != nil && !contains(e.logs.String(), "cipher-suite") {
		t.Fatalf("refused without a cipher-suite log line: %v", err)
	}
}

func TestNewValidation(t *testing.T) {
	skipInFIPS(t)
	e := newEnv(t, testpki.P256)
	tests := []struct {
		name string
		mut  func(c *ListenerConfig)
		want []string
	}{
		{"no certificates", func(c *ListenerConfig) { c.Certificates = nil }, []string{"no server certificate"}},
		{"required without CA", func(c *ListenerConfig) { c.CAFile = "" }, []string{"no cafile or capath"}},
		{"TLS 1.1", func(c *ListenerConfig) { c.MinVersion = tls.VersionTLS11 }, []string{"TLS 1.1 is not allowed"}},
		{"CBC suite", func(c *ListenerConfig) { c.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA} }, []string{"refused by policy"}},
		{"several at once", func(c *ListenerConfig) {
			c.CAFile = ""
			c.MinVersion = tls.VersionTLS10
			c.PollInterval = time.Minute
		}, []string{"no cafile", "TLS 1.0", "poll interval"}},
		{"missing files", func(c *ListenerConfig) {
			c.CAFile = e.dir + "/nope.pem"
			c.CRLFiles = []string{e.dir + "/nope.crl"}
		}, []string{"read cafile", "read crlfile"}},
		{"bad binding template", func(c *ListenerConfig) { c.Identity.BindClientID = "{bogus}" }, []string{"unknown placeholder"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.cfg
			tt.mut(&cfg)
			m, err := New(cfg)
			if err == nil {
				m.Close()
				t.Fatal("New accepted a bad config")
			}
			for _, w := range tt.want {
				if !contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if !contains(err.Error(), "tlsconf: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
	// Insecure suites only with the explicit override, and loudly.
	cfg := e.cfg
	cfg.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}
	cfg.AllowInsecureCipherSuites = true
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if !contains(e.logs.String(), "INSECURE cipher suite") {
		t.Error("insecure override not logged")
	}
}
