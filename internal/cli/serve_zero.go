package cli

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/moatmq/moat/internal/config"
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

// prepareZeroConfig opens or creates the built-in CA and issues the
// broker's certificate when it is missing, near its end, or names other
// than names (see resolveServerNames).
func prepareZeroConfig(dataDir string, names []string, log *slog.Logger) (*zeroConfig, error) {
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
	sans, err := resolveServerNames(names, log)
	if err != nil {
		return nil, err
	}
	ca, created, err := pki.OpenOrInit(zc.caDir, pki.InitOptions{Config: pki.Config{Logger: log}})
	if err != nil {
		return nil, fmt.Errorf("serve: built-in CA in %s: %w", zc.caDir, err)
	}
	zc.createdCA = created
	if created {
		log.Warn("serve: created a local certificate authority; its root key passphrase was generated into root_passphrase: move root_key and root_passphrase offline (the broker and moat ca issue/revoke do not need them)",
			"dir", zc.caDir, "trust_anchor", zc.caFile,
			"root_key", filepath.Join(zc.caDir, pki.FileRootKey), "root_passphrase", filepath.Join(zc.caDir, pki.FileRootPass))
	}
	renew := needsServerCert(zc.serverCert)
	if !renew && serverCertNamesDiffer(zc.serverCert, sans) {
		log.Info("serve: the server certificate's names differ from the wanted names; issuing a new one", "file", zc.serverCert, "names", sans)
		renew = true
	}
	if renew {
		host, _ := os.Hostname()
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
  mosquitto_sub -h localhost -p %[1]s --cafile %[3]s --cert sensor-001.pem --key sensor-001.key -t 'devices/sensor-001/#' -v
  mosquitto_pub -h localhost -p %[1]s --cafile %[3]s --cert sensor-001.pem --key sensor-001.key -t devices/sensor-001/hello -m hi

The device's certificate CN (sensor-001) is its MQTT username; the default policy
lets each device use devices/<its name>/# and read broadcast/#.

`, port, zc.caDir, zc.caFile, moatInvocation(os.Args[0], exec.LookPath))
	if zc.createdCA {
		fmt.Fprintf(w, `The CA's root key passphrase was generated into %s.
Move it and %s offline: only moat ca rotate-intermediate and
moat ca crl --root need them (see docs/pki.md).

`, filepath.Join(zc.caDir, pki.FileRootPass), filepath.Join(zc.caDir, pki.FileRootKey))
	}
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
	_, err := k.ca.RegenerateCRL()
	if errors.Is(err, pki.ErrRotated) {
		// `moat ca rotate-intermediate` ran since the CA was opened: the
		// CA refuses to sign with the retired intermediate, so open it
		// again to sign with the new one.
		var ca *pki.CA
		if ca, err = pki.Open(k.ca.Dir(), pki.Config{Now: k.now}); err == nil {
			k.ca = ca
			_, err = k.ca.RegenerateCRL()
		}
	}
	if err != nil {
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

// maxAutoServerAddrs bounds the host addresses put into the server
// certificate (a host with many container bridges has many).
const maxAutoServerAddrs = 64

// zeroServerNames returns the names wanted for the built-in server
// certificate: --san when given, else the tls.server_names of the
// listeners that use it. A listener with its own certificate must not
// set server_names, which would have no effect.
func zeroServerNames(cfg *config.Config, flag []string) ([]string, error) {
	var names []string
	for _, l := range cfg.Listeners {
		if l.TLS == nil || len(l.TLS.ServerNames) == 0 {
			continue
		}
		if l.TLS.Cert != "" {
			return nil, fmt.Errorf("serve: listener %s: tls.server_names applies to the built-in certificate only; with tls.cert, put the names into that certificate", l.Name)
		}
		names = append(names, l.TLS.ServerNames...)
	}
	if len(flag) > 0 {
		return flag, nil
	}
	return names, nil
}

// resolveServerNames validates names and expands "auto" (also the
// meaning of an empty list) to localhost, the loopback addresses, the
// host name and every non-loopback, non-link-local address of the host.
func resolveServerNames(names []string, log *slog.Logger) ([]string, error) {
	if len(names) == 0 {
		names = []string{"auto"}
	}
	var out []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, e := range names {
		for _, n := range strings.Split(e, ",") {
			n = strings.TrimSpace(n)
			if strings.EqualFold(n, "auto") {
				for _, a := range autoServerNames(log) {
					add(a)
				}
				continue
			}
			dns, ips, uris, err := pki.ParseSANs([]string{n})
			if err != nil || len(uris) > 0 || len(dns)+len(ips) != 1 {
				return nil, fmt.Errorf("serve: server name %q: give DNS:name or IP:address, or auto (%v)", n, err)
			}
			if len(ips) == 1 {
				add("IP:" + ips[0].String())
			} else {
				add("DNS:" + dns[0])
			}
		}
	}
	return out, nil
}

// autoServerNames is the default name set of the broker's certificate.
func autoServerNames(log *slog.Logger) []string {
	sans := []string{"DNS:localhost", "IP:127.0.0.1", "IP:::1"}
	if host, _ := os.Hostname(); host != "" && host != "localhost" {
		if _, _, _, err := pki.ParseSANs([]string{"DNS:" + host}); err == nil {
			sans = append(sans, "DNS:"+host)
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		log.Warn("serve: cannot list the host's addresses; the server certificate names only localhost and the host name (use --san)", "err", err)
		return sans
	}
	n := 0
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip := ipn.IP
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified() || ip.IsMulticast() {
			continue
		}
		if n == maxAutoServerAddrs {
			log.Warn("serve: the host has many addresses; only the first ones are in the server certificate (use --san to choose)", "limit", maxAutoServerAddrs)
			break
		}
		sans = append(sans, "IP:"+ip.String())
		n++
	}
	return sans
}

// serverCertNamesDiffer reports whether the certificate in path names
// anything else than sans ("DNS:x", "IP:y"), ignoring order.
func serverCertNamesDiffer(path string, sans []string) bool {
	certs, err := pki.LoadCertificatesFile(path)
	if err != nil {
		return true
	}
	have := map[string]bool{}
	for _, d := range certs[0].DNSNames {
		have["DNS:"+d] = true
	}
	for _, ip := range certs[0].IPAddresses {
		have["IP:"+ip.String()] = true
	}
	if len(have) != len(sans) {
		return true
	}
	for _, s := range sans {
		if !have[s] {
			return true
		}
	}
	return false
}
