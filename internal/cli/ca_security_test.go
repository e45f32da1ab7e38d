package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/moatmq/moat/internal/pki"
)

// TestSecurityCASignRefusesUnlistedNames: the operator signs a device's
// CSR with "moat ca sign dev.csr --id sensor-3", having checked the CN.
// The CSR also asks for URI:spiffe://factory.example/admin, which the
// CA used to copy silently, giving the device the admin identity on
// listeners that map the SPIFFE ID. Now every SAN must be listed with
// --san/--uri (and a server CSR's CN too), else the CSR is refused.
func TestSecurityCASignRefusesUnlistedNames(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	work := t.TempDir()
	mustMoat(t, "ca", "init", "--dir", dir)
	mkCSR := func(name, cn, san string) string {
		csr := filepath.Join(work, name+".csr")
		args := []string{"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(work, name+".key"), "-subj", "/CN=" + cn, "-out", csr}
		if san != "" {
			args = append(args, "-addext", "subjectAltName="+san)
		}
		if o, err := exec.Command(openssl, args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl req: %v %s", err, o)
		}
		return csr
	}

	dev := mkCSR("dev", "sensor-3", "URI:spiffe://factory.example/admin")
	_, errs, code := moat(t, "ca", "sign", dev, "--dir", dir, "--profile", "device", "--id", "sensor-3", "--out", filepath.Join(work, "dev"))
	if code == 0 || !strings.Contains(errs, "URI:spiffe://factory.example/admin") || !strings.Contains(errs, "--uri") {
		t.Fatalf("device CSR with an unlisted URI: exit %d: %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(work, "dev.pem")); err == nil {
		t.Fatal("a certificate was written")
	}
	// Listing it is the operator's explicit decision.
	out := mustMoat(t, "ca", "sign", dev, "--dir", dir, "--profile", "device", "--id", "sensor-3", "--uri", "spiffe://factory.example/admin", "--out", filepath.Join(work, "dev"))
	if !strings.Contains(out, "names: URI:spiffe://factory.example/admin") {
		t.Errorf("sign output: %s", out)
	}

	srv := mkCSR("srv", "broker.example.com", "DNS:broker.example.com,DNS:admin.example.com,IP:10.0.0.5")
	_, errs, code = moat(t, "ca", "sign", srv, "--dir", dir, "--profile", "server", "--san", "DNS:broker.example.com,IP:10.0.0.5")
	if code == 0 || !strings.Contains(errs, "DNS:admin.example.com") {
		t.Fatalf("server CSR with an unlisted DNS name: exit %d: %s", code, errs)
	}
	_, errs, code = moat(t, "ca", "sign", srv, "--dir", dir, "--profile", "server")
	if code == 0 || !strings.Contains(errs, "authorized: none") {
		t.Fatalf("server CSR without --san: exit %d: %s", code, errs)
	}
	mustMoat(t, "ca", "sign", srv, "--dir", dir, "--profile", "server", "--san", "DNS:broker.example.com,DNS:admin.example.com,IP:10.0.0.5", "--out", filepath.Join(work, "srv"))
}

// TestSecurityCARevokeReachesSuccessors: a certificate is renewed over
// EST twice (A → B → C), as a thief holding A could do. Revoking A with
// "moat ca revoke" used to leave C valid; now it revokes the successors
// and lists them. --no-descendants revokes only the one given.
func TestSecurityCARevokeReachesSuccessors(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	t.Setenv("MOAT_ENROLL_TOKEN", "")
	dir := filepath.Join(t.TempDir(), "ca")
	work := t.TempDir()
	mustMoat(t, "ca", "init", "--dir", dir)
	_, httpsAddr := startCAServe(t, dir)
	server := "https://" + httpsAddr
	caPEM := filepath.Join(dir, "ca.pem")
	tokFile := filepath.Join(work, "token")
	prefix := filepath.Join(work, "dev")

	tok := strings.TrimSpace(mustMoat(t, "ca", "token", "create", "dev-r", "--dir", dir))
	os.WriteFile(tokFile, []byte(tok), 0o600)
	var serials []string
	save := func() {
		c, err := pki.LoadCertificatesFile(prefix + ".pem")
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, pki.SerialString(c[0].SerialNumber))
		os.WriteFile(filepath.Join(work, "cert"+string(rune('a'+len(serials)-1))+".pem"), pki.EncodeCertificatesPEM(c...), 0o644)
	}
	mustMoat(t, "enroll", "--server", server, "--ca", caPEM, "--id", "dev-r", "--token-file", tokFile, "--out", prefix)
	save()
	mustMoat(t, "enroll", "--server", server, "--ca", caPEM, "--out", prefix)
	save()
	mustMoat(t, "enroll", "--server", server, "--ca", caPEM, "--out", prefix)
	save()

	// A and B were superseded by their successors.
	show := mustMoat(t, "ca", "show", "--dir", dir, serials[1])
	if !strings.Contains(show, "superseded") || !strings.Contains(show, "successor of:  "+serials[0]) {
		t.Errorf("show B:\n%s", show)
	}
	// Revoking B alone changes nothing.
	if _, errs, code := moat(t, "ca", "revoke", "--dir", dir, serials[1], "--no-descendants"); code == 0 || !strings.Contains(errs, "already revoked") {
		t.Fatalf("revoke B --no-descendants: %d %s", code, errs)
	}
	if out, _, code := moat(t, "ca", "verify", "--dir", dir, filepath.Join(work, "certc.pem")); code != 0 {
		t.Fatalf("C after revoking B alone: %s", out)
	}
	// Revoking A (by file) reaches C.
	out := mustMoat(t, "ca", "revoke", "--dir", dir, filepath.Join(work, "certa.pem"), "--reason", "keyCompromise")
	if !regexp.MustCompile(`Revoked successor of `+serials[1]+`: `+serials[2]+` \(dev-r\), reason keyCompromise`).MatchString(out) || !strings.Contains(out, "already revoked") {
		t.Errorf("revoke A:\n%s", out)
	}
	if out, _, code := moat(t, "ca", "verify", "--dir", dir, filepath.Join(work, "certc.pem")); code != 1 || !strings.Contains(out, "keyCompromise") {
		t.Fatalf("C after revoking A: %d %s", code, out)
	}
	// C can no longer renew.
	if _, errs, code := moat(t, "enroll", "--server", server, "--ca", caPEM, "--out", prefix); code == 0 || !strings.Contains(errs, "403") {
		t.Fatalf("renewal with revoked C: %d %s", code, errs)
	}
}

// TestCAIssueOverwriteAndExisting: --out refuses to replace files without
// --force, and issuing for an identity with a valid certificate warns
// with its serial.
func TestCAIssueOverwriteAndExisting(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	prefix := filepath.Join(t.TempDir(), "s1")
	mustMoat(t, "ca", "init", "--dir", dir)
	out := mustMoat(t, "ca", "issue", "device", "s1", "--dir", dir, "--out", prefix)
	serial := regexp.MustCompile(`serial ([0-9a-f]+)`).FindStringSubmatch(out)
	if serial == nil {
		t.Fatalf("issue output: %s", out)
	}
	before, _ := os.ReadFile(prefix + ".key")
	_, errs, code := moat(t, "ca", "issue", "device", "s1", "--dir", dir, "--out", prefix)
	if code == 0 || !strings.Contains(errs, "exists") || !strings.Contains(errs, "--force") {
		t.Fatalf("overwrite without --force: %d %s", code, errs)
	}
	if after, _ := os.ReadFile(prefix + ".key"); string(after) != string(before) {
		t.Fatal("key replaced without --force")
	}
	if recs := mustMoat(t, "ca", "list", "--dir", dir); strings.Count(recs, " s1 ") != 1 {
		t.Fatalf("refused issue recorded a certificate:\n%s", recs)
	}
	_, errs, code = moat(t, "ca", "issue", "device", "s1", "--dir", dir, "--out", prefix, "--force")
	if code != 0 || !strings.Contains(errs, "warning") || !strings.Contains(errs, serial[1]) {
		t.Fatalf("--force: %d %s", code, errs)
	}
}
