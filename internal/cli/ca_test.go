package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/testutil"
)

// moat runs the command line in-process and returns stdout, stderr and
// the exit status.
func moat(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb testutil.Buffer
	code := Main(context.Background(), args, Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	return out.String(), errb.String(), code
}

func mustMoat(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := moat(t, args...)
	if code != 0 {
		t.Fatalf("moat %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func TestCACommandsWalkthrough(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	work := t.TempDir()
	mustMoat(t, "ca", "init", "--dir", dir, "--algorithm", "ecdsa-p256", "--ocsp-url", "http://127.0.0.1:1/ocsp", "--crl-url", "http://127.0.0.1:1/crl")
	if _, _, code := moat(t, "ca", "init", "--dir", dir); code == 0 {
		t.Fatal("second init succeeded")
	}
	out := mustMoat(t, "ca", "issue", "server", "broker", "--dir", dir, "--san", "DNS:localhost,IP:127.0.0.1", "--out", filepath.Join(work, "broker"))
	if !strings.Contains(out, "broker.key (private key, mode 0600)") {
		t.Errorf("issue output: %s", out)
	}
	mustMoat(t, "ca", "issue", "device", "sensor-1", "--dir", dir, "--uri", "spiffe://factory.example/sensor-1", "--out", filepath.Join(work, "sensor-1"))
	mustMoat(t, "ca", "issue", "device", "sensor-2", "--dir", dir, "--lifetime", "10d", "--algorithm", "ed25519", "--out", filepath.Join(work, "sensor-2"))
	if st, err := os.Stat(filepath.Join(work, "sensor-1.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	if openssl, err := exec.LookPath("openssl"); err == nil {
		for _, f := range []string{"broker", "sensor-1", "sensor-2"} {
			p := filepath.Join(work, f+".pem")
			if o, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(dir, "ca.pem"), "-untrusted", p, p).CombinedOutput(); err != nil {
				t.Errorf("openssl verify %s: %v %s", f, err, o)
			}
		}
		// Sign an openssl CSR with the device profile.
		csr := filepath.Join(work, "r.csr")
		if o, err := exec.Command(openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", filepath.Join(work, "r.key"), "-subj", "/CN=sensor-3", "-out", csr).CombinedOutput(); err != nil {
			t.Fatalf("openssl req: %v %s", err, o)
		}
		mustMoat(t, "ca", "sign", csr, "--dir", dir, "--profile", "device", "--id", "sensor-3", "--out", filepath.Join(work, "r"))
		if _, errs, code := moat(t, "ca", "sign", csr, "--dir", dir, "--profile", "device", "--id", "sensor-4"); code == 0 || !strings.Contains(errs, "authorized only for") {
			t.Errorf("sign with wrong --id: %d %s", code, errs)
		}
	}

	list := mustMoat(t, "ca", "list", "--dir", dir)
	for _, want := range []string{"broker", "sensor-1", "sensor-2", "DNS:localhost,IP:127.0.0.1", "URI:spiffe://factory.example/sensor-1"} {
		if !strings.Contains(list, want) {
			t.Errorf("list lacks %q:\n%s", want, list)
		}
	}
	exp := mustMoat(t, "ca", "list", "--dir", dir, "--expiring", "30d")
	if !strings.Contains(exp, "sensor-2") || strings.Contains(exp, "sensor-1") {
		t.Errorf("list --expiring 30d:\n%s", exp)
	}

	if out, _, code := moat(t, "ca", "verify", "--dir", dir, filepath.Join(work, "sensor-1.pem")); code != 0 || !strings.Contains(out, "VALID") {
		t.Fatalf("verify good: %d %s", code, out)
	}
	out = mustMoat(t, "ca", "revoke", "--dir", dir, filepath.Join(work, "sensor-1.pem"), "--reason", "keyCompromise")
	if !strings.Contains(out, "Revoked") {
		t.Errorf("revoke: %s", out)
	}
	rev := mustMoat(t, "ca", "list", "--dir", dir, "--revoked")
	if !strings.Contains(rev, "sensor-1") || strings.Contains(rev, "sensor-2") {
		t.Errorf("list --revoked:\n%s", rev)
	}
	serial := regexp.MustCompile(`(?m)^([0-9a-f]+)\s+device\s+sensor-1`).FindStringSubmatch(rev)
	if serial == nil {
		t.Fatalf("no serial in %s", rev)
	}
	show := mustMoat(t, "ca", "show", "--dir", dir, serial[1])
	if !strings.Contains(show, "status:        revoked") || !strings.Contains(show, "keyCompromise") {
		t.Errorf("show:\n%s", show)
	}
	out, errs, code := moat(t, "ca", "verify", "--dir", dir, filepath.Join(work, "sensor-1.pem"))
	if code != 1 || !strings.Contains(out, "NOT VALID") || !strings.Contains(errs, "revoked") {
		t.Fatalf("verify revoked: %d\n%s\n%s", code, out, errs)
	}
	crlFile := filepath.Join(work, "crl.pem")
	mustMoat(t, "ca", "crl", "--dir", dir, "--out", crlFile)
	if openssl, err := exec.LookPath("openssl"); err == nil {
		o, err := exec.Command(openssl, "crl", "-in", crlFile, "-noout", "-text").CombinedOutput()
		if err != nil || !strings.Contains(string(o), strings.ToUpper(serial[1])) {
			t.Errorf("openssl crl: %v\n%s", err, o)
		}
	}
	tok := strings.TrimSpace(mustMoat(t, "ca", "token", "create", "sensor-9", "--dir", dir, "--ttl", "1h"))
	if len(tok) < 40 {
		t.Errorf("token %q", tok)
	}
	if l := mustMoat(t, "ca", "token", "list", "--dir", dir); !strings.Contains(l, "sensor-9") || strings.Contains(l, tok) {
		t.Errorf("token list:\n%s", l)
	}
}

func TestCAInitNeedsPassphraseSource(t *testing.T) {
	t.Parallel()
	os.Unsetenv("MOAT_CA_PASSPHRASE")
	dir := filepath.Join(t.TempDir(), "ca")
	_, errs, code := moat(t, "ca", "init", "--dir", dir)
	if code == 0 || !strings.Contains(errs, "MOAT_CA_PASSPHRASE") {
		t.Fatalf("init without passphrase: %d %s", code, errs)
	}
	pf := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pf, []byte("from a file, long enough\n"), 0o600)
	mustMoat(t, "ca", "init", "--dir", dir, "--passphrase-file", pf)
	ca, err := pki.Open(dir, pki.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.LoadRootKey([]byte("from a file, long enough")); err != nil {
		t.Fatalf("root key does not open with the file's passphrase: %v", err)
	}
	dir2 := filepath.Join(t.TempDir(), "ca")
	out := mustMoat(t, "ca", "init", "--dir", dir2, "--generate-passphrase", "--algorithm", "rsa-2048")
	if !strings.Contains(out, "root.pass") {
		t.Errorf("generate-passphrase output: %s", out)
	}
}

var addrRE = regexp.MustCompile(`http=(\S+) https=(\S+)`)

// startCAServe runs "moat ca serve" on 127.0.0.1:0 and returns the bound
// HTTP and HTTPS addresses read from its log line; extra flags follow.
func startCAServe(t *testing.T, dir string, extra ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, append([]string{"ca", "serve", "--dir", dir, "--http", "127.0.0.1:0", "--https", "127.0.0.1:0"}, extra...), Stdio{In: strings.NewReader(""), Out: &out, Err: &errb})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("ca serve exited %d: %s", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("ca serve did not stop on cancel")
		}
	})
	var m []string
	testutil.CheckFor(t, 10*time.Second, func() error {
		if m = addrRE.FindStringSubmatch(errb.String()); m == nil {
			return fmt.Errorf("no listening line from ca serve: %s", errb.String())
		}
		return nil
	})
	return m[1], m[2]
}

// TestCAServeNameConstrainedCA: a CA whose name constraints exclude the
// default HTTPS names (localhost, 127.0.0.1) cannot serve EST without
// --name. ca serve says so and exits before it claims to listen; with a
// permitted --name it serves.
func TestCAServeNameConstrainedCA(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	mustMoat(t, "ca", "init", "--dir", dir, "--permit-dns", "factory.example")
	_, errs, code := moat(t, "ca", "serve", "--dir", dir, "--http", "127.0.0.1:0", "--https", "127.0.0.1:0")
	if code == 0 || strings.Contains(errs, "listening") || !strings.Contains(errs, "outside the CA's permitted domains") || !strings.Contains(errs, "give --name") {
		t.Fatalf("exit %d, stderr:\n%s", code, errs)
	}
	startCAServe(t, dir, "--name", "ca.factory.example")
}

func TestCAServeOCSPAndCRL(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := filepath.Join(t.TempDir(), "ca")
	work := t.TempDir()
	mustMoat(t, "ca", "init", "--dir", dir)
	mustMoat(t, "ca", "issue", "device", "d1", "--dir", dir, "--out", filepath.Join(work, "d1"))
	httpAddr, _ := startCAServe(t, dir)
	certs, _ := pki.LoadCertificatesFile(filepath.Join(work, "d1.pem"))
	req, _ := ocsp.CreateRequest(certs[0], certs[1], nil)
	status := func() int {
		resp, err := http.Post("http://"+httpAddr+"/ocsp", "application/ocsp-request", bytes.NewReader(req))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		r, err := ocsp.ParseResponseForCert(b, certs[0], certs[1])
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	if s := status(); s != ocsp.Good {
		t.Fatalf("status %d", s)
	}
	// A revocation by another "moat ca" invocation while serve runs shows
	// at once.
	start := time.Now()
	mustMoat(t, "ca", "revoke", "--dir", dir, filepath.Join(work, "d1.pem"))
	if s := status(); s != ocsp.Revoked {
		t.Fatalf("status after revoke %d", s)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("revocation visible after %v", d)
	}
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `moat_ca_certificates{profile="device",status="revoked"} 1`) {
		t.Errorf("metrics:\n%s", b)
	}
}
