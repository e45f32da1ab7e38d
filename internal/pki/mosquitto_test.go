package pki

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestMosquittoAcceptsMoatCertificates starts Debian's mosquitto with
// require_certificate and a CRL, all made by the CA, and publishes with
// mosquitto_pub using device certificates of several key types.
func TestMosquittoAcceptsMoatCertificates(t *testing.T) {
	t.Parallel()
	pub := testutil.NeedTool(t, "mosquitto_pub")
	ca := newCA(t, InitOptions{})
	dir := t.TempDir()
	srv, err := ca.IssueServer("broker", []string{"localhost", "127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.WriteFiles(filepath.Join(dir, "server"))
	devices := map[string]KeyAlgorithm{"dev-ec": ECDSAP256, "dev-rsa": RSA2048, "dev-ed": Ed25519, "dev-revoked": ECDSAP256}
	for id, alg := range devices {
		iss, err := ca.Issue(IssueRequest{Profile: ProfileDevice, CommonName: id, KeyAlgorithm: alg})
		if err != nil {
			t.Fatal(err)
		}
		iss.WriteFiles(filepath.Join(dir, id))
		if id == "dev-revoked" {
			if _, err := ca.Revoke(iss.Record.Serial, ReasonKeyCompromise); err != nil {
				t.Fatal(err)
			}
		}
	}
	peer := testutil.StartMosquitto(t, 1, func(ports []int) string {
		return fmt.Sprintf(`listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
crlfile %s
require_certificate true
use_identity_as_username true
allow_anonymous false
persistence false
log_dest stderr
`, ports[0], filepath.Join(ca.Dir(), FileRoot), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), filepath.Join(ca.Dir(), FileCRL))
	})
	port := peer.Ports[0]
	tests := []struct {
		id     string
		wantOK bool
	}{{"dev-ec", true}, {"dev-rsa", true}, {"dev-ed", true}, {"dev-revoked", false}}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			out := run(t, tc.wantOK, pub, "-h", "127.0.0.1", "-p", fmt.Sprint(port), "--cafile", filepath.Join(ca.Dir(), FileRoot),
				"--cert", filepath.Join(dir, tc.id+".pem"), "--key", filepath.Join(dir, tc.id+".key"), "-t", "moat/test", "-m", "hello", "-q", "1")
			if !tc.wantOK {
				t.Logf("refused as expected: %s", strings.TrimSpace(out))
			}
		})
	}
	testutil.CheckFor(t, 5*time.Second, func() error {
		if !strings.Contains(peer.Log(), "certificate verify failed") {
			return fmt.Errorf("mosquitto did not log the refused revoked certificate")
		}
		return nil
	})
}
