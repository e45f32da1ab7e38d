package cli

import (
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/config"
	"github.com/moatmq/moat/internal/pki"
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
	now := time.Now()
	clock := func() time.Time { return now }
	var logs syncBuffer
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
	log := slog.New(slog.DiscardHandler)
	zc, err := prepareZeroConfig(t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	l := config.Default().Listeners[0]
	tlc, err := tlsListenerConfig(&l, zc, log)
	if err != nil {
		t.Fatal(err)
	}
	rs := newCACRLs(log, time.Now).renewers(l.Name, tlc.CRLFiles)
	if len(rs) != 1 || rs[0].File != zc.crlFile {
		t.Fatalf("renewers = %+v, want one for %s", rs, zc.crlFile)
	}
}

// TestCACRLUnopenable: a CA directory the broker cannot open gets a
// warning and no renewer, and the listener still starts.
func TestCACRLUnopenable(t *testing.T) {
	var logs syncBuffer
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
