package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/testutil"
)

// readCRLFile parses the PEM CRL in path.
func readCRLFile(t *testing.T, path string) *x509.RevocationList {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	l, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestSecurityCACRLRenewedByBroker: the attack is on availability. A
// listener reading a Moat CA's crl.pem (the secure default does) depended
// on `moat ca serve` to re-sign it; without it the CRL passed its
// nextUpdate after 7 days and every client was refused. The broker now
// finds such crlfiles, renews them at half their validity under the CA's
// lock, and keeps every revocation in the renewed CRL.
func TestSecurityCACRLRenewedByBroker(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	var logs testutil.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	ca, err := pki.Init(caDir, pki.InitOptions{Config: pki.Config{Now: clock, Logger: log}})
	if err != nil {
		t.Fatal(err)
	}
	caCRL := filepath.Join(caDir, pki.FileCRL)
	other := filepath.Join(dir, "elsewhere", "crl.pem") // not in a CA directory
	if err := os.MkdirAll(filepath.Dir(other), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	keep := newCACRLs(log, clock)
	rs := keep.renewers("a", []string{other, caCRL})
	if len(rs) != 1 || rs[0].File != caCRL {
		t.Fatalf("renewers = %+v, want one for %s", rs, caCRL)
	}
	if again := keep.renewers("b", []string{caCRL}); len(again) != 1 || len(keep.byDir) != 1 {
		t.Fatalf("a second listener of the same CA: %d renewers, %d CAs opened", len(again), len(keep.byDir))
	}

	first := readCRLFile(t, caCRL)
	if err := rs[0].Renew(); err != nil {
		t.Fatal(err)
	}
	if got := readCRLFile(t, caCRL); got.Number.Cmp(first.Number) != 0 {
		t.Fatalf("a fresh CRL was re-signed (number %v → %v)", first.Number, got.Number)
	}

	dev, err := ca.IssueDevice("sensor-1", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.RevokeCertificate(dev.Certificate, pki.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	// Run through three validity periods, renewing whenever asked.
	for range 3 * 2 {
		before := readCRLFile(t, caCRL)
		now = now.Add(pki.DefaultCRLValidity/2 + time.Hour)
		if err := rs[0].Renew(); err != nil {
			t.Fatal(err)
		}
		after := readCRLFile(t, caCRL)
		if !after.NextUpdate.After(before.NextUpdate) || !now.Before(after.NextUpdate) {
			t.Fatalf("CRL not renewed: nextUpdate %v → %v at %v", before.NextUpdate, after.NextUpdate, now)
		}
		listed := false
		for _, e := range after.RevokedCertificateEntries {
			listed = listed || e.SerialNumber.Cmp(dev.Certificate.SerialNumber) == 0
		}
		if !listed {
			t.Fatal("the renewed CRL lost a revocation")
		}
	}
}

// TestZeroConfigCRLRenewed: the secure default's listener reads the
// built-in CA's CRL and gets a renewer for it.
func TestZeroConfigCRLRenewed(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	zc, err := prepareZeroConfig(t.TempDir(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	p := &servePlan{cfg: config.Default(), log: log}
	tlc := p.tlsListenerConfig(0, zc)
	if len(p.errs) > 0 {
		t.Fatal(p.err())
	}
	rs := newCACRLs(log, time.Now).renewers(p.cfg.Listeners[0].Name, tlc.CRLFiles)
	if len(rs) != 1 || rs[0].File != zc.crlFile {
		t.Fatalf("renewers = %+v, want one for %s", rs, zc.crlFile)
	}
}

// TestCACRLUnopenable: a CA directory the broker cannot open gets a
// warning and no renewer, and the listener still starts.
func TestCACRLUnopenable(t *testing.T) {
	t.Parallel()
	var logs testutil.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, err := pki.Init(caDir, pki.InitOptions{Config: pki.Config{Logger: log}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(caDir, pki.FileIntermediateKey), 0o644); err != nil {
		t.Fatal(err)
	}
	if rs := newCACRLs(log, time.Now).renewers("l", []string{filepath.Join(caDir, pki.FileCRL)}); len(rs) != 0 {
		t.Fatalf("renewers = %+v, want none", rs)
	}
	if !strings.Contains(logs.String(), "cannot keep the CRL fresh") {
		t.Errorf("no warning:\n%s", logs.String())
	}
}

// TestSecurityBrokerRenewsAgedCRLAtStart: the attack is on availability.
// The built-in CA's CRL was made 8 days ago (the broker was stopped, or ran
// without `moat ca serve`), so it is past its nextUpdate and the default
// policy refused every device. The real broker renews it before its
// listener loads it: a device connects, and revoking it still cuts it off.
func TestSecurityBrokerRenewsAgedCRLAtStart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "data", "ca")
	past := time.Now().Add(-8 * 24 * time.Hour)
	if _, err := pki.Init(caDir, pki.InitOptions{Config: pki.Config{Now: func() time.Time { return past }, Logger: slog.New(slog.DiscardHandler)}}); err != nil {
		t.Fatal(err)
	}
	if old := readCRLFile(t, filepath.Join(caDir, pki.FileCRL)); !time.Now().After(old.NextUpdate) {
		t.Fatalf("test setup: the CRL is not stale (nextUpdate %v)", old.NextUpdate)
	}
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - name: mqtts
    address: 127.0.0.1:0
    transport: tls
    tls:
      client_auth: required
      identity:
        username_from: cn
data_dir: data
persistence:
  enabled: false
`)
	p := startMoat(t, dir, "-c", "moat.yaml")
	moatCmd(t, dir, "ca", "issue", "device", "dev-1", "--dir", caDir, "--out", "dev-1")
	addr := p.addr(0)
	caFile := filepath.Join(caDir, pki.FileRoot)
	c, err := dialMQTT5(t, addr, caFile, filepath.Join(dir, "dev-1"), "dev-1")
	if err != nil {
		t.Fatalf("device refused with the CA's CRL 8 days old: %v\n%s", err, p.logs.String())
	}
	defer c.Close()
	if crl := readCRLFile(t, filepath.Join(caDir, pki.FileCRL)); time.Until(crl.NextUpdate) < pki.DefaultCRLValidity/2 {
		t.Errorf("CRL not renewed: nextUpdate %v", crl.NextUpdate)
	}
	if !p.waitLog(t, "keeping the CA's CRL fresh") {
		t.Errorf("renewal not announced:\n%s", p.logs.String())
	}
	moatCmd(t, dir, "ca", "revoke", "dev-1.pem", "--dir", caDir, "--reason", "keyCompromise")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, io.EOF) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("revoked device still connected")
		}
	}
	if _, err := dialMQTT5(t, addr, caFile, filepath.Join(dir, "dev-1"), "dev-1"); err == nil {
		t.Fatal("revoked device reconnected")
	}
}

// TestCACRLRenewedAfterRotation: `moat ca rotate-intermediate` in another
// process leaves the broker's open CA stale (it refuses to sign with the
// retired intermediate); the renewal opens the CA again instead of failing
// until the broker is restarted, which would let the CRL go stale.
func TestCACRLRenewedAfterRotation(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	caDir := filepath.Join(t.TempDir(), "ca")
	pass := []byte("rotation test passphrase")
	if _, err := pki.Init(caDir, pki.InitOptions{Passphrase: pass, Config: pki.Config{Logger: log}}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	clock := func() time.Time { return now }
	crlFile := filepath.Join(caDir, pki.FileCRL)
	rs := newCACRLs(log, clock).renewers("l", []string{crlFile})
	if len(rs) != 1 {
		t.Fatalf("renewers = %+v", rs)
	}
	other, err := pki.Open(caDir, pki.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	rk, err := other.LoadRootKey(pass)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.RotateIntermediate(pki.RotateRequest{RootKey: rk}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(pki.DefaultCRLValidity * 3 / 4)
	if err := rs[0].Renew(); err != nil {
		t.Fatalf("renewal after a rotation: %v", err)
	}
	if !crlFileFresh(crlFile, now) {
		t.Fatal("the CRL was not renewed after the rotation")
	}
}
