package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/testutil"
)

func TestEnrollCommandEndToEnd(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	work := t.TempDir()
	mustMoat(t, "ca", "init", "--dir", dir)
	_, httpsAddr := startCAServe(t, dir)
	server := "https://" + httpsAddr
	caPEM := filepath.Join(dir, "ca.pem")

	tok := strings.TrimSpace(mustMoat(t, "ca", "token", "create", "dev-1", "--dir", dir))
	tokFile := filepath.Join(work, "token")
	os.WriteFile(tokFile, []byte(tok+"\n"), 0o600)
	prefix := filepath.Join(work, "dev-1")
	out := mustMoat(t, "enroll", "--server", server, "--ca", caPEM, "--id", "dev-1", "--token-file", tokFile, "--out", prefix)
	if !strings.Contains(out, "Enrolled dev-1") {
		t.Errorf("enroll: %s", out)
	}
	if st, err := os.Stat(prefix + ".key"); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key: %v %v", st, err)
	}
	if out, _, code := moat(t, "ca", "verify", "--dir", dir, prefix+".pem"); code != 0 {
		t.Fatalf("verify enrolled certificate: %s", out)
	}
	first, _ := pki.LoadCertificatesFile(prefix + ".pem")

	// The token was single-use.
	_, errs, code := moat(t, "enroll", "--server", server, "--ca", caPEM, "--id", "dev-1", "--token-file", tokFile, "--out", filepath.Join(work, "again"))
	if code == 0 || !strings.Contains(errs, "401") {
		t.Fatalf("token reuse: %d %s", code, errs)
	}

	// A token for dev-2 cannot enroll dev-3; --token warns on stderr.
	tok2 := strings.TrimSpace(mustMoat(t, "ca", "token", "create", "dev-2", "--dir", dir))
	_, errs, code = moat(t, "enroll", "--server", server, "--ca", caPEM, "--id", "dev-3", "--token", tok2, "--out", filepath.Join(work, "dev-3"))
	if code == 0 || !strings.Contains(errs, "403") || !strings.Contains(errs, "warning: --token") {
		t.Fatalf("token for another ID: %d %s", code, errs)
	}
	// The environment variable works too.
	t.Setenv("MOAT_ENROLL_TOKEN", tok2)
	mustMoat(t, "enroll", "--server", server, "--ca", caPEM, "--id", "dev-2", "--out", filepath.Join(work, "dev-2"))

	// Without a token, an existing certificate is renewed once.
	t.Setenv("MOAT_ENROLL_TOKEN", "")
	out = mustMoat(t, "enroll", "--server", server, "--ca", caPEM, "--out", prefix)
	if !strings.Contains(out, "Renewed") {
		t.Errorf("renew: %s", out)
	}
	second, _ := pki.LoadCertificatesFile(prefix + ".pem")
	if second[0].SerialNumber.Cmp(first[0].SerialNumber) == 0 || second[0].Subject.CommonName != "dev-1" {
		t.Fatal("renewal did not replace the certificate")
	}
}

func TestEnrollRenewRunsUntilCancelled(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	work := t.TempDir()
	mustMoat(t, "ca", "init", "--dir", dir)
	_, httpsAddr := startCAServe(t, dir)
	tok := strings.TrimSpace(mustMoat(t, "ca", "token", "create", "dev-r", "--dir", dir))
	t.Setenv("MOAT_ENROLL_TOKEN", tok)
	prefix := filepath.Join(work, "dev-r")
	ctx, cancel := context.WithCancel(context.Background())
	var errb testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"enroll", "--server", "https://" + httpsAddr, "--ca", filepath.Join(dir, "ca.pem"), "--id", "dev-r", "--out", prefix, "--renew"}, Stdio{In: strings.NewReader(""), Out: &testutil.Buffer{}, Err: &errb})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(errb.String(), "next renewal") {
		if time.Now().After(deadline) {
			t.Fatalf("no renewal scheduled: %s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(prefix + ".pem"); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("enroll --renew exited %d: %s", code, errb.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("enroll --renew did not stop on cancel")
	}
}
