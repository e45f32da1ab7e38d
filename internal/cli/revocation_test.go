package cli

// Live revocation through the whole product: the built-in CA issues a
// device certificate, a client connects over mutual TLS, `moat ca revoke`
// runs, and the broker ends the session within seconds and refuses the
// device afterwards.

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func moatCmd(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(moatBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MOAT_CA_PASSPHRASE=test passphrase")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("moat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dialMQTT5 connects over mutual TLS and completes an MQTT 5 CONNECT.
func dialMQTT5(t *testing.T, addr, caFile, prefix, clientID string) (*tls.Conn, error) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(prefix+".pem", prefix+".key")
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: "localhost"})
	if err != nil {
		return nil, err
	}
	if err := connectMQTT5(c, clientID); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// connectMQTT5 sends an MQTT 5 CONNECT for clientID on c and reads a
// successful CONNACK.
func connectMQTT5(c *tls.Conn, clientID string) error {
	id := []byte(clientID)
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, byte(len(id) >> 8), byte(len(id))}, id...)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		return err
	}
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return err
	}
	if hdr[0] != 0x20 || hdr[3] != 0 {
		return fmt.Errorf("CONNACK % x", hdr)
	}
	// Read the rest of the CONNACK (its properties).
	if rest := int(hdr[1]) - 2; rest > 0 {
		if _, err := io.ReadFull(c, make([]byte, rest)); err != nil {
			return err
		}
	}
	c.SetDeadline(time.Time{})
	return nil
}

func TestRevokedClientDisconnectedLive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "moat.yaml"), `listeners:
  - name: mqtts
    address: 127.0.0.1:0
    transport: tls
    tls:
      client_auth: required
      identity:
        username_from: cn
data_dir: data
persistence:
  enabled: false
`)
	p := startMoat(t, dir, "-c", "moat.yaml")
	ca := filepath.Join(dir, "data", "ca")
	moatCmd(t, dir, "ca", "issue", "device", "dev-1", "--dir", ca, "--out", "dev-1")
	moatCmd(t, dir, "ca", "issue", "device", "dev-2", "--dir", ca, "--out", "dev-2")
	addr := p.addr(0)
	caFile := filepath.Join(ca, "ca.pem")

	c1, err := dialMQTT5(t, addr, caFile, filepath.Join(dir, "dev-1"), "dev-1")
	if err != nil {
		t.Fatalf("dev-1 cannot connect: %v\n%s", err, p.logs.String())
	}
	defer c1.Close()
	c2, err := dialMQTT5(t, addr, caFile, filepath.Join(dir, "dev-2"), "dev-2")
	if err != nil {
		t.Fatalf("dev-2 cannot connect: %v", err)
	}
	defer c2.Close()

	revokedAt := time.Now()
	moatCmd(t, dir, "ca", "revoke", "dev-1.pem", "--dir", ca, "--reason", "keyCompromise")

	// dev-1 gets DISCONNECT with reason 0x87 (not authorized) and is cut.
	c1.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c1)
	var sawDisconnect bool
	for {
		b, err := r.ReadByte()
		if err != nil {
			break
		}
		if b == 0xE0 {
			r.ReadByte()
			if rc, _ := r.ReadByte(); rc == 0x87 {
				sawDisconnect = true
			}
		}
	}
	took := time.Since(revokedAt)
	if !sawDisconnect {
		t.Fatalf("no DISCONNECT 0x87 for the revoked client\n%s", p.logs.String())
	}
	if took > 5*time.Second {
		t.Errorf("revoked client disconnected after %v, want within 5s", took)
	}
	t.Logf("revoked client disconnected %v after revocation", took.Round(time.Millisecond))
	p.waitLine(t, "broker: client disconnected", "client=dev-1", "0x87")

	// It cannot come back; the other device is unaffected.
	if c, err := dialMQTT5(t, addr, caFile, filepath.Join(dir, "dev-1"), "dev-1"); err == nil {
		c.Close()
		t.Fatal("revoked client reconnected")
	}
	c2.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	c2.Write([]byte{0xC0, 0}) // PINGREQ
	resp := make([]byte, 2)
	if _, err := c2.Read(resp); err != nil || resp[0] != 0xD0 {
		t.Fatalf("dev-2 lost its session: %v % x", err, resp)
	}
	if !p.waitLog(t, "client certificate no longer valid") {
		t.Error("the disconnection is not logged")
	}

	// A reload is recorded too. After a clean stop the audit log holds the
	// cut-off and the reload and verifies; the issuance and revocation are
	// in the CA's chain beside it.
	p.cmd.Process.Signal(syscall.SIGHUP)
	if !p.waitLog(t, "SIGHUP received") {
		t.Error("no reload")
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.done
	data := filepath.Join(dir, "data")
	if n := auditTypes(t, filepath.Join(data, "audit.log")); n["revoke.cutoff"] != 1 || n["auth.success"] < 2 || n["config.reload"] != 1 {
		t.Errorf("audit.log entries: %v", n)
	}
	if n := auditTypes(t, filepath.Join(data, caAuditFile)); n["ca.issue"] != 2 || n["ca.revoke"] != 1 {
		t.Errorf("ca-audit.log entries: %v", n)
	}
	for _, f := range []string{"audit.log", caAuditFile} {
		if code, out, errOut := runAudit(t, filepath.Join(data, f)); code != 0 {
			t.Errorf("moat audit verify %s: exit %d\n%s%s", f, code, out, errOut)
		}
	}
}
