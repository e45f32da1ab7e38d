package cli

// The seeds' own setups, run unchanged: certificates made by hand with
// openssl exactly as seeds 000 and 001 do, the seed's mosquitto.conf, and
// the seed's clients (mosquitto_pub/sub with --cafile/--cert/--key, Python
// paho with tls_set).

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// opensslSeedPKI makes, in dir, the files of seed 000 §3.1 (RSA 2048 CA,
// broker and client certificates) with the server certificate's SANs made
// as seed 001 does (an openssl.cnf with alt_names).
func opensslSeedPKI(t *testing.T, dir string) {
	t.Helper()
	needTool(t, "openssl")
	writeFile(t, filepath.Join(dir, "openssl.cnf"), `[req]
default_bits  = 2048
distinguished_name = req_distinguished_name
req_extensions = req_ext
x509_extensions = v3_req
prompt = no
[req_distinguished_name]
countryName = CN
stateOrProvinceName = GuangDong
localityName = ZhuHai
organizationName = EMQX
commonName = Server certificate
[req_ext]
subjectAltName = @alt_names
[v3_req]
subjectAltName = @alt_names
[alt_names]
IP.1 = 127.0.0.1
DNS.1 = localhost
`)
	steps := [][]string{
		// Seed 000: CA key and root certificate.
		{"req", "-x509", "-newkey", "rsa:2048", "-days", "365", "-nodes", "-subj", "/CN=Factory CA", "-keyout", "ca-key.pem", "-out", "ca-cert.pem"},
		// Seed 001: broker key, CSR with the openssl.cnf, signed with SANs.
		{"genrsa", "-out", "broker-key.pem", "2048"},
		{"req", "-new", "-key", "broker-key.pem", "-config", "openssl.cnf", "-out", "broker.csr"},
		{"x509", "-req", "-in", "broker.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-out", "broker-cert.pem", "-days", "365", "-sha256", "-extensions", "v3_req", "-extfile", "openssl.cnf"},
		// Seed 000: a device certificate, signed without extensions.
		{"req", "-out", "client.csr", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=sensor-001", "-keyout", "client-key.pem"},
		{"x509", "-req", "-in", "client.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-out", "client-cert.pem", "-days", "180"},
		// A certificate from another CA, which must be refused.
		{"req", "-x509", "-newkey", "rsa:2048", "-days", "365", "-nodes", "-subj", "/CN=Rogue CA", "-keyout", "rogue-key.pem", "-out", "rogue-cert.pem"},
		{"req", "-out", "rogue.csr", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=sensor-001", "-keyout", "rogue-client-key.pem"},
		{"x509", "-req", "-in", "rogue.csr", "-CA", "rogue-cert.pem", "-CAkey", "rogue-key.pem", "-CAcreateserial", "-out", "rogue-client-cert.pem", "-days", "180"},
	}
	for _, s := range steps {
		cmd := exec.Command("openssl", s...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	// The seed's troubleshooting step.
	cmd := exec.Command("openssl", "verify", "-CAfile", "ca-cert.pem", "client-cert.pem")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}

func TestSeedMutualTLSConfig(t *testing.T) {
	t.Parallel()
	needTool(t, "mosquitto_pub", "mosquitto_sub", "/usr/bin/python3")
	dir := t.TempDir()
	opensslSeedPKI(t, dir)
	// Seed 000 §3.2, with the files in the test directory and a free port
	// instead of 8883.
	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf(`# 启用TLS监听端口
listener %d
# 服务端证书链
cafile %s
certfile %s
keyfile %s
# 强制客户端证书验证
require_certificate true
use_identity_as_username true
`, ports[0], filepath.Join(dir, "ca-cert.pem"), filepath.Join(dir, "broker-cert.pem"), filepath.Join(dir, "broker-key.pem")))
		return []string{"-c", "mosquitto.conf"}
	})
	port := p.port(0)

	tlsArgs := func(cert, key string) []string {
		return []string{"--cafile", filepath.Join(dir, "ca-cert.pem"), "--cert", filepath.Join(dir, cert), "--key", filepath.Join(dir, key)}
	}
	t.Run("mosquitto clients with the device certificate", func(t *testing.T) {
		mosquittoRoundTrip(t, port, tlsArgs("client-cert.pem", "client-key.pem"), "factory/sensor-001/temp", "21.5", 1)
		if !p.waitLog(t, "username=sensor-001") {
			t.Error("use_identity_as_username: the CN is not the username")
		}
	})
	t.Run("python paho tls_set as in the seed", func(t *testing.T) {
		out, err := run(t, 20*time.Second, "/usr/bin/python3", "testdata/paho_roundtrip.py",
			"--host", "localhost", "--port", strconv.Itoa(port), "--client-id", "sensor-001",
			"--cafile", filepath.Join(dir, "ca-cert.pem"), "--cert", filepath.Join(dir, "client-cert.pem"), "--key", filepath.Join(dir, "client-key.pem"),
			"--topic", "factory/sensor-001/py", "--message", "py over mtls")
		if err != nil || strings.TrimSpace(out) != "py over mtls" {
			t.Fatalf("paho: %v\n%s", err, out)
		}
	})
	t.Run("no client certificate is refused in the handshake", func(t *testing.T) {
		out, err := run(t, 10*time.Second, "mosquitto_pub", "-h", "127.0.0.1", "-p", strconv.Itoa(port),
			"--cafile", filepath.Join(dir, "ca-cert.pem"), "-t", "x", "-m", "y")
		if err == nil {
			t.Fatalf("connected without a certificate: %s", out)
		}
	})
	t.Run("certificate from another CA is refused", func(t *testing.T) {
		out, err := run(t, 10*time.Second, "mosquitto_pub", append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-t", "x", "-m", "y"},
			tlsArgs("rogue-client-cert.pem", "rogue-client-key.pem")...)...)
		if err == nil {
			t.Fatalf("connected with a rogue certificate: %s", out)
		}
	})
	t.Run("openssl s_client sees TLS 1.2+ and no client cert means no session", func(t *testing.T) {
		out, _ := run(t, 10*time.Second, "openssl", "s_client", "-connect", "127.0.0.1:"+strconv.Itoa(port), "-tls1_1")
		if strings.Contains(out, "Cipher is") && !strings.Contains(out, "Cipher is (NONE)") {
			t.Fatalf("TLS 1.1 accepted:\n%s", out)
		}
	})
}

// TestSeedConfigRevocationWhileConnected adds Mosquitto's crlfile to the
// seed's configuration, keeps the CRL with `openssl ca` as an operator
// following the seeds would, and revokes a device while it is connected.
func TestSeedConfigRevocationWhileConnected(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opensslSeedPKI(t, dir)
	writeFile(t, filepath.Join(dir, "ca.cnf"), `[ca]
default_ca = CA_default
[CA_default]
dir = .
database = index.txt
new_certs_dir = .
certificate = ca-cert.pem
private_key = ca-key.pem
default_md = sha256
default_crl_days = 30
crlnumber = crlnumber
policy = policy_any
[policy_any]
commonName = supplied
`)
	writeFile(t, filepath.Join(dir, "index.txt"), "")
	writeFile(t, filepath.Join(dir, "crlnumber"), "01\n")
	openssl := func(args ...string) {
		t.Helper()
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	openssl("ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem")

	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf(`listener %d
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
crlfile %s
`, ports[0], filepath.Join(dir, "ca-cert.pem"), filepath.Join(dir, "broker-cert.pem"), filepath.Join(dir, "broker-key.pem"), filepath.Join(dir, "crl.pem")))
		return []string{"-c", "mosquitto.conf"}
	})

	addr := p.addr(0)
	prefix := filepath.Join(dir, "client")
	// dialMQTT5 wants PREFIX.pem and PREFIX.key.
	for _, f := range [][2]string{{"client-cert.pem", "client.pem"}, {"client-key.pem", "client.key"}} {
		cmd := exec.Command("cp", f[0], f[1])
		cmd.Dir = dir
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
	}
	c, err := dialMQTT5(t, addr, filepath.Join(dir, "ca-cert.pem"), prefix, "sensor-001")
	if err != nil {
		t.Fatalf("device cannot connect: %v\n%s", err, p.logs.String())
	}
	defer c.Close()

	start := time.Now()
	openssl("ca", "-config", "ca.cnf", "-revoke", "client-cert.pem", "-crl_reason", "keyCompromise")
	openssl("ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem")

	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	var got []byte
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if len(got) < 3 || got[0] != 0xE0 || got[2] != 0x87 {
		t.Fatalf("revoked device got % x, want DISCONNECT 0x87\n%s", got, p.logs.String())
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("disconnected %v after the CRL changed", el)
	}
	if c2, err := dialMQTT5(t, addr, filepath.Join(dir, "ca-cert.pem"), prefix, "sensor-001"); err == nil {
		c2.Close()
		t.Fatal("revoked device reconnected")
	}
}

// TestSecureWebSocketIdentity checks that certificate identity works the
// same over secure WebSocket as over TLS: the seed's TLS keys on a
// `protocol websockets` listener, with Python paho connecting over wss.
func TestSecureWebSocketIdentity(t *testing.T) {
	t.Parallel()
	needTool(t, "/usr/bin/python3")
	dir := t.TempDir()
	opensslSeedPKI(t, dir)
	p := startMoatOn(t, dir, 1, func(ports []int) []string {
		writeFile(t, filepath.Join(dir, "mosquitto.conf"), fmt.Sprintf(`listener %d 127.0.0.1
protocol websockets
cafile %s
certfile %s
keyfile %s
require_certificate true
use_identity_as_username true
`, ports[0], filepath.Join(dir, "ca-cert.pem"), filepath.Join(dir, "broker-cert.pem"), filepath.Join(dir, "broker-key.pem")))
		return []string{"-c", "mosquitto.conf"}
	})
	port := p.port(0)
	out, err := run(t, 20*time.Second, "/usr/bin/python3", "testdata/paho_roundtrip.py",
		"--host", "localhost", "--port", strconv.Itoa(port), "--transport", "websockets", "--version", "5",
		"--client-id", "wss-device",
		"--cafile", filepath.Join(dir, "ca-cert.pem"), "--cert", filepath.Join(dir, "client-cert.pem"), "--key", filepath.Join(dir, "client-key.pem"),
		"--topic", "factory/wss", "--message", "over wss")
	if err != nil || strings.TrimSpace(out) != "over wss" {
		t.Fatalf("paho over wss: %v\n%s", err, out)
	}
	if !p.waitLog(t, "username=sensor-001") {
		t.Error("the certificate CN is not the username on the secure WebSocket listener")
	}
	// Without a client certificate the TLS handshake fails.
	out, err = run(t, 20*time.Second, "/usr/bin/python3", "testdata/paho_roundtrip.py",
		"--host", "localhost", "--port", strconv.Itoa(port), "--transport", "websockets",
		"--cafile", filepath.Join(dir, "ca-cert.pem"))
	if err == nil {
		t.Fatalf("connected over wss without a certificate: %s", out)
	}
}
