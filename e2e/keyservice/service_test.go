package keyservice

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/internal/tlsconf"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testPKI is a CA of the shared test PKI and its pool.
type testPKI struct {
	ca   *testpki.Cert
	pool *x509.CertPool
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	ca := testpki.NewRoot(t, "test CA", testpki.P256)
	return &testPKI{ca: ca, pool: ca.Pool()}
}

// issue returns a client certificate for cn, or a server certificate for
// 127.0.0.1 with common name cn.
func (p *testPKI) issue(t *testing.T, cn string, server bool) tls.Certificate {
	t.Helper()
	o := testpki.Options{CN: cn, EKU: testpki.ClientAuth}
	if server {
		o = testpki.ServerOptions()
		o.CN = cn
	}
	return p.ca.Issue(t, o).TLS()
}

func (p *testPKI) client(t *testing.T, url, cn string) *Client {
	var certs []tls.Certificate
	if cn != "" {
		certs = []tls.Certificate{p.issue(t, cn, false)}
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool, Certificates: certs, MinVersion: tls.VersionTLS13}}
	t.Cleanup(tr.CloseIdleConnections)
	return &Client{BaseURL: url, HTTPClient: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openTest(t *testing.T, path string, clk *testutil.Clock, kek KEKBackend) *Service {
	t.Helper()
	s, err := Open(Config{Path: path, KEK: kek, Now: clk.Now, Logger: quietLogger(), Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func startServer(t *testing.T, s *Service, p *testPKI) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{p.issue(t, "keys.test", true)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
		MinVersion:   tls.VersionTLS13,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

// member is a device or application using the key service over HTTPS.
type member struct {
	id   string
	key  *e2e.MemberKey
	cl   *Client
	ring *e2e.Keyring
}

func newMember(t *testing.T, p *testPKI, url, id string, kem e2e.KEM) *member {
	t.Helper()
	k, err := e2e.GenerateMemberKey(kem)
	if err != nil {
		t.Fatal(err)
	}
	m := &member{id: id, key: k, cl: p.client(t, url, id), ring: &e2e.Keyring{}}
	if err := m.cl.Register(context.Background(), k.Public()); err != nil {
		t.Fatal(err)
	}
	return m
}

func (m *member) refresh(t *testing.T) error {
	t.Helper()
	ctx := context.Background()
	svc, err := m.cl.ServiceKey(ctx)
	if err != nil {
		return err
	}
	raw, err := m.cl.Bundle(ctx)
	if err != nil {
		return err
	}
	b, err := e2e.OpenBundle(raw, m.key, m.id, svc)
	if err != nil {
		return err
	}
	return m.ring.ApplyBundle(b)
}

func TestKeyServiceEndToEnd(t *testing.T) {
	p := newPKI(t)
	clk := testutil.NewClock(t0)
	kek, _ := NewLocalKEK(make([]byte, 32))
	dir := t.TempDir()
	s := openTest(t, filepath.Join(dir, "keys.db"), clk, kek)
	defer s.Close()
	var changedMu sync.Mutex
	var changed []string
	s.cfg.OnChange = func(m []string) { changedMu.Lock(); changed = append(changed, m...); changedMu.Unlock() }

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateGroup("temps", "factory/+/temp", 24*time.Hour))
	must(s.AddMember("temps", "sensor-1", Writer))
	must(s.AddMember("temps", "platform", Reader))
	must(s.AddMember("temps", "auditor", Reader))
	url := startServer(t, s, p)

	sensor := newMember(t, p, url, "sensor-1", e2e.KEMMLKEM768X25519)
	platform := newMember(t, p, url, "platform", e2e.KEMX25519)
	auditor := newMember(t, p, url, "auditor", e2e.KEMP256)
	for _, m := range []*member{sensor, platform, auditor} {
		must(m.refresh(t))
	}
	if len(sensor.ring.EpochKeys()) != 0 || len(sensor.ring.SenderKeys()) != 1 {
		t.Fatalf("a writer-only member must get only its sender key")
	}

	seal := func(plain string) []byte {
		t.Helper()
		s, err := e2e.NewGroupSealer(e2e.SealerConfig{Sender: "sensor-1", Keys: sensor.ring, Sequence: &e2e.MemorySequenceStore{}, Now: clk.Now})
		must(err)
		msg, err := s.Seal("factory/l1/temp", []byte(plain))
		must(err)
		return msg
	}
	open := func(m *member, msg []byte) (*e2e.Message, error) {
		o, err := e2e.NewGroupOpener(e2e.OpenerConfig{Keys: m.ring, Now: clk.Now})
		must(err)
		return o.Open("factory/l1/temp", msg)
	}
	msg1 := seal("epoch 1")
	for _, m := range []*member{platform, auditor} {
		if got, err := open(m, msg1); err != nil || string(got.Plaintext) != "epoch 1" {
			t.Fatalf("%s: %v", m.id, err)
		}
	}

	// Removing the auditor starts epoch 2, which the auditor never gets.
	must(s.RemoveMember("temps", "auditor"))
	if err := auditor.refresh(t); err == nil {
		t.Fatal("removed member still receives bundles")
	}
	must(sensor.refresh(t))
	must(platform.refresh(t))
	msg2 := seal("epoch 2")
	if got, err := open(platform, msg2); err != nil || got.Epoch != 2 {
		t.Fatalf("platform, epoch 2: %v %v", got, err)
	}
	if _, err := open(auditor, msg2); !errors.Is(err, e2e.ErrUnknownEpoch) {
		t.Fatalf("removed member opened the new epoch: %v", err)
	}
	// Epoch 1 stays readable during the grace period.
	if _, err := open(platform, msg1); err != nil {
		t.Fatalf("grace: %v", err)
	}

	// Scheduled rotation: nothing is due yet; after 24 h it is.
	if r, _ := s.RotateDue(); len(r) != 0 {
		t.Fatalf("premature rotation %v", r)
	}
	clk.Advance(25 * time.Hour)
	if r, err := s.RotateDue(); err != nil || len(r) != 1 {
		t.Fatalf("scheduled rotation: %v %v", r, err)
	}
	gi, _ := s.Group("temps")
	if gi.Current != 3 {
		t.Fatalf("current epoch %d, want 3", gi.Current)
	}
	clk.Advance(2 * time.Hour)
	s.RotateDue() // prunes epoch 2 whose grace ended
	must(platform.refresh(t))
	for _, k := range platform.ring.EpochKeys() {
		if k.Epoch() < 3 {
			t.Fatalf("expired epoch %d still in the bundle", k.Epoch())
		}
	}
	changedMu.Lock()
	if len(changed) == 0 {
		t.Error("OnChange never called")
	}
	changedMu.Unlock()

	// A client certificate of a non-member is refused; so is no certificate.
	if err := p.client(t, url, "stranger").Register(context.Background(), sensor.key.Public()); err == nil {
		t.Fatal("non-member registered")
	}
	if _, err := p.client(t, url, "").Bundle(context.Background()); err == nil {
		t.Fatal("request without a client certificate served")
	}
}

func TestHandlerWithoutTLS(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"), testutil.NewClock(t0), mustKEK(t))
	defer s.Close()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", PathBundle, nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("got %d", rec.Code)
	}
}

func mustKEK(t *testing.T) *LocalKEK {
	k := make([]byte, 32)
	rand.Read(k)
	kek, err := NewLocalKEK(k)
	if err != nil {
		t.Fatal(err)
	}
	return kek
}

func TestKEKChecks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.db")
	fast := Argon2Params{Time: 1, Memory: 1024, Threads: 1}
	s, err := Open(Config{Path: path, Passphrase: []byte("correct horse"), Argon2: fast, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateGroup("g", "a/#", 0); err != nil {
		t.Fatal(err)
	}
	pub := s.PublicKey()
	s.Close()
	if _, err := Open(Config{Path: path, Passphrase: []byte("wrong"), Logger: quietLogger()}); !errors.Is(err, ErrWrongKEK) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := Open(Config{Path: path, KEK: mustKEK(t), Logger: quietLogger()}); err == nil {
		t.Fatal("KEK file accepted for a passphrase store")
	}
	s, err = Open(Config{Path: path, Passphrase: []byte("correct horse"), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !pub.Equal(s.PublicKey()) {
		t.Fatal("service key changed across restarts")
	}
	// The epoch secret is stored wrapped: the database never holds it in clear.
	if _, err := s.Rotate("g"); err != nil {
		t.Fatal(err)
	}

	if _, err := Open(Config{}); err == nil {
		t.Fatal("empty config accepted")
	}
}

func TestKEKFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek")
	if err := GenerateKEKFile(path); err != nil {
		t.Fatal(err)
	}
	if err := GenerateKEKFile(path); err == nil {
		t.Fatal("overwrote a KEK file")
	}
	k, err := LoadKEKFile(path)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := k.Wrap([]byte("dek"), []byte("aad"))
	if _, err := k.Unwrap(w, []byte("other aad")); err == nil {
		t.Fatal("unwrapped with the wrong aad")
	}
	os.Chmod(path, 0o644)
	if _, err := LoadKEKFile(path); err == nil {
		t.Fatal("world-readable KEK file accepted")
	}
}

func TestDatabaseHoldsNoPlainSecrets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	clk := testutil.NewClock(t0)
	s := openTest(t, path, clk, mustKEK(t))
	s.CreateGroup("g", "a/#", 0)
	s.AddMember("g", "r", Reader)
	mk, _ := e2e.GenerateMemberKey(e2e.KEMX25519)
	s.Register("r", mk.Public())
	raw, err := s.Bundle("r")
	if err != nil {
		t.Fatal(err)
	}
	b, err := e2e.OpenBundle(raw, mk, "r", s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	secret := b.EpochKeys[0].Secret()
	s.Close()
	db, _ := os.ReadFile(path)
	if containsBytes(db, secret) {
		t.Fatal("the database holds an epoch secret in clear")
	}
}

func containsBytes(hay, needle []byte) bool {
	for i := 0; i+len(needle) <= len(hay); i++ {
		if string(hay[i:i+len(needle)]) == string(needle) {
			return true
		}
	}
	return false
}

func TestBundleTopic(t *testing.T) {
	for in, want := range map[string]string{
		"sensor-1":             "$moat/keys/sensor-1",
		"spiffe://plant/dev/7": "$moat/keys/spiffe:%2F%2Fplant%2Fdev%2F7",
		"a+b#c%":               "$moat/keys/a%2Bb%23c%25",
	} {
		if got := BundleTopic(in); got != want {
			t.Errorf("BundleTopic(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRewrapKEK(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.db")
	clk := testutil.NewClock(t0)
	oldKEK, newKEK := mustKEK(t), mustKEK(t)
	s := openTest(t, path, clk, oldKEK)
	s.CreateGroup("g", "a/#", 0)
	s.Rotate("g")
	s.AddMember("g", "r", Reader)
	mk, _ := e2e.GenerateMemberKey(e2e.KEMX25519)
	s.Register("r", mk.Public())
	raw, _ := s.Bundle("r")
	before, _ := e2e.OpenBundle(raw, mk, "r", s.PublicKey())
	if err := s.RewrapKEK(newKEK); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(Config{Path: path, KEK: oldKEK, Logger: quietLogger()}); !errors.Is(err, ErrWrongKEK) {
		t.Fatalf("old KEK still opens the store: %v", err)
	}
	s = openTest(t, path, clk, newKEK)
	defer s.Close()
	raw, err := s.Bundle("r")
	if err != nil {
		t.Fatal(err)
	}
	after, err := e2e.OpenBundle(raw, mk, "r", s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(after.EpochKeys) != 2 || string(after.EpochKeys[1].Secret()) != string(before.EpochKeys[1].Secret()) {
		t.Fatal("epoch keys changed across a KEK rotation")
	}
}

type recordingPublisher struct {
	mu   sync.Mutex
	msgs map[string][]byte
}

func (p *recordingPublisher) Publish(ctx context.Context, topic string, payload []byte, retain bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !retain {
		return errors.New("bundles must be retained")
	}
	p.msgs[topic] = payload
	return nil
}

// The bytes published for MQTT delivery are the same signed, sealed
// bundles as over HTTPS: a member opens them with its key.
func TestPublishBundles(t *testing.T) {
	clk := testutil.NewClock(t0)
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"), clk, mustKEK(t))
	defer s.Close()
	pub := &recordingPublisher{msgs: map[string][]byte{}}
	var pending [][]string
	s.cfg.OnChange = func(m []string) { pending = append(pending, m) }
	s.CreateGroup("g", "a/#", 0)
	s.AddMember("g", "r1", Reader)
	s.AddMember("g", "w1", Writer)
	mk, _ := e2e.GenerateMemberKey(e2e.KEMMLKEM768X25519)
	if err := s.Register("r1", mk.Public()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate("g"); err != nil {
		t.Fatal(err)
	}
	for _, m := range pending {
		if err := s.PublishBundles(context.Background(), pub, m); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := pub.msgs[BundleTopic("w1")]; ok {
		t.Fatal("bundle published for a member without a key")
	}
	raw := pub.msgs[BundleTopic("r1")]
	b, err := e2e.OpenBundle(raw, mk, "r1", s.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.EpochKeys) != 2 {
		t.Fatalf("%d epoch keys", len(b.EpochKeys))
	}
}

func TestRegisterRejectsBadBodies(t *testing.T) {
	p := newPKI(t)
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"), testutil.NewClock(t0), mustKEK(t))
	defer s.Close()
	s.CreateGroup("g", "a/#", 0)
	s.AddMember("g", "dev", Reader)
	url := startServer(t, s, p)
	cl := p.client(t, url, "dev")
	for name, body := range map[string]string{
		"unknown field": `{"kem":"x25519","public_key":"AAAA","extra":1}`,
		"bad key":       `{"kem":"x25519","public_key":"AAAA"}`,
		"unknown KEM":   `{"kem":"rsa","public_key":"AAAA"}`,
		"oversized":     `{"kem":"x25519","public_key":"` + strings.Repeat("A", 20000) + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := cl.do(context.Background(), http.MethodPost, PathRegister, []byte(body)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestSecurityIdentityTwoCommonNames performs the attack of a certificate
// whose subject carries two common names, "dev-7" then "platform": the
// broker's identity mapping (internal/tlsconf, source "cn") knows it as
// dev-7, and a key service that took the last CN (Go's
// Subject.CommonName) would register it as member platform, a reader. The
// key service, e2e.CertIdentity and the broker must all name it dev-7.
func TestSecurityIdentityTwoCommonNames(t *testing.T) {
	p := newPKI(t)
	leaf := p.ca.Issue(t, testpki.Options{
		Subject: &pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: []int{2, 5, 4, 3}, Value: "dev-7"}, {Type: []int{2, 5, 4, 3}, Value: "platform"}}},
		EKU: testpki.ClientAuth,
	})
	cert := leaf.Cert
	if cert.Subject.CommonName != "platform" {
		t.Fatalf("test certificate: Go's CommonName is %q, want the last CN", cert.Subject.CommonName)
	}
	broker, err := tlsconf.Identity(cert, tlsconf.IdentityCN)
	if err != nil {
		t.Fatal(err)
	}
	if got := CertIdentity(cert); got != broker || got != "dev-7" {
		t.Fatalf("key service identity %q, broker identity %q; want both dev-7", got, broker)
	}
	if got := e2e.CertIdentity(cert); got != broker {
		t.Fatalf("e2e.CertIdentity %q, broker identity %q", got, broker)
	}

	clk := testutil.NewClock(t0)
	s := openTest(t, filepath.Join(t.TempDir(), "keys.db"), clk, mustKEK(t))
	defer s.Close()
	if err := s.CreateGroup("temps", "factory/+/temp", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.AddMember("temps", "platform", Reader); err != nil {
		t.Fatal(err)
	}
	url := startServer(t, s, p)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{leaf.TLS()}}}
	defer tr.CloseIdleConnections()
	cl := &Client{BaseURL: url, HTTPClient: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	mk, _ := e2e.GenerateMemberKey(e2e.KEMX25519)
	err = cl.Register(context.Background(), mk.Public())
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a certificate named dev-7 by the broker registered as platform: %v", err)
	}
}

// TestSecurityStaleWriterAfterRemoval performs the attack of a removed
// reader on a writer that has not applied its new bundle: the auditor is
// removed, but the sensor keeps sealing with epoch 1, which the auditor
// still holds. Within the writers' grace (1 minute here) such messages
// still open for the remaining readers; after it, the sensor's keyring,
// once it learns of epoch 2, refuses epoch 1, and every reader holding the
// new bundle refuses epoch-1 messages sealed later (ErrSuperseded), so a
// stale writer's messages stop being accepted. What the auditor can still
// read is what a writer seals before it applies its new bundle.
func TestSecurityStaleWriterAfterRemoval(t *testing.T) {
	p := newPKI(t)
	clk := testutil.NewClock(t0)
	s, err := Open(Config{Path: filepath.Join(t.TempDir(), "keys.db"), KEK: mustKEK(t), Now: clk.Now, Logger: quietLogger(),
		Grace: time.Hour, WriterGrace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateGroup("temps", "factory/+/temp", 0))
	must(s.AddMember("temps", "sensor-1", Writer))
	must(s.AddMember("temps", "platform", Reader))
	must(s.AddMember("temps", "auditor", Reader))
	url := startServer(t, s, p)
	sensor := newMember(t, p, url, "sensor-1", e2e.KEMX25519)
	platform := newMember(t, p, url, "platform", e2e.KEMX25519)
	auditor := newMember(t, p, url, "auditor", e2e.KEMX25519)
	for _, m := range []*member{sensor, platform, auditor} {
		must(m.refresh(t))
	}
	sealer, err := e2e.NewGroupSealer(e2e.SealerConfig{Sender: "sensor-1", Keys: sensor.ring, Sequence: &e2e.MemorySequenceStore{}, Now: clk.Now})
	must(err)
	open := func(m *member, msg []byte) (*e2e.Message, error) {
		o, err := e2e.NewGroupOpener(e2e.OpenerConfig{Keys: m.ring, Now: clk.Now})
		must(err)
		return o.Open("factory/l1/temp", msg)
	}

	must(s.RemoveMember("temps", "auditor"))
	must(platform.refresh(t))
	clk.Advance(30 * time.Second)
	late, err := sealer.Seal("factory/l1/temp", []byte("within the writers' grace"))
	must(err)
	if _, err := open(platform, late); err != nil {
		t.Fatalf("a message of the writers' grace is refused: %v", err)
	}
	clk.Advance(time.Minute)
	stale, err := sealer.Seal("factory/l1/temp", []byte("after the writers' grace"))
	must(err)
	if _, err := open(platform, stale); !errors.Is(err, e2e.ErrSuperseded) {
		t.Fatalf("a reader accepted epoch 1 sealed after the writers' grace: %v", err)
	}
	// Once the sensor has its new bundle it seals with epoch 2, which the
	// auditor cannot open.
	must(sensor.refresh(t))
	fresh, err := sealer.Seal("factory/l1/temp", []byte("epoch 2"))
	must(err)
	if m, err := open(platform, fresh); err != nil || m.Epoch != 2 {
		t.Fatalf("platform, epoch 2: %v", err)
	}
	if _, err := open(auditor, fresh); !errors.Is(err, e2e.ErrUnknownEpoch) {
		t.Fatalf("the removed member read the new epoch: %v", err)
	}
	// A keyring that marks epoch 1 superseded refuses to seal with it.
	var ek *e2e.EpochKey
	for _, k := range platform.ring.EpochKeys() {
		if k.Epoch() == 1 {
			ek = k
		}
	}
	if ek == nil || ek.SealUntil().IsZero() {
		t.Fatal("the bundle does not carry the end of the writers' grace of epoch 1")
	}
	sk, err := ek.SenderKey("sensor-1")
	must(err)
	current, err := e2e.NewSenderKey("temps", "factory/+/temp", 1, "sensor-1", sk.Material(), time.Time{})
	must(err)
	old := &e2e.Keyring{}
	old.AddSenderKey(current.WithSealUntil(ek.SealUntil()))
	oldSealer, err := e2e.NewGroupSealer(e2e.SealerConfig{Sender: "sensor-1", Keys: old, Sequence: &e2e.MemorySequenceStore{}, Now: clk.Now})
	must(err)
	if _, err := oldSealer.Seal("factory/l1/temp", []byte("x")); !errors.Is(err, e2e.ErrSuperseded) {
		t.Fatalf("sealed with epoch 1 after its writers' grace: %v", err)
	}
}
