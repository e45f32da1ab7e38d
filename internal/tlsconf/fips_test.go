package tlsconf

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil/testpki"
)

// The FIPS tests run when the process is in FIPS 140-3 mode:
// GODEBUG=fips140=on go test ./internal/tlsconf/ (make fips-test).
func requireFIPS(t *testing.T) {
	t.Helper()
	if !fips140.Enabled() {
		t.Skip("not in FIPS 140-3 mode; run with GODEBUG=fips140=on (make fips-test)")
	}
}

// skipInFIPS skips a test of the policy outside FIPS 140-3 mode, which
// that mode narrows (TestFIPSConfigRefused covers it there).
func skipInFIPS(t *testing.T) {
	t.Helper()
	if fips140.Enabled() {
		t.Skip("tests the policy outside FIPS 140-3 mode")
	}
}

// TestFIPSMode checks that FIPS140Mode reports what the process runs in.
func TestFIPSMode(t *testing.T) {
	want := "off"
	if fips140.Enabled() {
		want = "on"
	}
	if fips140.Enforced() {
		want = "only"
	}
	if got := FIPS140Mode(); got != want {
		t.Fatalf("FIPS140Mode() = %q, want %q", got, want)
	}
}

// TestFIPSListsMatchGo checks that Moat's FIPS lists only hold what Go's
// FIPS 140-3 mode negotiates, and that its defaults are the secure
// defaults minus what that mode forbids.
func TestFIPSListsMatchGo(t *testing.T) {
	for _, id := range FIPSCipherSuites {
		if s := suiteByID(id); !s.secure() || !s.fipsApproved() {
			t.Errorf("FIPSCipherSuites holds %s", tls.CipherSuiteName(id))
		}
	}
	for _, id := range DefaultCipherSuites {
		s := suiteByID(id)
		if in := slices.Contains(FIPSCipherSuites, id); in != s.fipsApproved() {
			t.Errorf("%s: in FIPSCipherSuites=%v, approved=%v", tls.CipherSuiteName(id), in, s.fipsApproved())
		}
		if strings.Contains(tls.CipherSuiteName(id), "CHACHA20") && s.fipsApproved() {
			t.Errorf("%s approved in FIPS mode", tls.CipherSuiteName(id))
		}
	}
	for _, g := range FIPSCurvePreferences {
		if !slices.Contains(fipsGroups, g) {
			t.Errorf("FIPSCurvePreferences holds %v", g)
		}
	}
	if slices.Contains(fipsGroups, tls.X25519) {
		t.Error("X25519 approved in FIPS mode")
	}
}

// TestFIPSListsAgreeWithGo checks Moat's FIPS lists against what Go's
// FIPS 140-3 mode really negotiates: a handshake whose both sides offer
// only one suite (or group) succeeds exactly when Moat calls it approved.
func TestFIPSListsAgreeWithGo(t *testing.T) {
	requireFIPS(t)
	ca := testpki.NewRoot(t, "Moat FIPS list CA", testpki.P256)
	certs := map[string]tls.Certificate{}
	for _, kt := range []testpki.KeyType{testpki.P256, testpki.RSA2048} {
		certs[kt.String()] = ca.Issue(t, testpki.Options{CN: "localhost", DNS: []string{"localhost"}, Key: kt, KeyIndex: 1}).TLS()
	}
	for _, s := range suites {
		if s.tls13 {
			continue // Go does not let TLS 1.3 suites be chosen
		}
		kt := "RSA2048"
		if s.au == "ECDSA" {
			kt = "P256"
		}
		srv := &tls.Config{Certificates: []tls.Certificate{certs[kt]}, CipherSuites: []uint16{s.id}, MaxVersion: tls.VersionTLS12}
		cli := &tls.Config{InsecureSkipVerify: true, CipherSuites: []uint16{s.id}, MaxVersion: tls.VersionTLS12}
		if ok := pipeHandshake(t, srv, cli); ok != s.fipsApproved() {
			t.Errorf("%s: Go's FIPS mode negotiates it: %v; Moat approves it: %v", tls.CipherSuiteName(s.id), ok, s.fipsApproved())
		}
	}
	for _, g := range []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521} {
		srv := &tls.Config{Certificates: []tls.Certificate{certs["P256"]}, CurvePreferences: []tls.CurveID{g}}
		cli := &tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{g}}
		if ok, approved := pipeHandshake(t, srv, cli), slices.Contains(fipsGroups, g); ok != approved {
			t.Errorf("%v: Go's FIPS mode negotiates it: %v; Moat approves it: %v", g, ok, approved)
		}
	}
}

// pipeHandshake reports whether a handshake between srv and cli over an
// in-memory connection succeeds.
func pipeHandshake(t *testing.T, srv, cli *tls.Config) bool {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	deadline := time.Now().Add(5 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	var wg sync.WaitGroup
	var serr error
	wg.Go(func() {
		serr = tls.Server(a, srv).Handshake()
		a.Close() // unblock the client when the server gives up
	})
	cerr := tls.Client(b, cli).Handshake()
	b.Close()
	wg.Wait()
	return serr == nil && cerr == nil
}

// TestFIPSConfigRefused checks that, in FIPS 140-3 mode, settings that
// mode forbids are refused when the configuration is loaded, naming the
// setting and the suite or group, instead of failing at handshake time.
func TestFIPSConfigRefused(t *testing.T) {
	requireFIPS(t)
	t.Run("ciphers", func(t *testing.T) {
		_, _, err := ParseOpenSSLCiphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305", false)
		wantFIPSErr(t, err, "cipher ECDHE-RSA-CHACHA20-POLY1305")
		// An alias leaves ChaCha20 out silently, as it does insecure suites.
		ids, _, err := ParseOpenSSLCiphers("HIGH:!aNULL", false)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, FIPSCipherSuites) {
			t.Errorf("HIGH selects %v, want the FIPS suites", names(ids))
		}
		if _, _, err := ParseOpenSSLCiphers("CHACHA20", false); err == nil {
			t.Error("a cipher string selecting only ChaCha20 was accepted")
		}
	})
	t.Run("cipher_suites", func(t *testing.T) {
		_, err := ParseCipherSuiteNames([]string{"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"}, true)
		wantFIPSErr(t, err, "cipher suite TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256")
	})
	t.Run("ciphers_tls1.3", func(t *testing.T) {
		_, err := ParseTLS13Ciphers("TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256")
		wantFIPSErr(t, err, "TLS 1.3 cipher suite TLS_CHACHA20_POLY1305_SHA256")
	})
	e := newEnv(t, testpki.P256)
	tests := []struct {
		name string
		mod  func(*ListenerConfig)
		want string
	}{
		{"TLS 1.2 suite", func(c *ListenerConfig) {
			c.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}
		}, "cipher suites: TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"},
		{"TLS 1.2 suite with the insecure override", func(c *ListenerConfig) {
			c.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}
			c.AllowInsecureCipherSuites = true
		}, "cipher suites: TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"},
		{"TLS 1.3 suite", func(c *ListenerConfig) {
			c.TLS13CipherSuites = []uint16{tls.TLS_CHACHA20_POLY1305_SHA256}
		}, "ciphers_tls1.3"},
		{"X25519 only", func(c *ListenerConfig) {
			c.CurvePreferences = []tls.CurveID{tls.X25519}
		}, "key exchange groups: X25519"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := e.cfg
			tt.mod(&cfg)
			m, err := New(cfg)
			if err == nil {
				m.Close()
			}
			wantFIPSErr(t, err, tt.want)
		})
	}
}

func wantFIPSErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted in FIPS mode; want an error naming %q", want)
	}
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "not approved in FIPS 140-3 mode") {
		t.Fatalf("error %q does not name %q and FIPS 140-3 mode", err, want)
	}
}

func names(ids []uint16) []string {
	var out []string
	for _, id := range ids {
		out = append(out, tls.CipherSuiteName(id))
	}
	return out
}

// TestFIPSHandshake checks that a FIPS-mode listener with the default
// policy completes handshakes on TLS 1.2 and 1.3, and that what it
// negotiates is approved: an AES-GCM suite and an approved group.
func TestFIPSHandshake(t *testing.T) {
	requireFIPS(t)
	for _, kt := range []testpki.KeyType{testpki.P256, testpki.RSA2048} {
		e := newEnv(t, kt)
		client := e.ca.Issue(t, testpki.Options{CN: "fips-device", Key: kt, KeyIndex: 2})
		srv := serve(t, e.manager(t))
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(kt.String()+"/"+tls.VersionName(v), func(t *testing.T) {
				cfg := clientConfig(e.ca, client)
				cfg.MinVersion, cfg.MaxVersion = v, v
				if _, err := roundTrip(t, srv.addr, cfg); err != nil {
					t.Fatalf("handshake: %v", err)
				}
				r := srv.nextResult(t)
				if r.err != nil {
					t.Fatalf("server: %v", r.err)
				}
				checkApproved(t, r.conn.ConnectionState())
			})
		}
	}
}

func checkApproved(t *testing.T, cs tls.ConnectionState) {
	t.Helper()
	if !suiteByID(cs.CipherSuite).fipsApproved() || strings.Contains(tls.CipherSuiteName(cs.CipherSuite), "CBC") {
		t.Errorf("negotiated suite %s is not an approved AEAD suite", tls.CipherSuiteName(cs.CipherSuite))
	}
	if !slices.Contains(FIPSCurvePreferences, cs.CurveID) {
		t.Errorf("negotiated group %v is not one of %v", cs.CurveID, FIPSCurvePreferences)
	}
}

// TestFIPSOpenSSLClient drives a FIPS-mode listener with openssl
// s_client: its default offer settles on an approved suite and group,
// and a client that offers only ChaCha20 or only X25519 is refused.
func TestFIPSOpenSSLClient(t *testing.T) {
	requireFIPS(t)
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	e := newEnv(t, testpki.RSA2048)
	client := e.ca.Issue(t, testpki.Options{CN: "openssl-fips", Key: testpki.RSA2048, KeyIndex: 2})
	cf, kf := client.WriteFiles(t, t.TempDir(), "client")
	srv := serve(t, e.manager(t))
	tests := []struct {
		name   string
		args   []string
		wantOK bool
	}{
		{"default TLS 1.3", nil, true},
		{"default TLS 1.2", []string{"-tls1_2"}, true},
		{"P-384 only", []string{"-groups", "P-384"}, true},
		{"TLS 1.2 ChaCha20 only", []string{"-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"}, false},
		{"TLS 1.3 ChaCha20 only", []string{"-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"}, false},
		{"X25519 only", []string{"-groups", "X25519"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"s_client", "-connect", srv.addr, "-CAfile", e.cfg.CAFile, "-verify_return_error",
				"-servername", "localhost", "-cert", cf, "-key", kf}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, openssl, append(args, tt.args...)...)
			cmd.Stdin = strings.NewReader("ping\n")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			cmd.Run()
			res := srv.nextResultOrNone(2 * time.Second)
			ok := res != nil && res.err == nil
			if ok != tt.wantOK {
				t.Fatalf("server accepted=%v, want %v; openssl output:\n%s", ok, tt.wantOK, out.String())
			}
			if ok {
				checkApproved(t, res.conn.ConnectionState())
			}
		})
	}
}

// TestFIPSServerKeyRefused checks that in FIPS 140-3 mode a server
// certificate whose key that mode does not allow (ECDSA P-224) is refused
// when it is loaded, rather than failing every handshake.
func TestFIPSServerKeyRefused(t *testing.T) {
	requireFIPS(t)
	key, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "p224.pem"), filepath.Join(dir, "p224.key")
	if err := os.WriteFile(cf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, testpki.P256)
	e.cfg.Certificates = []KeyPair{{CertFile: cf, KeyFile: kf}}
	m, err := New(e.cfg)
	if err == nil {
		m.Close()
		t.Fatal("a P-224 server certificate was accepted in FIPS mode")
	}
	if !strings.Contains(err.Error(), "ECDSA P-224 key, which is not approved in FIPS 140-3 mode") {
		t.Fatalf("error %q does not name the key and FIPS mode", err)
	}
}
