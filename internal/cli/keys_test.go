package cli

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/moatmq/moat/e2e"
	"github.com/moatmq/moat/internal/testutil"
	"github.com/moatmq/moat/internal/testutil/testpki"
)

// keysWriteTestPKI writes a CA, a server certificate for 127.0.0.1 and client
// certificates for the given common names into dir.
func keysWriteTestPKI(t *testing.T, dir string, clients ...string) {
	t.Helper()
	ca := testpki.NewRoot(t, "keys test CA", testpki.P256)
	ca.WritePEM(t, filepath.Join(dir, "ca.pem"))
	testpki.WriteFile(t, filepath.Join(dir, "ca.key"), ca.KeyPEM(t))
	ca.Issue(t, testpki.Options{CN: "keys.test", IPs: []net.IP{net.ParseIP("127.0.0.1")}, EKU: testpki.ServerAuth,
		KeyIndex: nextKeyIndex()}).WriteFiles(t, dir, "server")
	for _, c := range clients {
		ca.Issue(t, testpki.Options{CN: c, EKU: testpki.ClientAuth, KeyIndex: nextKeyIndex()}).WriteFiles(t, dir, c)
	}
}

// keyIndex numbers the keys of the certificates the tests issue, so that
// no two certificates share a key (testpki caches keys by index).
var keyIndex atomic.Int32

func nextKeyIndex() int { return 1000 + int(keyIndex.Add(1)) }

// loadTestCert reads dir/NAME.pem and dir/NAME.key, as written by
// testpki's WriteFiles or moat ca, for issuing or revoking with testpki.
func loadTestCert(t *testing.T, dir, name string) *testpki.Cert {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return &testpki.Cert{Cert: leaf, Key: pair.PrivateKey.(crypto.Signer)}
}

func TestKeysCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keysWriteTestPKI(t, dir, "sensor-1", "platform")
	kek := filepath.Join(dir, "kek")
	data := filepath.Join(dir, "keys")
	store := []string{"--data", data, "--kek-file", kek}
	keys := func(args ...string) (string, string, int) {
		return moat(t, append(append([]string{"keys"}, args...), store...)...)
	}
	mustOK := func(out, errs string, code int) string {
		t.Helper()
		if code != 0 {
			t.Fatalf("exit %d: %s%s", code, out, errs)
		}
		return out
	}
	mustOK(moat(t, "keys", "genkek", kek))
	if fi, _ := os.Stat(kek); fi.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file mode %v", fi.Mode().Perm())
	}
	mustOK(keys("group", "create", "temps", "--filter", "factory/+/temp", "--rotate-every", "24h"))
	mustOK(keys("group", "create", "office/+/co2"))
	mustOK(keys("member", "add", "temps", "sensor-1", "--role", "writer"))
	mustOK(keys("member", "add", "temps", "platform", "--role", "reader"))
	if out := mustOK(keys("group", "list")); !strings.Contains(out, "factory/+/temp") || !strings.Contains(out, "office/+/co2") {
		t.Fatalf("list: %s", out)
	}
	if _, errs, code := moat(t, "keys", "status", "--data", data); code == 0 || !strings.Contains(errs, "--kek-file") {
		t.Fatalf("missing KEK not explained: %s", errs)
	}

	// Serve on a free port and fetch bundles for two members.
	ctx, cancel := context.WithCancel(context.Background())
	serveErr := &testutil.Buffer{}
	done := make(chan int)
	go func() {
		args := append([]string{"keys", "serve", "--listen", "127.0.0.1:0", "--cert", filepath.Join(dir, "server.pem"),
			"--key", filepath.Join(dir, "server.key"), "--client-ca", filepath.Join(dir, "ca.pem")}, store...)
		done <- Main(ctx, args, Stdio{In: strings.NewReader(""), Out: &bytes.Buffer{}, Err: serveErr})
	}()
	addrRE := regexp.MustCompile(`serving on (https://127\.0\.0\.1:\d+)`)
	var url string
	for deadline := time.Now().Add(10 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if m := addrRE.FindStringSubmatch(serveErr.String()); m != nil {
			url = m[1]
		}
	}
	if url == "" {
		cancel()
		t.Fatalf("server did not start: %s", serveErr.String())
	}
	// The store is locked while the server runs; admin commands say so.
	if _, errs, code := keys("rotate", "temps"); code == 0 || !strings.Contains(errs, "locked") {
		t.Fatalf("rotate while serving: %d %s", code, errs)
	}
	fetch := func(id, kem string) (*e2e.MemberKey, []byte) {
		t.Helper()
		mk := filepath.Join(dir, id+".member")
		out := filepath.Join(dir, id+".bundle")
		mustOK(moat(t, "keys", "fetch", "--server", url, "--cert", filepath.Join(dir, id+".pem"), "--key", filepath.Join(dir, id+".key"),
			"--ca", filepath.Join(dir, "ca.pem"), "--member-key", mk, "--kem", kem, "--out", out))
		kb, _ := os.ReadFile(mk)
		k, err := e2e.ParseMemberKeyPEM(kb)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(out)
		return k, b
	}
	sk, sb := fetch("sensor-1", "mlkem768x25519")
	pk, pb := fetch("platform", "x25519")
	fetch("platform", "x25519") // a second fetch checks the pinned service key
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exit %d: %s", code, serveErr.String())
	}

	pinned, _ := os.ReadFile(filepath.Join(dir, "platform.bundle.service-key"))
	blk, _ := pem.Decode(pinned)
	svc := blk.Bytes
	open := func(k *e2e.MemberKey, id string, raw []byte) *e2e.Keyring {
		b, err := e2e.OpenBundle(raw, k, id, svc)
		if err != nil {
			t.Fatal(err)
		}
		r := &e2e.Keyring{}
		r.ApplyBundle(b)
		return r
	}
	sring, pring := open(sk, "sensor-1", sb), open(pk, "platform", pb)
	if r, err := keysLoadKeyring(filepath.Join(dir, "platform.member"), filepath.Join(dir, "platform.bundle"), "", "platform"); err != nil || len(r.EpochKeys()) != 1 {
		t.Fatalf("keysLoadKeyring: %v", err)
	}
	if _, err := keysLoadKeyring(filepath.Join(dir, "platform.member"), filepath.Join(dir, "platform.bundle"), "", "sensor-1"); err == nil {
		t.Fatal("bundle accepted for another member")
	}
	sealer, _ := e2e.NewGroupSealer(e2e.SealerConfig{Sender: "sensor-1", Keys: sring, Sequence: &e2e.MemorySequenceStore{}})
	opener, _ := e2e.NewGroupOpener(e2e.OpenerConfig{Keys: pring})
	msg, err := sealer.Seal("factory/l1/temp", []byte("21.5"))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := opener.Open("factory/l1/temp", msg); err != nil || string(m.Plaintext) != "21.5" {
		t.Fatalf("open: %v", err)
	}

	if out := mustOK(keys("rotate", "temps")); !strings.Contains(out, "epoch 2") {
		t.Fatalf("rotate: %s", out)
	}
	if out := mustOK(keys("remove", "temps", "platform")); !strings.Contains(out, "new epoch 3") {
		t.Fatalf("remove: %s", out)
	}
	kek2 := filepath.Join(dir, "kek2")
	mustOK(moat(t, "keys", "genkek", kek2))
	mustOK(keys("rekek", "--new-kek-file", kek2))
	store = []string{"--data", data, "--kek-file", kek2}
	out := mustOK(keys("status", "temps"))
	for _, want := range []string{"current epoch 3", "epoch 1", "readable until", "sensor-1", "registered mlkem768x25519"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

// TestKeysServePortBesideCAServe: moat keys serve and moat ca serve --https
// run side by side on one host, so the key service's default port differs
// from the EST port docs/pki.md uses, and docs/e2e.md shows the default.
func TestKeysServePortBesideCAServe(t *testing.T) {
	cmd, _, err := newRoot(Stdio{In: strings.NewReader(""), Out: &bytes.Buffer{}, Err: &bytes.Buffer{}}).Find([]string{"keys", "serve"})
	if err != nil {
		t.Fatal(err)
	}
	def := cmd.Flags().Lookup("listen").DefValue
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", "docs", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	est := regexp.MustCompile(`moat ca serve [^\n]*--https (:\d+)`).FindStringSubmatch(read("pki.md"))
	if est == nil {
		t.Fatal("docs/pki.md shows no ca serve --https port")
	}
	if def == est[1] {
		t.Errorf("keys serve listens on %s by default, the port docs/pki.md gives ca serve --https", def)
	}
	for _, m := range regexp.MustCompile(`moat keys serve --listen (:\d+)`).FindAllStringSubmatch(read("e2e.md"), -1) {
		if m[1] != def {
			t.Errorf("docs/e2e.md: keys serve --listen %s, the default is %s", m[1], def)
		}
	}
	for _, m := range regexp.MustCompile(`https://keys\.example(:\d+)`).FindAllStringSubmatch(read("e2e.md"), -1) {
		if m[1] != def {
			t.Errorf("docs/e2e.md: keys fetch --server on %s, the default is %s", m[1], def)
		}
	}
}
