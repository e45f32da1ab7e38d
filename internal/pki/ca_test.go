package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"

	bolt "go.etcd.io/bbolt"
)

func TestInitAndIssueOpenSSLVerify(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	for _, alg := range []KeyAlgorithm{ECDSAP256, ECDSAP384, Ed25519, RSA2048} {
		t.Run(string(alg), func(t *testing.T) {
			ca := newCA(t, InitOptions{Settings: Settings{Algorithm: alg, OCSPURL: "http://127.0.0.1:1/ocsp", CRLURL: "http://127.0.0.1:1/crl"}})
			for _, name := range []string{FileRootKey, FileIntermediateKey} {
				st, err := os.Stat(filepath.Join(ca.Dir(), name))
				if err != nil || st.Mode().Perm() != 0o600 {
					t.Fatalf("%s: mode %v, err %v; want 0600", name, st.Mode().Perm(), err)
				}
			}
			if _, err := ca.LoadRootKey(testPass); err != nil {
				t.Fatalf("LoadRootKey: %v", err)
			}
			if _, err := ca.LoadRootKey([]byte("wrong passphrase")); !errors.Is(err, ErrWrongPassphrase) {
				t.Fatalf("LoadRootKey(wrong) = %v, want ErrWrongPassphrase", err)
			}
			out := t.TempDir()
			srv, err := ca.IssueServer("broker", []string{"DNS:localhost", "IP:127.0.0.1"}, 0)
			if err != nil {
				t.Fatal(err)
			}
			dev, err := ca.Issue(IssueRequest{Profile: ProfileDevice, CommonName: "sensor-1", KeyAlgorithm: alg, URIs: []*url.URL{{Scheme: "spiffe", Host: "factory.example", Path: "/sensor-1"}}})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				iss     *Issued
				name    string
				purpose string
			}{{srv, "server", "sslserver"}, {dev, "device", "sslclient"}} {
				prefix := filepath.Join(out, c.name)
				if err := c.iss.WriteFiles(prefix); err != nil {
					t.Fatal(err)
				}
				if st, _ := os.Stat(prefix + ".key"); st.Mode().Perm() != 0o600 {
					t.Errorf("%s.key mode %v", prefix, st.Mode().Perm())
				}
				if n := strings.Count(string(c.iss.CertPEM()), "BEGIN CERTIFICATE"); n != 2 {
					t.Errorf("PREFIX.pem holds %d certificates, want leaf + intermediate", n)
				}
				o := run(t, true, openssl, "verify", "-CAfile", filepath.Join(ca.Dir(), FileRoot), "-untrusted", prefix+".pem", "-purpose", c.purpose, prefix+".pem")
				if !strings.Contains(o, ": OK") {
					t.Errorf("openssl verify: %s", o)
				}
				// The key file is PKCS#8 and matches the certificate.
				run(t, true, openssl, "pkey", "-in", prefix+".key", "-noout")
			}
			if dev.Certificate.OCSPServer[0] != "http://127.0.0.1:1/ocsp" || dev.Certificate.CRLDistributionPoints[0] != "http://127.0.0.1:1/crl" {
				t.Errorf("AIA/CDP missing: %v %v", dev.Certificate.OCSPServer, dev.Certificate.CRLDistributionPoints)
			}
			if got := dev.Certificate.NotAfter.Sub(dev.Certificate.NotBefore); got < DefaultDeviceLifetime || got > DefaultDeviceLifetime+2*time.Minute {
				t.Errorf("device lifetime %v", got)
			}
			if got := srv.Certificate.NotAfter.Sub(srv.Certificate.NotBefore); got < DefaultServerLifetime || got > DefaultServerLifetime+2*time.Minute {
				t.Errorf("server lifetime %v", got)
			}
			if dev.Certificate.SerialNumber.BitLen() < 100 || dev.Certificate.SerialNumber.Sign() <= 0 {
				t.Errorf("serial %v is not a large positive random number", dev.Certificate.SerialNumber)
			}
		})
	}
}

func TestInitRefusesExistingAndBadOptions(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	if _, err := Init(ca.Dir(), InitOptions{Passphrase: testPass}); err == nil {
		t.Fatal("Init over an existing CA succeeded")
	}
	_, err := Init(t.TempDir(), InitOptions{Passphrase: []byte("short"), Settings: Settings{Algorithm: "dsa", PermittedIPRanges: []string{"10.0.0.0"}}})
	if err == nil {
		t.Fatal("Init accepted bad options")
	}
	for _, want := range []string{"at least 8", "dsa", "CIDR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q (all problems should be reported at once)", err, want)
		}
	}
}

func TestOpenOrInitGeneratesPassphrase(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	ca, created, err := OpenOrInit(dir, InitOptions{})
	if err != nil || !created {
		t.Fatalf("OpenOrInit = %v, %v", created, err)
	}
	pass, err := os.ReadFile(filepath.Join(dir, FileRootPass))
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, FileRootPass)); st.Mode().Perm() != 0o600 {
		t.Errorf("root.pass mode %v", st.Mode().Perm())
	}
	if _, err := ca.LoadRootKey([]byte(strings.TrimSpace(string(pass)))); err != nil {
		t.Fatalf("generated passphrase does not open the root key: %v", err)
	}
	ca2, created, err := OpenOrInit(dir, InitOptions{})
	if err != nil || created || !ca2.Root().Equal(ca.Root()) {
		t.Fatalf("second OpenOrInit = %v, %v", created, err)
	}
}

func TestOpenRefusesReadableKey(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	os.Chmod(filepath.Join(ca.Dir(), FileIntermediateKey), 0o644)
	if _, err := Open(ca.Dir(), Config{}); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Open = %v, want a mode error with a hint", err)
	}
	if _, err := Open(t.TempDir(), Config{}); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Open(empty) = %v", err)
	}
}

func TestEncryptKeyFormat(t *testing.T) {
	t.Parallel()
	key, _ := GenerateKey(ECDSAP256, nil)
	enc, err := EncryptKey(key, testPass, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecryptKey(enc, testPass)
	if err != nil || !publicKeysEqual(got.Public(), key.Public()) {
		t.Fatalf("round trip: %v", err)
	}
	// Flipping any header byte (parameters, salt, nonce) breaks the tag.
	blkStart := strings.Index(string(enc), "\n") + 1
	_ = blkStart
	for _, off := range []int{9, 12, 30, 45} {
		b := append([]byte(nil), decodePEMBody(t, enc)...)
		b[off] ^= 1
		_, err := DecryptKey(encodePEMBody(b), testPass)
		if err == nil {
			t.Errorf("tampered byte %d accepted", off)
		}
	}
	if _, err := EncryptKey(key, nil, nil); err == nil {
		t.Error("empty passphrase accepted")
	}
}

func TestSignCSRPolicy(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{Settings: Settings{PermittedDNSDomains: []string{"example.com"}, PermittedIPRanges: []string{"10.0.0.0/8", "127.0.0.0/8"}}})
	p256, _ := GenerateKey(ECDSAP256, nil)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	csr := func(key any, tmpl x509.CertificateRequest) *x509.CertificateRequest {
		der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificateRequest(der)
		return c
	}
	tests := []struct {
		name    string
		req     SignRequest
		wantErr string
	}{
		{"device ok", SignRequest{Profile: ProfileDevice, AuthorizedID: "dev-1", CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}})}, ""},
		{"device wrong ID", SignRequest{Profile: ProfileDevice, AuthorizedID: "dev-1", CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-2"}})}, "authorized only for"},
		{"device DNS SAN", SignRequest{Profile: ProfileDevice, AuthorizedNames: []string{"DNS:a.example.com"}, CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}, DNSNames: []string{"a.example.com"}})}, "only URI SANs"},
		{"device bad ID", SignRequest{Profile: ProfileDevice, CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev:1"}})}, "invalid"},
		{"device email", SignRequest{Profile: ProfileDevice, CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}, EmailAddresses: []string{"a@b.c"}})}, "e-mail"},
		{"P-521 refused", SignRequest{Profile: ProfileDevice, CSR: csr(p521, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}})}, "P-521"},
		{"device URI authorized", SignRequest{Profile: ProfileDevice, AuthorizedID: "dev-1", AuthorizedNames: []string{"URI:spiffe://f.example/dev-1"}, CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "f.example", Path: "/dev-1"}}})}, ""},
		{"device URI not authorized", SignRequest{Profile: ProfileDevice, AuthorizedID: "dev-1", AuthorizedNames: []string{"URI:spiffe://f.example/dev-1"}, CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev-1"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "f.example", Path: "/dev-2"}}})}, "not authorized: URI:spiffe://f.example/dev-2"},
		{"server ok", SignRequest{Profile: ProfileServer, AuthorizedNames: []string{"DNS:MQTT.example.com", "IP:10.1.2.3"}, CSR: csr(p256, x509.CertificateRequest{DNSNames: []string{"mqtt.example.com"}, IPAddresses: []net.IP{net.ParseIP("10.1.2.3")}})}, ""},
		{"server SAN not authorized", SignRequest{Profile: ProfileServer, AuthorizedNames: []string{"DNS:mqtt.example.com"}, CSR: csr(p256, x509.CertificateRequest{DNSNames: []string{"mqtt.example.com", "admin.example.com"}})}, "not authorized: DNS:admin.example.com"},
		{"server CN not authorized", SignRequest{Profile: ProfileServer, AuthorizedNames: []string{"DNS:mqtt.example.com"}, CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin.example.com"}, DNSNames: []string{"mqtt.example.com"}})}, "CN=admin.example.com"},
		{"server outside constraints", SignRequest{Profile: ProfileServer, AuthorizedNames: []string{"DNS:evil.org"}, CSR: csr(p256, x509.CertificateRequest{DNSNames: []string{"evil.org"}})}, "outside the CA's permitted domains"},
		{"server IP outside", SignRequest{Profile: ProfileServer, AuthorizedNames: []string{"IP:192.168.1.1"}, CSR: csr(p256, x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("192.168.1.1")}})}, "outside the CA's permitted ranges"},
		{"server no SAN", SignRequest{Profile: ProfileServer, CSR: csr(p256, x509.CertificateRequest{})}, "at least one DNS or IP"},
		{"server URI", SignRequest{Profile: ProfileServer, AuthorizedNames: []string{"DNS:a.example.com", "URI:spiffe://x"}, CSR: csr(p256, x509.CertificateRequest{DNSNames: []string{"a.example.com"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "x"}}})}, "URI"},
		{"unknown profile", SignRequest{Profile: "admin", CSR: csr(p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}})}, "unknown profile"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss, err := ca.SignCSR(tc.req)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if iss.Key != nil {
					t.Error("SignCSR returned a key")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestSignOpenSSLCSRs(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	ca := newCA(t, InitOptions{})
	dir := t.TempDir()
	tests := []struct {
		name, newkey string
		wantOK       bool
	}{
		{"rsa2048", "rsa:2048", true},
		{"rsa1024", "rsa:1024", false},
		{"p256", "ec:" + writeParam(t, openssl, dir, "prime256v1"), true},
		{"p521", "ec:" + writeParam(t, openssl, dir, "secp521r1"), false},
		{"ed25519", "ed25519", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			csrFile := filepath.Join(dir, tc.name+".csr")
			run(t, true, openssl, "req", "-new", "-newkey", tc.newkey, "-nodes", "-keyout", filepath.Join(dir, tc.name+".key"), "-subj", "/CN=dev-"+tc.name, "-out", csrFile)
			csr, err := ReadCSRFile(csrFile)
			if err != nil {
				t.Fatal(err)
			}
			iss, err := ca.SignCSR(SignRequest{CSR: csr, Profile: ProfileDevice})
			if (err == nil) != tc.wantOK {
				t.Fatalf("SignCSR err = %v, want ok %v", err, tc.wantOK)
			}
			if err == nil {
				p := filepath.Join(dir, tc.name)
				iss.WriteFiles(p)
				run(t, true, openssl, "verify", "-CAfile", filepath.Join(ca.Dir(), FileRoot), "-untrusted", p+".pem", p+".pem")
			}
		})
	}
}

func writeParam(t *testing.T, openssl, dir, curve string) string {
	p := filepath.Join(dir, curve+".param")
	run(t, true, openssl, "ecparam", "-name", curve, "-out", p)
	return p
}

func TestNameConstraintsInIntermediate(t *testing.T) {
	t.Parallel()
	openssl := testutil.NeedTool(t, "openssl")
	ca := newCA(t, InitOptions{Settings: Settings{PermittedDNSDomains: []string{"example.com"}, PermittedIPRanges: []string{"127.0.0.0/8"}}})
	if !ca.Intermediate().PermittedDNSDomainsCritical || len(ca.Intermediate().PermittedDNSDomains) != 1 {
		t.Fatal("name constraints missing from the intermediate")
	}
	iss, err := ca.IssueServer("", []string{"mqtt.example.com", "127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "s")
	iss.WriteFiles(p)
	run(t, true, openssl, "verify", "-CAfile", filepath.Join(ca.Dir(), FileRoot), "-untrusted", p+".pem", p+".pem")
	if _, err := ca.IssueServer("", []string{"mqtt.example.org"}, 0); err == nil {
		t.Fatal("issued a name outside the constraints")
	}
}

func TestRevokeAndList(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	ca := newCA(t, InitOptions{Config: Config{Now: clock}})
	a, _ := ca.IssueDevice("dev-a", nil, 10*24*time.Hour)
	b, _ := ca.IssueDevice("dev-b", nil, 0)
	c, _ := ca.IssueServer("s", []string{"localhost"}, 0)
	if _, err := ca.Revoke(b.Record.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Revoke(b.Record.Serial, ReasonKeyCompromise); !errors.Is(err, ErrAlreadyRevoked) {
		t.Fatalf("second revoke = %v", err)
	}
	if _, err := ca.Revoke("abcdef", 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown = %v", err)
	}
	list := func(f ListFilter) []string {
		rs, err := ca.List(f)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, r := range rs {
			s = append(s, r.Subject)
		}
		return s
	}
	if got := list(ListFilter{Revoked: true}); len(got) != 1 || got[0] != "dev-b" {
		t.Errorf("revoked = %v", got)
	}
	if got := list(ListFilter{ExpiringWithin: 30 * 24 * time.Hour}); len(got) != 1 || got[0] != "dev-a" {
		t.Errorf("expiring 30d = %v", got)
	}
	if got := list(ListFilter{}); len(got) != 3 || got[0] != "dev-a" || got[1] != "s" {
		t.Errorf("all (soonest first) = %v", got)
	}
	now = now.Add(11 * 24 * time.Hour)
	r, _ := ca.Get(a.Record.Serial)
	if r.Status(now) != StatusExpired {
		t.Errorf("status after expiry = %s", r.Status(now))
	}
	// Serial formats with colons and upper case are accepted.
	colon := strings.ToUpper(c.Record.Serial[:2] + ":" + c.Record.Serial[2:])
	if r, err := ca.Get(colon); err != nil || r.Subject != "s" {
		t.Errorf("Get(%q) = %v", colon, err)
	}
	crl, err := x509.ParseRevocationList(mustCRL(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(b.Certificate.SerialNumber) != 0 || crl.RevokedCertificateEntries[0].ReasonCode != int(ReasonKeyCompromise) {
		t.Fatalf("CRL entries = %+v", crl.RevokedCertificateEntries)
	}
	if err := crl.CheckSignatureFrom(ca.Intermediate()); err != nil {
		t.Fatal(err)
	}
}

func mustCRL(t testing.TB, ca *CA) []byte {
	t.Helper()
	der, err := ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestCRLRegeneratedBeforeNextUpdate(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := newCA(t, InitOptions{Config: Config{Now: func() time.Time { return now }}, Settings: Settings{CRLValidity: Duration(48 * time.Hour)}})
	first, _ := x509.ParseRevocationList(mustCRL(t, ca))
	now = now.Add(20 * time.Hour)
	same, _ := x509.ParseRevocationList(mustCRL(t, ca))
	if same.Number.Cmp(first.Number) != 0 {
		t.Fatal("CRL regenerated too early")
	}
	now = now.Add(5 * time.Hour) // past half of 48h
	next, _ := x509.ParseRevocationList(mustCRL(t, ca))
	if next.Number.Cmp(first.Number) <= 0 || !next.NextUpdate.After(first.NextUpdate) {
		t.Fatalf("CRL not regenerated: number %v -> %v", first.Number, next.Number)
	}
	if next.NextUpdate.Sub(now) < 24*time.Hour {
		t.Errorf("fresh CRL has only %v left", next.NextUpdate.Sub(now))
	}
}

func TestDatabaseBusy(t *testing.T) {
	t.Parallel()
	ca := newCA(t, InitOptions{})
	iss, _ := ca.IssueDevice("d", nil, 0)
	ca.cfg.LockTimeout = 100 * time.Millisecond
	db, err := bolt.Open(filepath.Join(ca.Dir(), FileDatabase), 0o600, nil) // holds the exclusive lock
	if err != nil {
		t.Fatal(err)
	}
	_, err = ca.Revoke(iss.Record.Serial, 0)
	db.Close()
	if !errors.Is(err, ErrDatabaseBusy) || !strings.Contains(err.Error(), "in use by another moat process") {
		t.Fatalf("Revoke while locked = %v", err)
	}
	if _, err := ca.Revoke(iss.Record.Serial, 0); err != nil {
		t.Fatalf("Revoke after unlock: %v", err)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ca := newCA(t, InitOptions{Config: Config{Now: func() time.Time { return now }}})
	other := newCA(t, InitOptions{})
	good, _ := ca.IssueDevice("good", nil, 24*time.Hour)
	revoked, _ := ca.IssueDevice("revoked", nil, 0)
	ca.Revoke(revoked.Record.Serial, ReasonKeyCompromise)
	foreign, _ := other.IssueDevice("foreign", nil, 0)
	chain := func(i *Issued) []*x509.Certificate { return append([]*x509.Certificate{i.Certificate}, i.Chain...) }
	tests := []struct {
		name    string
		certs   []*x509.Certificate
		advance time.Duration
		valid   bool
		want    string
	}{
		{"good", chain(good), 0, true, "not revoked"},
		{"leaf only", []*x509.Certificate{good.Certificate}, 0, true, "Moat Root CA"},
		{"revoked", chain(revoked), 0, false, "revoked at"},
		{"expired", chain(good), 48 * time.Hour, false, "expired at"},
		{"wrong CA", chain(foreign), 0, false, "does not lead to this CA's root"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			saved := now
			now = now.Add(tc.advance)
			defer func() { now = saved }()
			res := ca.Verify(tc.certs)
			if res.Valid != tc.valid || !strings.Contains(res.String(), tc.want) {
				t.Fatalf("Verify = %v, want valid=%v and %q:\n%s", res.Valid, tc.valid, tc.want, res)
			}
		})
	}
}

func TestDurationParse(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{"90d": 90 * 24 * time.Hour, "1y": 365 * 24 * time.Hour, "36h": 36 * time.Hour, "15m": 15 * time.Minute} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v", in, got, err)
		}
		if Duration(got).String() != in && in != "36h" && in != "15m" {
			t.Errorf("String(%v) = %q", got, Duration(got).String())
		}
	}
	if _, err := ParseDuration("soon"); err == nil {
		t.Error("bad duration accepted")
	}
}

// Two CA handles on one directory behave like two processes (serve and a
// CLI command): their writes interleave under the file lock.
func TestConcurrentHandlesShareDirectory(t *testing.T) {
	t.Parallel()
	a := newCA(t, InitOptions{})
	b, err := Open(a.Dir(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 10 {
		for _, ca := range []*CA{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				iss, err := ca.IssueDevice(fmt.Sprintf("d-%d", i), nil, 0)
				if err == nil {
					_, err = ca.Revoke(iss.Record.Serial, ReasonSuperseded)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	recs, _ := b.List(ListFilter{Revoked: true})
	if len(recs) != 20 {
		t.Fatalf("%d revoked records, want 20", len(recs))
	}
	crl, _ := x509.ParseRevocationList(mustCRL(t, a))
	if len(crl.RevokedCertificateEntries) != 20 {
		t.Fatalf("CRL lists %d", len(crl.RevokedCertificateEntries))
	}
	// crl.pem on disk is the newest CRL, not one overtaken by a
	// concurrent writer.
	b2, err := os.ReadFile(filepath.Join(a.Dir(), FileCRL))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b2)
	fileCRL, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil || len(fileCRL.RevokedCertificateEntries) != 20 {
		t.Fatalf("crl.pem lists %d entries (err %v), want 20", len(fileCRL.RevokedCertificateEntries), err)
	}
}
