package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/pki"
)

// opensslIn runs openssl in dir and fails the test on error.
func opensslIn(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	cmd := exec.Command(openssl, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCAInitImportOpenSSLRootEncrypted imports the CA of seed 000, made
// with "openssl req -x509 -newkey rsa:2048 -days 365 -keyout ca-key.pem
// -out ca-cert.pem" (the key encrypted with the passphrase typed at the
// prompt; -passout env: and -subj stand in for the prompts here).
func TestCAInitImportOpenSSLRootEncrypted(t *testing.T) {
	work := t.TempDir()
	opensslIn(t, work, []string{"SEED_PASS=seed passphrase 000"}, "req", "-x509", "-newkey", "rsa:2048", "-days", "365",
		"-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-subj", "/C=CN/O=Factory/CN=Factory CA", "-passout", "env:SEED_PASS")
	if b, _ := os.ReadFile(filepath.Join(work, "ca-key.pem")); !bytes.Contains(b, []byte("ENCRYPTED PRIVATE KEY")) {
		t.Fatal("openssl did not encrypt the key")
	}
	dir := filepath.Join(t.TempDir(), "ca")
	t.Setenv("MOAT_CA_PASSPHRASE", "moat root passphrase")
	args := []string{"ca", "init", "--dir", dir, "--import-root", filepath.Join(work, "ca-cert.pem"), "--import-key", filepath.Join(work, "ca-key.pem")}

	// Without the key's passphrase, or with a wrong one, nothing is created.
	if _, errs, code := moat(t, args...); code == 0 || !strings.Contains(errs, "MOAT_IMPORT_KEY_PASSPHRASE") {
		t.Fatalf("no import passphrase: exit %d %s", code, errs)
	}
	t.Setenv("MOAT_IMPORT_KEY_PASSPHRASE", "wrong passphrase")
	if _, errs, code := moat(t, args...); code == 0 || !strings.Contains(errs, "wrong passphrase") || pki.Exists(dir) {
		t.Fatalf("wrong import passphrase: exit %d %s", code, errs)
	}
	t.Setenv("MOAT_IMPORT_KEY_PASSPHRASE", "seed passphrase 000")
	out := mustMoat(t, args...)
	if !strings.Contains(out, "Factory CA") {
		t.Errorf("init output: %s", out)
	}

	// The root key is kept encrypted with Moat's passphrase, not openssl's.
	rk, _ := os.ReadFile(filepath.Join(dir, pki.FileRootKey))
	if !bytes.Contains(rk, []byte("MOAT ENCRYPTED PRIVATE KEY")) {
		t.Fatalf("root.key: %s", rk)
	}
	ca, err := pki.Open(dir, pki.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.LoadRootKey([]byte("moat root passphrase")); err != nil {
		t.Fatalf("root key with Moat's passphrase: %v", err)
	}
	// The imported root issued Moat's intermediate; leaves verify against
	// the operator's original ca-cert.pem with openssl.
	mustMoat(t, "ca", "issue", "device", "sensor-1", "--dir", dir, "--out", filepath.Join(work, "sensor-1"))
	mustMoat(t, "ca", "issue", "server", "broker", "--dir", dir, "--san", "DNS:localhost", "--out", filepath.Join(work, "broker"))
	for _, f := range []string{"sensor-1.pem", "broker.pem"} {
		p := filepath.Join(work, f)
		opensslIn(t, work, nil, "verify", "-CAfile", "ca-cert.pem", "-untrusted", p, p)
	}
	// openssl's default root has no key usage extension, so it cannot
	// sign a root CRL; the command says why.
	if _, errs, code := moat(t, "ca", "crl", "--root", "--sign", "--dir", dir); code == 0 || !strings.Contains(errs, "cRLSign") {
		t.Fatalf("root CRL of an openssl root: exit %d %s", code, errs)
	}
}

// TestCAInitImportOpenSSLRootAndIntermediate: seed 001's CA ("openssl
// genrsa -out ca.key 2048" and "openssl req -x509 -new -nodes -key ca.key
// -sha256 -days 3650 -out ca.pem") imported as a root with its plain key;
// then an openssl-made intermediate under it imported without the root
// key, and certificates of both checked with ca verify --ca.
func TestCAInitImportOpenSSLRootAndIntermediate(t *testing.T) {
	work := t.TempDir()
	opensslIn(t, work, nil, "genrsa", "-out", "ca.key", "2048")
	opensslIn(t, work, nil, "req", "-x509", "-new", "-nodes", "-key", "ca.key", "-sha256", "-days", "3650", "-out", "ca.pem", "-subj", "/O=Plant/CN=Plant Root")
	t.Setenv("MOAT_CA_PASSPHRASE", "moat root passphrase")
	dirA := filepath.Join(t.TempDir(), "ca")
	mustMoat(t, "ca", "init", "--dir", dirA, "--import-root", filepath.Join(work, "ca.pem"), "--import-key", filepath.Join(work, "ca.key"))
	mustMoat(t, "ca", "issue", "device", "dev-a", "--dir", dirA, "--out", filepath.Join(work, "dev-a"))
	opensslIn(t, work, nil, "verify", "-CAfile", "ca.pem", "-untrusted", "dev-a.pem", "dev-a.pem")

	// An intermediate made by the external CA with openssl.
	os.WriteFile(filepath.Join(work, "int.cnf"), []byte("[v3_int]\nbasicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"), 0o600)
	opensslIn(t, work, nil, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "int.key", "-subj", "/O=Plant/CN=Plant Issuing", "-out", "int.csr")
	opensslIn(t, work, nil, "x509", "-req", "-in", "int.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "365", "-extfile", "int.cnf", "-extensions", "v3_int", "-out", "int.pem")
	t.Setenv("MOAT_CA_PASSPHRASE", "") // no root key, so no passphrase is asked for
	dirB := filepath.Join(t.TempDir(), "ca")
	mustMoat(t, "ca", "init", "--dir", dirB, "--import-intermediate", filepath.Join(work, "int.pem"), "--import-key", filepath.Join(work, "int.key"), "--import-root", filepath.Join(work, "ca.pem"))
	if _, err := os.Stat(filepath.Join(dirB, pki.FileRootKey)); err == nil {
		t.Fatal("a root key was stored for an external root")
	}
	mustMoat(t, "ca", "issue", "device", "dev-b", "--dir", dirB, "--out", filepath.Join(work, "dev-b"))
	opensslIn(t, work, nil, "verify", "-CAfile", "ca.pem", "-untrusted", "dev-b.pem", "dev-b.pem")

	// verify --ca checks chains of the external CA, with its CRL.
	out := mustMoat(t, "ca", "verify", "--ca", filepath.Join(work, "ca.pem"), filepath.Join(work, "dev-b.pem"))
	if !strings.Contains(out, "VALID") || !strings.Contains(out, "Plant Issuing") {
		t.Fatalf("verify --ca: %s", out)
	}
	mustMoat(t, "ca", "revoke", "--dir", dirB, filepath.Join(work, "dev-b.pem"))
	opensslIn(t, work, nil, "crl", "-in", filepath.Join(dirB, pki.FileCRL), "-CAfile", "int.pem", "-noout")
	if out, _, code := moat(t, "ca", "verify", "--ca", filepath.Join(work, "ca.pem"), "--crl", filepath.Join(dirB, pki.FileCRL), filepath.Join(work, "dev-b.pem")); code != 1 || !strings.Contains(out, "revoked") {
		t.Fatalf("verify --ca --crl after revocation: exit %d %s", code, out)
	}
	// A certificate of another CA does not verify.
	other := filepath.Join(t.TempDir(), "other")
	t.Setenv("MOAT_CA_PASSPHRASE", "another passphrase")
	mustMoat(t, "ca", "init", "--dir", other)
	if _, _, code := moat(t, "ca", "verify", "--ca", filepath.Join(other, pki.FileRoot), filepath.Join(work, "dev-b.pem")); code != 1 {
		t.Fatalf("verify --ca with a foreign root: exit %d", code)
	}

	// Mismatched material is refused before anything is written.
	dirC := filepath.Join(t.TempDir(), "ca")
	if _, errs, code := moat(t, "ca", "init", "--dir", dirC, "--import-intermediate", filepath.Join(work, "int.pem"), "--import-key", filepath.Join(work, "ca.key"), "--import-root", filepath.Join(work, "ca.pem")); code == 0 || !strings.Contains(errs, "does not belong") || pki.Exists(dirC) {
		t.Fatalf("wrong key: exit %d %s", code, errs)
	}
	if _, errs, code := moat(t, "ca", "init", "--dir", dirC, "--import-root", filepath.Join(work, "int.pem"), "--import-key", filepath.Join(work, "int.key")); code == 0 || !strings.Contains(errs, "not self-signed") {
		t.Fatalf("intermediate as root: exit %d %s", code, errs)
	}
}
