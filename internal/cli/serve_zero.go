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
	"sync"
	"time"

	"github.com/moatmq/moat/internal/pki"
	"github.com/moatmq/moat/internal/tlsconf"
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

// caCRLs keeps fresh the CRLs of the Moat CA directories the broker's
// listeners read their CRL from: the built-in CA of the secure default, and
// any crlfile that is the crl.pem of a directory holding a Moat CA (as
// `moat ca init` makes it). Nothing else re-signs such a CRL unless `moat
// ca serve` runs, and once it passes its nextUpdate the stale policy cuts
// off every client of the CA. Each listener's tlsconf.Manager calls Renew
// from its own goroutine at half the CRL's validity.
type caCRLs struct {
	log   *slog.Logger
	now   func() time.Time
	byDir map[string]*caCRLKeeper // nil entry: the CA could not be opened
}

func newCACRLs(log *slog.Logger, now func() time.Time) *caCRLs {
	return &caCRLs{log: log, now: now, byDir: map[string]*caCRLKeeper{}}
}

// renewers returns a renewer for every file of files that is a Moat CA's
// crl.pem.
func (c *caCRLs) renewers(listener string, files []string) []tlsconf.CRLRenewer {
	var out []tlsconf.CRLRenewer
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil || filepath.Base(abs) != pki.FileCRL || !pki.Exists(filepath.Dir(abs)) {
			continue
		}
		dir := filepath.Dir(abs)
		k, seen := c.byDir[dir]
		if !seen {
			ca, err := pki.Open(dir, pki.Config{Logger: c.log, Now: c.now})
			if err != nil {
				c.log.Warn("serve: the crlfile belongs to a Moat CA the broker cannot open, so it cannot keep the CRL fresh; run `moat ca serve` for it or renew it otherwise before its nextUpdate",
					"listener", listener, "file", f, "err", err)
			} else {
				k = &caCRLKeeper{ca: ca, file: abs, now: c.now}
				c.log.Info("serve: keeping the CA's CRL fresh (re-signed at half its validity)", "file", abs)
				// Renew a CRL that aged while the broker was down before
				// the listener loads it, instead of refusing clients
				// until the first check.
				if err := k.renew(); err != nil {
					c.log.Error("serve: renewing the CA's CRL at start-up failed; retrying while serving", "file", abs, "err", err)
				}
			}
			c.byDir[dir] = k
		}
		if k != nil {
			out = append(out, tlsconf.CRLRenewer{File: f, Renew: k.renew})
		}
	}
	return out
}

// caCRLKeeper renews one CA's crl.pem. Listeners of one broker share it.
type caCRLKeeper struct {
	mu   sync.Mutex // one renewal at a time within this process
	ca   *pki.CA
	file string
	now  func() time.Time
}

// renew re-signs the CRL unless someone renewed it since the caller looked
// (another listener, `moat ca serve`, `moat ca revoke`). The CA's database
// lock serializes the re-signing with those other writers, and the new
// CRL is built from the database, so no revocation is lost.
func (k *caCRLKeeper) renew() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if crlFileFresh(k.file, k.now()) {
		return nil
	}
	if _, err := k.ca.RegenerateCRL(); err != nil {
		return fmt.Errorf("serve: re-signing the CRL of the CA in %s: %w", k.ca.Dir(), err)
	}
	return nil
}

// crlFileFresh reports whether the CRL in path is in the first half of its
// validity.
func crlFileFresh(path string, now time.Time) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	der := data
	if b, _ := pem.Decode(data); b != nil {
		der = b.Bytes
	}
	l, err := x509.ParseRevocationList(der)
	if err != nil || l.NextUpdate.IsZero() {
		return false
	}
	return now.Before(l.ThisUpdate.Add(l.NextUpdate.Sub(l.ThisUpdate) / 2))
}
