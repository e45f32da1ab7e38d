package cli

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/moatmq/moat/internal/pki"
)

// zeroConfig is the secure default's key material: the built-in CA in
// DATA/ca and a server certificate for this host in DATA/server.{pem,key}.
type zeroConfig struct {
	caDir      string
	caFile     string
	crlFile    string
	serverCert string
	serverKey  string
	createdCA  bool
}

// serverCertLifetime is the lifetime of the broker's own certificate; it
// is renewed at start-up once less than a third of it is left.
const serverCertLifetime = 90 * 24 * time.Hour

func prepareZeroConfig(dataDir string, log *slog.Logger) (*zeroConfig, error) {
	zc := &zeroConfig{
		caDir:      filepath.Join(dataDir, "ca"),
		serverCert: filepath.Join(dataDir, "server.pem"),
		serverKey:  filepath.Join(dataDir, "server.key"),
	}
	zc.caFile = filepath.Join(zc.caDir, "ca.pem")
	zc.crlFile = filepath.Join(zc.caDir, "crl.pem")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("serve: creating data directory: %w", err)
	}
	ca, created, err := pki.OpenOrInit(zc.caDir, pki.InitOptions{Config: pki.Config{Logger: log}})
	if err != nil {
		return nil, fmt.Errorf("serve: built-in CA in %s: %w", zc.caDir, err)
	}
	zc.createdCA = created
	if created {
		log.Info("serve: created a local certificate authority", "dir", zc.caDir, "trust_anchor", zc.caFile)
	}
	if needsServerCert(zc.serverCert) {
		sans := []string{"DNS:localhost", "IP:127.0.0.1", "IP:::1"}
		host, _ := os.Hostname()
		if host != "" && host != "localhost" {
			sans = append(sans, "DNS:"+host)
		}
		name := "localhost"
		if host != "" {
			name = host
		}
		iss, err := ca.IssueServer(name, sans, serverCertLifetime)
		if err != nil {
			return nil, fmt.Errorf("serve: issuing the broker's server certificate: %w", err)
		}
		if err := iss.WriteFiles(filepath.Join(dataDir, "server")); err != nil {
			return nil, fmt.Errorf("serve: writing the broker's server certificate: %w", err)
		}
		log.Info("serve: issued the broker's server certificate", "file", zc.serverCert, "names", sans)
	}
	if _, err := os.Stat(zc.crlFile); err != nil {
		return nil, fmt.Errorf("serve: the built-in CA has no CRL at %s: %w", zc.crlFile, err)
	}
	return zc, nil
}

// needsServerCert reports whether path is missing, unreadable, or within
// the last third of its lifetime.
func needsServerCert(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return true
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return true
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return true
	}
	life := c.NotAfter.Sub(c.NotBefore)
	return time.Until(c.NotAfter) < life/3
}

// printInstructions tells the operator how to connect a first device.
func (zc *zeroConfig) printInstructions(w io.Writer, addr string) {
	_, port, _ := net.SplitHostPort(addr)
	fmt.Fprintf(w, `
Moat is listening with TLS on port %[1]s; clients need a certificate from the local CA.
To connect a first device:

  %[4]s ca issue device sensor-001 --dir %[2]s --out sensor-001
  mosquitto_sub -h localhost -p %[1]s --cafile %[3]s --cert sensor-001.pem --key sensor-001.key -t 'demo/#' -v
  mosquitto_pub -h localhost -p %[1]s --cafile %[3]s --cert sensor-001.pem --key sensor-001.key -t demo/hello -m hi

The device's certificate CN (sensor-001) is its MQTT username.

`, port, zc.caDir, zc.caFile, moatInvocation(os.Args[0], exec.LookPath))
}
