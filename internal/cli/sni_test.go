package cli

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSNICertificates serves two server certificates on one port and
// checks with openssl s_client that each server name gets its own.
func TestSNICertificates(t *testing.T) {
	t.Parallel()
	needTool(t, "openssl")
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	moatCmd(t, dir, "ca", "init", "--dir", ca)
	moatCmd(t, dir, "ca", "issue", "server", "mqtt.plant-a.example", "--san", "DNS:mqtt.plant-a.example", "--dir", ca, "--out", "a")
	moatCmd(t, dir, "ca", "issue", "server", "mqtt.plant-b.example", "--san", "DNS:mqtt.plant-b.example", "--dir", ca, "--out", "b")
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - name: mqtts
    address: 127.0.0.1:0
    transport: tls
    tls:
      cert: a.pem
      key: a.key
      sni_certificates:
        - {cert: b.pem, key: b.key}
      client_ca: ca/ca.pem
      client_auth: optional
persistence:
  enabled: false
`)
	port := startMoat(t, dir, "-c", "moat.yaml").port(0)
	for _, name := range []string{"mqtt.plant-a.example", "mqtt.plant-b.example"} {
		out, _ := run(t, 10*time.Second, "openssl", "s_client", "-connect", "127.0.0.1:"+strconv.Itoa(port), "-servername", name)
		if !strings.Contains(out, "CN = "+name) && !strings.Contains(out, "CN="+name) {
			t.Errorf("server name %s: certificate not served:\n%s", name, out)
		}
	}
}
