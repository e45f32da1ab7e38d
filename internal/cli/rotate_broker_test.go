package cli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatmq/moat/internal/testutil"
)

// TestBrokerAcceptsBothIntermediatesAfterRotation: after rotate-intermediate
// the broker's built-in setup (trust anchor ca.pem, CRLs from crl.pem)
// admits devices of the old and of the new intermediate, and a revocation
// of an old device still takes effect, checked with mosquitto_pub.
func TestBrokerAcceptsBothIntermediatesAfterRotation(t *testing.T) {
	needTool(t, "mosquitto_pub")
	t.Setenv("MOAT_CA_PASSPHRASE", "a long test passphrase")
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	caDir := filepath.Join(data, "ca")
	mustMoat(t, "ca", "init", "--dir", caDir)
	mustMoat(t, "ca", "issue", "device", "d-old", "--dir", caDir, "--out", filepath.Join(dir, "d-old"))
	mustMoat(t, "ca", "rotate-intermediate", "--dir", caDir)
	mustMoat(t, "ca", "issue", "device", "d-new", "--dir", caDir, "--out", filepath.Join(dir, "d-new"))

	conf := filepath.Join(dir, "moat.yaml")
	if err := os.WriteFile(conf, []byte("listeners:\n  - address: \"127.0.0.1:0\"\n    tls:\n      identity: {username_from: cn}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := startMoat(t, dir, "-c", conf, "--data", data).port(0)
	publish := func(dev string) error {
		out, err := exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", fmt.Sprint(port), "--cafile", filepath.Join(caDir, "ca.pem"),
			"--cert", filepath.Join(dir, dev+".pem"), "--key", filepath.Join(dir, dev+".key"), "-t", "devices/"+dev+"/hello", "-m", "hi", "-q", "1").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v %s", dev, err, out)
		}
		return nil
	}
	for _, dev := range []string{"d-old", "d-new"} {
		if err := publish(dev); err != nil {
			t.Fatal(err)
		}
	}
	mustMoat(t, "ca", "revoke", "--dir", caDir, filepath.Join(dir, "d-old.pem"))
	testutil.CheckFor(t, 10*time.Second, func() error {
		if publish("d-old") == nil {
			return fmt.Errorf("the revoked old device still connects")
		}
		return nil
	})
	if err := publish("d-new"); err != nil {
		t.Fatal(err)
	}
}
