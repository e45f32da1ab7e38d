package cli

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// keysWriteCRL writes dir/crl.pem, signed by the CA of keysWriteTestPKI,
// revoking the certificates dir/NAME.pem of names. Each CRL written has a
// higher number than the last.
func keysWriteCRL(t *testing.T, dir string, names ...string) {
	t.Helper()
	var revoked []*testpki.Cert
	for _, n := range names {
		revoked = append(revoked, loadTestCert(t, dir, n))
	}
	crl := loadTestCert(t, dir, "ca").CRL(t, time.Now().Add(-time.Minute), time.Now().Add(time.Hour), revoked...)
	testpki.WriteFile(t, filepath.Join(dir, "crl.pem"), crl)
}

// keysIssueClient issues dir/NAME.pem and dir/NAME.key, a client
// certificate for common name cn, from the CA of keysWriteTestPKI.
func keysIssueClient(t *testing.T, dir, name, cn string) {
	t.Helper()
	loadTestCert(t, dir, "ca").Issue(t, testpki.Options{CN: cn, EKU: testpki.ClientAuth, KeyIndex: nextKeyIndex()}).WriteFiles(t, dir, name)
}

// TestSecurityKeyServiceRevokedMember performs the attack of a stolen
// device certificate after it was revoked: the thief, holding the revoked
// certificate of member sensor-1, calls the key service to register its
// own HPKE key (replacing the real member's) and to download the current
// epoch key. The key service checks the same CRL as the broker (through
// tlsconf), so the revoked certificate is refused at the handshake, and a
// member whose certificate is revoked is removed from its groups with a
// new epoch, live (sensor-1) or at the next start when the CRL changed
// while the service was stopped (platform); the removal is logged with its
// reason and persists across restarts. Revoking a certificate a member
// has since replaced (auditor renewed its certificate) removes nothing.
func TestSecurityKeyServiceRevokedMember(t *testing.T) {
	t.Parallel()
	ctx := psTestCtx(t)
	dir := t.TempDir()
	keysWriteTestPKI(t, dir, "sensor-1", "platform", "auditor")
	keysWriteCRL(t, dir)
	pem := func(name string) string { return filepath.Join(dir, name) }
	store := []string{"--data", pem("keys"), "--kek-file", pem("kek")}
	keys := func(args ...string) string {
		t.Helper()
		r := psRun(ctx, "", append(append([]string{"keys"}, args...), store...)...)
		if r.code != 0 {
			t.Fatalf("moat keys %v: exit %d: %s", args, r.code, r.err)
		}
		return r.out
	}
	if r := psRun(ctx, "", "keys", "genkek", pem("kek")); r.code != 0 {
		t.Fatal(r.err)
	}
	keys("group", "create", "temps", "--filter", "factory/+/temp")
	keys("member", "add", "temps", "sensor-1", "--role", "writer")
	keys("member", "add", "temps", "platform", "--role", "reader")
	keys("member", "add", "temps", "auditor", "--role", "reader")

	serve := func() (func(), string, *testutil.Buffer) {
		t.Helper()
		sctx, cancel := context.WithCancel(ctx)
		errb, done := e2eRunAsync(sctx, append([]string{"keys", "serve", "--listen", "127.0.0.1:0", "--cert", pem("server.pem"), "--key", pem("server.key"),
			"--client-ca", pem("ca.pem"), "--crl", pem("crl.pem")}, store...)...)
		m := regexp.MustCompile(`serving on (https://127\.0\.0\.1:\d+)`).FindStringSubmatch(e2eWaitFor(t, errb, "serving on"))
		return func() {
			cancel()
			if r := <-done; r.code != 0 {
				t.Fatalf("keys serve: exit %d: %s", r.code, r.err)
			}
		}, m[1], errb
	}
	fetch := func(url, id string) psResult {
		return psRun(ctx, "", "keys", "fetch", "--server", url, "--dir", pem(id+".d"), "--cert", pem(id+".pem"), "--key", pem(id+".key"), "--ca", pem("ca.pem"))
	}
	stop, url, serveLog := serve()
	for _, id := range []string{"sensor-1", "platform", "auditor"} {
		if r := fetch(url, id); r.code != 0 {
			t.Fatalf("fetch %s: %s", id, r.err)
		}
	}

	// sensor-1's certificate is revoked while the service runs.
	keysWriteCRL(t, dir, "sensor-1")
	e2eWaitFor(t, serveLog, "member certificate revoked")
	if s := serveLog.String(); !regexp.MustCompile(`member=sensor-1 .*reason=.*revoked`).MatchString(s) {
		t.Fatalf("the removal is not logged with its reason:\n%s", s)
	}
	// The thief cannot register a key or fetch a bundle any more.
	if r := fetch(url, "sensor-1"); r.code == 0 {
		t.Fatalf("a revoked certificate registered and fetched a bundle: %s", r.out)
	}
	// auditor renews its certificate and uses the new one.
	keysIssueClient(t, dir, "auditor-new", "auditor")
	if r := psRun(ctx, "", "keys", "fetch", "--server", url, "--dir", pem("auditor.d"), "--cert", pem("auditor-new.pem"), "--key", pem("auditor-new.key"), "--ca", pem("ca.pem")); r.code != 0 {
		t.Fatalf("fetch with the renewed certificate: %s", r.err)
	}
	// platform's certificate, and auditor's old one, are revoked while
	// the service is stopped.
	stop()
	keysWriteCRL(t, dir, "sensor-1", "platform", "auditor")
	stop, url, serveLog = serve()
	e2eWaitFor(t, serveLog, "member=platform")
	if r := psRun(ctx, "", "keys", "fetch", "--server", url, "--dir", pem("auditor.d"), "--cert", pem("auditor-new.pem"), "--key", pem("auditor-new.key"), "--ca", pem("ca.pem")); r.code != 0 {
		t.Fatalf("the member with a renewed certificate lost access: %s", r.err)
	}
	if r := fetch(url, "auditor"); r.code == 0 {
		t.Fatal("auditor's revoked old certificate still works")
	}
	stop()

	status := keys("status", "temps")
	if strings.Contains(status, "  member sensor-1 ") || strings.Contains(status, "  member platform ") {
		t.Fatalf("revoked members are still in the group after a restart:\n%s", status)
	}
	if !strings.Contains(status, "current epoch 3") || !strings.Contains(status, "  member auditor ") {
		t.Fatalf("want a new epoch per removal and auditor kept:\n%s", status)
	}
	if !strings.Contains(status, "member sensor-1 removed from temps") || !strings.Contains(status, "member platform removed from temps") {
		t.Fatalf("status does not show the removals and their reasons:\n%s", status)
	}
}
