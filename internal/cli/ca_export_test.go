package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/testutil"
)

// asUser runs name args as the system user u (the test must be root).
func asUser(u *user.User, name string, args ...string) ([]byte, error) {
	full := append([]string{"--reuid=" + u.Uid, "--regid=" + u.Gid, "--clear-groups", name}, args...)
	return exec.Command("setpriv", full...).CombinedOutput()
}

// readableTempDir is a temporary directory that other users may traverse.
func readableTempDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// crlSerials returns the serials listed by the PEM CRLs in file.
func crlSerials(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		crl, err := x509.ParseRevocationList(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			out = append(out, pki.SerialString(e.SerialNumber))
		}
	}
}

// TestCAExportReadableByServiceUser: the CA directory is 0700, so a
// broker running as another user (Mosquitto as "mosquitto") cannot read
// ca.pem or crl.pem from it. "moat ca export" writes them world-readable.
func TestCAExportReadableByServiceUser(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	base := readableTempDir(t)
	dir := filepath.Join(base, "ca")
	out := filepath.Join(base, "public", "ca")
	mustMoat(t, "ca", "init", "--dir", dir)
	old := testutil.Umask(0o077) // a strict umask must not narrow the export
	mustMoat(t, "ca", "export", "--dir", dir, "--out", out)
	testutil.Umask(old)
	for _, d := range []string{filepath.Dir(out), out} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o755 {
			t.Fatalf("%s: %v %v, want mode 0755", d, st.Mode(), err)
		}
	}
	for _, f := range []string{"ca.pem", "ca-bundle.pem", "crl.pem", "root-crl.pem"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Mode().Perm() != 0o644 {
			t.Fatalf("%s: %v, want mode 0644", f, err)
		}
	}
	bundle, err := pki.LoadCertificatesFile(filepath.Join(out, "ca-bundle.pem"))
	if err != nil || len(bundle) != 2 || !bundle[1].IsCA {
		t.Fatalf("bundle: %d certificates, %v", len(bundle), err)
	}
	if again := mustMoat(t, "ca", "export", "--dir", dir, "--out", out); again != "" {
		t.Errorf("unchanged export rewrote files: %q", again)
	}

	mq, err := user.Lookup("mosquitto")
	if os.Getuid() != 0 || err != nil {
		t.Skip("needs root and a mosquitto user to check access as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	if o, err := asUser(mq, "cat", filepath.Join(dir, "ca.pem")); err == nil {
		t.Fatalf("the CA directory is readable by mosquitto: %s", o)
	}
	for _, f := range []string{"ca.pem", "crl.pem", "root-crl.pem"} {
		if o, err := asUser(mq, "cat", filepath.Join(out, f)); err != nil {
			t.Fatalf("mosquitto cannot read the exported %s: %v %s", f, err, o)
		}
	}
}

// TestCAExportWatchFollowsRevocation: with --watch, a revocation made by
// another moat command reaches the exported CRL, which Mosquitto (running
// as the user mosquitto when the test runs as root) then enforces.
func TestCAExportWatchFollowsRevocation(t *testing.T) {
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	base := readableTempDir(t)
	dir := filepath.Join(base, "ca")
	out := filepath.Join(base, "export")
	mustMoat(t, "ca", "init", "--dir", dir)
	mustMoat(t, "ca", "issue", "device", "d1", "--dir", dir, "--out", filepath.Join(base, "d1"))
	mustMoat(t, "ca", "issue", "server", "broker", "--dir", dir, "--san", "DNS:localhost,IP:127.0.0.1", "--out", filepath.Join(base, "broker"))
	os.Chmod(filepath.Join(base, "broker.key"), 0o644) // for the mosquitto user in this test only

	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testutil.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"ca", "export", "--dir", dir, "--out", out, "--watch", "--interval", "50ms"}, Stdio{In: strings.NewReader(""), Out: &stdout, Err: &stderr})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("export --watch exited %d: %s", code, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("export --watch did not stop")
		}
	})
	crlFile := filepath.Join(out, "crl.pem")
	testutil.CheckFor(t, 10*time.Second, func() error {
		_, err := os.Stat(crlFile)
		return err
	})

	mqUser := ""
	if u, err := user.Lookup("mosquitto"); err == nil && os.Getuid() == 0 {
		mqUser = "user " + u.Username
	} else if u, err := user.Current(); err == nil {
		mqUser = "user " + u.Username
	}
	mosq, errM := exec.LookPath("mosquitto")
	pub, errP := exec.LookPath("mosquitto_pub")
	var port int
	publish := func() error {
		o, err := exec.Command(pub, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "--cafile", filepath.Join(out, "ca.pem"),
			"--cert", filepath.Join(base, "d1.pem"), "--key", filepath.Join(base, "d1.key"), "-t", "t", "-m", "m").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, o)
		}
		return nil
	}
	if errM == nil && errP == nil {
		// Not testutil.StartMosquitto, which keeps its configuration in a
		// private directory: Mosquitto runs as its own user here (to check
		// what that user can read) and re-reads the file on SIGHUP.
		confFile := filepath.Join(base, "mosquitto.conf")
		mq := testutil.StartPeer(t, testutil.Peer{
			Name:  "mosquitto",
			Ports: 1,
			Command: func(ports []int) *exec.Cmd {
				conf := fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\ncrlfile %s\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous false\npersistence false\n%s\nlog_dest stderr\n",
					ports[0], filepath.Join(out, "ca.pem"), filepath.Join(base, "broker.pem"), filepath.Join(base, "broker.key"), crlFile, mqUser)
				os.WriteFile(confFile, []byte(conf), 0o644)
				return exec.Command(mosq, "-c", confFile)
			},
		})
		port = mq.Ports[0]
		testutil.CheckFor(t, 10*time.Second, publish)
		// Mosquitto reads its crlfile at start and on SIGHUP.
		mustMoat(t, "ca", "revoke", "--dir", dir, filepath.Join(base, "d1.pem"))
		testutil.CheckFor(t, 10*time.Second, func() error {
			if len(crlSerials(t, crlFile)) == 0 {
				return fmt.Errorf("exported CRL lists nothing")
			}
			return nil
		})
		mq.Signal(syscall.SIGHUP)
		testutil.CheckFor(t, 10*time.Second, func() error {
			if publish() == nil {
				return fmt.Errorf("the revoked device still connects")
			}
			return nil
		})
		return
	}
	mustMoat(t, "ca", "revoke", "--dir", dir, filepath.Join(base, "d1.pem"))
	testutil.CheckFor(t, 10*time.Second, func() error {
		if len(crlSerials(t, crlFile)) == 0 {
			return fmt.Errorf("exported CRL lists nothing")
		}
		return nil
	})
}
