package cli

import (
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/pki"
)

func pemBlocks(t *testing.T, file string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return n
		}
		n++
	}
}

// TestCARotateIntermediateCLI: rotate-intermediate, then the export holds
// both intermediates and both CRLs, certificates of both verify, and the
// old intermediate can be put on the root CRL.
func TestCARotateIntermediateCLI(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	work := t.TempDir()
	out := filepath.Join(work, "export")
	mustMoat(t, "ca", "init", "--dir", dir)
	mustMoat(t, "ca", "issue", "device", "d-old", "--dir", dir, "--out", filepath.Join(work, "d-old"))
	oldInter := filepath.Join(work, "old-intermediate.pem")
	b, _ := os.ReadFile(filepath.Join(dir, pki.FileIntermediate))
	os.WriteFile(oldInter, b, 0o644)

	if o := mustMoat(t, "ca", "rotate-intermediate", "--dir", dir); !strings.Contains(o, "Moat Issuing CA G2") {
		t.Fatalf("rotate output: %s", o)
	}
	mustMoat(t, "ca", "issue", "device", "d-new", "--dir", dir, "--out", filepath.Join(work, "d-new"))
	for _, f := range []string{"d-old.pem", "d-new.pem"} {
		if o := mustMoat(t, "ca", "verify", "--dir", dir, filepath.Join(work, f)); !strings.Contains(o, "VALID") {
			t.Fatalf("verify %s: %s", f, o)
		}
	}
	mustMoat(t, "ca", "export", "--dir", dir, "--out", out)
	if n := pemBlocks(t, filepath.Join(out, "ca-bundle.pem")); n != 3 {
		t.Fatalf("bundle holds %d certificates, want root and two intermediates", n)
	}
	if n := pemBlocks(t, filepath.Join(out, "crl.pem")); n != 2 {
		t.Fatalf("exported crl.pem holds %d CRLs, want 2", n)
	}

	// The issuing intermediate cannot be revoked; the old one can.
	if _, errs, code := moat(t, "ca", "crl", "--root", "--dir", dir, "--revoke", filepath.Join(dir, pki.FileIntermediate)); code == 0 || !strings.Contains(errs, "rotate it first") {
		t.Fatalf("revoking the current intermediate: exit %d %s", code, errs)
	}
	mustMoat(t, "ca", "crl", "--root", "--dir", dir, "--revoke", oldInter, "--reason", "superseded", "--out", filepath.Join(work, "root-crl.pem"))
	crl, err := loadCRLFile(filepath.Join(work, "root-crl.pem"))
	if err != nil || len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("root CRL: %v", err)
	}
	mustMoat(t, "ca", "export", "--dir", dir, "--out", out)
	if c, err := loadCRLFile(filepath.Join(out, "root-crl.pem")); err != nil || len(c.RevokedCertificateEntries) != 1 {
		t.Fatalf("exported root CRL: %v", err)
	}
}
